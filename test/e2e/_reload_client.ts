/**
 * The client of reload_under_load_test.ts, a process of its own as real clients are: for SECONDS,
 * 8 loops each open a TLS connection to 127.0.0.1:PORT (SNI n0.wave.test), send one request and
 * read the answer, again and again. Prints one JSON line: how many got an HTTP response, and why
 * the others did not.
 *
 * Usage: deno run -A _reload_client.ts PORT CA_FILE SECONDS
 */
import { oneRequest, Tally } from "./_one_request.ts";

const [port, caFile, seconds] = [Number(Deno.args[0]), Deno.args[1], Number(Deno.args[2])];
const ca = Deno.readTextFileSync(caFile);
const end = Date.now() + seconds * 1000;

const tally = new Tally();
await Promise.all(Array.from({ length: 8 }, async () => {
  while (Date.now() < end) await tally.count(oneRequest(port, ca, "n0.wave.test"));
}));
console.log(JSON.stringify(tally));
Deno.exit(0);
