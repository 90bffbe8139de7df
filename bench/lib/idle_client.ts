/**
 * The idle-connections client of bench/peers.sh: opens N TLS connections to HOST:443 (through
 * the namespace's REDIRECT, so each one is an intercepted connection), sends one keep-alive
 * request on each so the proxy has set up its per-connection HTTP state and upstream, then holds
 * them all open and idle until it is killed. Prints "holding <open> <errors>" once they are up.
 *
 *   deno run --allow-net --allow-read idle_client.ts N HOST CA_PEM [PARALLEL]
 *
 * @module
 */

const [countArg = "1000", host = "idle.bench.test", caPath = "", parArg = "32"] = Deno.args;
const count = Number(countArg);
const parallel = Number(parArg);
const caCerts = caPath ? [Deno.readTextFileSync(caPath)] : undefined;
const request = new TextEncoder().encode(
  `GET /ok HTTP/1.1\r\nHost: ${host}\r\nConnection: keep-alive\r\n\r\n`,
);

const held: Deno.TlsConn[] = [];
let errors = 0;
let firstError = "";
let next = 0;

async function open(): Promise<void> {
  const conn = await Deno.connectTls({ hostname: host, port: 443, caCerts });
  try {
    await conn.write(request);
    // Read the whole (small) response: the head and "ok", so the proxy sees an idle connection.
    const buf = new Uint8Array(4096);
    let text = "";
    while (!/\r\n\r\n[\s\S]*ok/.test(text)) {
      const n = await conn.read(buf);
      if (n === null) throw new Error("closed before the response ended");
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    if (!text.startsWith("HTTP/1.1 200")) throw new Error(text.split("\r\n")[0]);
    held.push(conn);
  } catch (e) {
    conn.close();
    throw e;
  }
}

async function worker(): Promise<void> {
  while (next < count) {
    next++;
    try {
      await open();
    } catch (e) {
      errors++;
      if (!firstError) firstError = (e as Error).message;
    }
  }
}

await Promise.all(Array.from({ length: parallel }, worker));
console.log(`holding ${held.length} ${errors}${firstError ? ` first error: ${firstError}` : ""}`);
// Stay alive, connections open and idle, until killed.
setInterval(() => {}, 1 << 30);
