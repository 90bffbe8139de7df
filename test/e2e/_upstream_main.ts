/**
 * A standalone test upstream, for tests that run it inside a network
 * namespace: `deno run -A _upstream_main.ts CA_OUT TLS_PORT PLAIN_PORT`.
 * Writes its CA certificate to CA_OUT, then prints "ready".
 */
import { ephemeralCa } from "../../lib/tls/ca.ts";
import { startPlainUpstream, startTlsUpstream } from "./_harness.ts";

const [caOut, tlsPort, plainPort] = Deno.args;
const ca = await ephemeralCa();
await Deno.writeTextFile(caOut, ca.certPem);
await startTlsUpstream(ca, Number(tlsPort));
startPlainUpstream(Number(plainPort));
console.log("ready");
