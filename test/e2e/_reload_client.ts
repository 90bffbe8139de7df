/**
 * The client of reload_under_load_test.ts, a process of its own as real clients are: for SECONDS,
 * 8 loops each open a TLS connection to 127.0.0.1:PORT (SNI n0.wave.test), send one request and
 * read the answer, again and again. Prints one JSON line: how many got an HTTP response, and why
 * the others did not.
 *
 * Usage: deno run -A _reload_client.ts PORT CA_FILE SECONDS
 */
import * as tls from "node:tls";

const [port, caFile, seconds] = [Number(Deno.args[0]), Deno.args[1], Number(Deno.args[2])];
const ca = Deno.readTextFileSync(caFile);
const end = Date.now() + seconds * 1000;
let answered = 0;
const failures: Record<string, number> = {};
const fail = (why: string) => failures[why] = (failures[why] ?? 0) + 1;

function once(): Promise<void> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: "127.0.0.1", port, servername: "n0.wave.test", ca }, () => {
      socket.write("GET / HTTP/1.1\r\nHost: n0.wave.test\r\nConnection: close\r\n\r\n");
    });
    let got = "";
    socket.on("data", (d) => got += d.toString("latin1"));
    socket.on("end", () => {
      if (got.startsWith("HTTP/1.1 ")) answered++;
      else fail("no response");
      resolve();
    });
    socket.on("error", (e) => {
      fail(e.message);
      resolve();
    });
  });
}

await Promise.all(Array.from({ length: 8 }, async () => {
  while (Date.now() < end) await once();
}));
console.log(JSON.stringify({ answered, failures }));
Deno.exit(0);
