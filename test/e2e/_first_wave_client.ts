/**
 * The first-wave client of first_wave_test.ts, a process of its own as real clients are: for
 * each of NAMES fresh server names, PARALLEL TLS connections at once (node:tls, so the SNI can
 * differ from the address), each sending one request. Prints one JSON line: how many
 * connections got an HTTP response, and why the others did not.
 *
 * Usage: deno run -A _first_wave_client.ts PORT CA_FILE NAMES PARALLEL
 */
import * as tls from "node:tls";

const [port, caFile, names, parallel] = [
  Number(Deno.args[0]),
  Deno.args[1],
  Number(Deno.args[2]),
  Number(Deno.args[3]),
];
const ca = Deno.readTextFileSync(caFile);

/** One connection: the status line of its response, or a rejection saying why there is none. */
function once(name: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: "127.0.0.1", port, servername: name, ca }, () => {
      socket.write(`GET / HTTP/1.1\r\nHost: ${name}\r\nConnection: close\r\n\r\n`);
    });
    let got = "";
    socket.on("data", (d) => got += d.toString("latin1"));
    socket.on("end", () => got ? resolve(got.split("\r\n")[0]) : reject(new Error("no response")));
    socket.on("error", reject);
  });
}

let answered = 0;
const failures: Record<string, number> = {};
for (let i = 0; i < names; i++) {
  const name = `n${i}.wave.test`;
  const settled = await Promise.allSettled(Array.from({ length: parallel }, () => once(name)));
  for (const r of settled) {
    if (r.status === "fulfilled" && r.value.startsWith("HTTP/1.1 ")) {
      answered++;
    } else {
      const why = r.status === "rejected" ? String(r.reason?.message ?? r.reason) : r.value;
      failures[why] = (failures[why] ?? 0) + 1;
    }
  }
}
console.log(JSON.stringify({ answered, failures }));
Deno.exit(0);
