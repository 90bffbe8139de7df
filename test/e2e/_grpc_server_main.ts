/**
 * The gRPC test server as its own process, for tests that run it inside a network namespace:
 * `deno run -A _grpc_server_main.ts CA_OUT NAME PORT`. Writes its CA certificate to CA_OUT,
 * serves NAME on 127.0.0.1:PORT, then prints "ready"; each call it sees is printed as a JSON
 * line.
 */
import { ephemeralCa } from "../../lib/tls/ca.ts";
import { startGrpcServer } from "./_grpc.ts";

const [caOut, name, port] = Deno.args;
const ca = await ephemeralCa();
await Deno.writeTextFile(caOut, ca.certPem);
const server = await startGrpcServer(ca, name, Number(port));
const push = server.seen.push.bind(server.seen);
server.seen.push = (...calls) => {
  for (const c of calls) console.log(JSON.stringify(c));
  return push(...calls);
};
console.log("ready");
