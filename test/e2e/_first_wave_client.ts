/**
 * The first-wave client of first_wave_test.ts, a process of its own as real clients are: for
 * each of NAMES fresh server names, PARALLEL TLS connections at once, each sending one request.
 * Prints one JSON line: how many connections got an HTTP response, and why the others did not.
 *
 * Usage: deno run -A _first_wave_client.ts PORT CA_FILE NAMES PARALLEL
 */
import { oneRequest, Tally } from "./_one_request.ts";

const [port, caFile, names, parallel] = [
  Number(Deno.args[0]),
  Deno.args[1],
  Number(Deno.args[2]),
  Number(Deno.args[3]),
];
const ca = Deno.readTextFileSync(caFile);

const tally = new Tally();
for (let i = 0; i < names; i++) {
  const name = `n${i}.wave.test`;
  await Promise.all(
    Array.from({ length: parallel }, () => tally.count(oneRequest(port, ca, name))),
  );
}
console.log(JSON.stringify(tally));
Deno.exit(0);
