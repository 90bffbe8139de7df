/**
 * The gRPC client of the end-to-end tests, run as its own process:
 *
 *   deno run -A test/e2e/_grpc_client.ts TARGET CA_FILE CALL [ARG] [AUTHORIZATION]
 *
 * TARGET is `host:port` (the name is used for TLS and `:authority`); CA_FILE the CA to trust
 * (sluice's when going through it); CALL one of unary, tick, tickcancel, sum, chat,
 * deny. GRPC_NAME in the environment: see below. The proxy comes
 * from the environment as grpc-js reads it (`grpc_proxy`, `https_proxy`). Prints one JSON line:
 * `{ ok, messages: [{ at, text }], code, details, trailers }`, `at` in ms since the call started.
 */
import * as grpc from "@grpc/grpc-js";
import { Buffer } from "node:buffer";
import { ECHO } from "./_grpc.ts";

const [target, caFile, call, arg = "", authorization] = Deno.args;
const Client = grpc.makeGenericClientConstructor(ECHO as never, "Echo");
// GRPC_NAME: the name to use for TLS and :authority when TARGET is an address (transparent
// interception dials the address; the name only travels in the SNI and :authority).
const name = Deno.env.get("GRPC_NAME");
const client = new Client(
  target,
  grpc.credentials.createSsl(Buffer.from(Deno.readTextFileSync(caFile))),
  name ? { "grpc.ssl_target_name_override": name, "grpc.default_authority": name } : {},
) as unknown as Record<string, (...a: unknown[]) => unknown>;
const md = new grpc.Metadata();
if (authorization) md.set("authorization", authorization);
// Every call has a 15 s deadline: a hang fails the test with DEADLINE_EXCEEDED, not a timeout.
const opts = { deadline: Date.now() + 15_000 };
const started = performance.now();
const messages: { at: number; text: string }[] = [];
const got = (m: Buffer) =>
  messages.push({ at: Math.round(performance.now() - started), text: m.toString() });
const result = await new Promise<Record<string, unknown>>((resolve) => {
  const done = (err: grpc.ServiceError | null, trailers?: grpc.Metadata) =>
    resolve({
      ok: err === null,
      code: err?.code ?? 0,
      details: err?.details ?? "",
      trailers: trailers?.getMap() ?? err?.metadata?.getMap() ?? {},
    });
  let status: grpc.StatusObject | undefined;
  const onStatus = (s: grpc.StatusObject) => status = s;
  if (call === "unary" || call === "deny") {
    const c = client[call](
      Buffer.from(arg),
      md,
      opts,
      (err: grpc.ServiceError | null, r?: Buffer) => {
        if (r) got(r);
        setTimeout(() => done(err, status?.metadata), 0);
      },
    ) as grpc.ClientUnaryCall;
    c.on("status", onStatus);
  } else if (call === "tick") {
    const c = client.tick(Buffer.from(arg), md, opts) as grpc.ClientReadableStream<Buffer>;
    c.on("data", got);
    c.on("error", (e: grpc.ServiceError) => done(e));
    c.on("status", (s: grpc.StatusObject) => s.code === 0 && done(null, s.metadata));
  } else if (call === "tickcancel") {
    // A server stream the client cancels after its first message: the cancellation must
    // reach the server (RST_STREAM through sluice), which stops sending.
    const c = client.tick(Buffer.from(arg), md, opts) as grpc.ClientReadableStream<Buffer>;
    c.on("data", (m: Buffer) => {
      got(m);
      c.cancel();
    });
    c.on("error", (e: grpc.ServiceError) => done(e));
  } else if (call === "sum") {
    const c = client.sum(md, opts, (err: grpc.ServiceError | null, r?: Buffer) => {
      if (r) got(r);
      setTimeout(() => done(err, status?.metadata), 0);
    }) as grpc.ClientWritableStream<Buffer>;
    c.on("status", onStatus);
    // ARG: "COUNT,SIZE": COUNT messages of SIZE bytes.
    const [count, size] = arg.split(",").map(Number);
    for (let i = 0; i < count; i++) c.write(Buffer.alloc(size, 97));
    c.end();
  } else if (call === "chat") {
    const c = client.chat(md, opts) as grpc.ClientDuplexStream<Buffer, Buffer>;
    const words = arg.split(",");
    let i = 0;
    c.on("data", (m: Buffer) => {
      got(m);
      if (++i < words.length) c.write(Buffer.from(words[i]));
      else c.end();
    });
    c.on("error", (e: grpc.ServiceError) => done(e));
    c.on("status", (s: grpc.StatusObject) => s.code === 0 && done(null, s.metadata));
    c.write(Buffer.from(words[0]));
  } else throw new Error(`unknown call ${call}`);
});
console.log(JSON.stringify({ ...result, messages }));
(client as unknown as grpc.Client).close();
Deno.exit(0);
