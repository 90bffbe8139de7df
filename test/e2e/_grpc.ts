/**
 * A real gRPC service for the end-to-end tests: @grpc/grpc-js's server over TLS (HTTP/2 only,
 * as every gRPC server), with a certificate from the test CA, and the client in
 * _grpc_client.ts (run as a subprocess, so its proxy settings are its own). Messages are raw
 * bytes (no protobuf): the tests look at framing, streaming, metadata and trailers, not at a
 * schema.
 *
 * Methods of `acme.Echo`:
 * - `Unary`: answers `auth=<authorization metadata> body=<request>`, and sets trailer
 *   `x-echo-trailer: done`;
 * - `Tick` (server streaming): the request is `N,MS`; answers `t0`..`tN-1`, one every MS ms;
 * - `Sum` (client streaming): answers the total byte length of the messages it got;
 * - `Chat` (bidi): echoes each message as `echo:<message>`;
 * - `Deny`: never reached when the policy denies it.
 */
import * as grpc from "@grpc/grpc-js";
import { Buffer } from "node:buffer";
import { type CertificateAuthority, mintLeaf } from "../../lib/tls/ca.ts";
import { ROOT } from "./_harness.ts";

const raw = (b: Buffer): Buffer => b;
const bytes = (b: Uint8Array): Buffer => Buffer.from(b);

function method(path: string, requestStream: boolean, responseStream: boolean) {
  return {
    path,
    requestStream,
    responseStream,
    requestSerialize: bytes,
    requestDeserialize: raw,
    responseSerialize: bytes,
    responseDeserialize: raw,
  };
}

/** The service definition both ends use. */
export const ECHO = {
  unary: method("/acme.Echo/Unary", false, false),
  tick: method("/acme.Echo/Tick", false, true),
  sum: method("/acme.Echo/Sum", true, false),
  chat: method("/acme.Echo/Chat", true, true),
  deny: method("/acme.Echo/Deny", false, false),
};

/** Metadata values the server saw, newest last (to grep for placeholders and secrets). */
export type SeenCall = { method: string; authorization?: string };

/**
 * Starts the gRPC server on 127.0.0.1 with a leaf for `name` from `ca`.
 *
 * @returns its port, what it saw, and close()
 */
export async function startGrpcServer(ca: CertificateAuthority, name: string, port = 0) {
  const seen: SeenCall[] = [];
  const note = (m: string, call: { metadata: grpc.Metadata }) =>
    seen.push({ method: m, authorization: call.metadata.get("authorization")[0]?.toString() });
  const server = new grpc.Server();
  server.addService(ECHO as unknown as grpc.ServiceDefinition, {
    unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      note("Unary", call);
      const trailer = new grpc.Metadata();
      trailer.set("x-echo-trailer", "done");
      cb(
        null,
        Buffer.from(`auth=${call.metadata.get("authorization")[0] ?? ""} body=${call.request}`),
        trailer,
      );
    },
    tick: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      note("Tick", call);
      call.on("cancelled", () => seen.push({ method: "Tick cancelled" }));
      const [n, ms] = call.request.toString().split(",").map(Number);
      let i = 0;
      const next = () => {
        if (call.cancelled) return;
        if (i === n) return call.end();
        call.write(Buffer.from(`t${i++}`));
        setTimeout(next, ms);
      };
      next();
    },
    sum: (call: grpc.ServerReadableStream<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      note("Sum", call);
      let total = 0;
      call.on("data", (m: Buffer) => total += m.length);
      call.on("end", () => cb(null, Buffer.from(String(total))));
    },
    chat: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      note("Chat", call);
      call.on("data", (m: Buffer) => call.write(Buffer.from(`echo:${m}`)));
      call.on("end", () => call.end());
    },
    deny: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      note("Deny", call);
      cb(null, Buffer.from("should not be reached"));
    },
  });
  const leaf = await mintLeaf(ca, name);
  // A root list, though no client certificate is asked for: given null, Deno's node:tls server
  // names every Mozilla root in a CertificateRequest, which rustls clients refuse
  // (HandshakePayloadTooLarge).
  const creds = grpc.ServerCredentials.createSsl(Buffer.from(ca.certPem), [{
    private_key: Buffer.from(leaf.keyPem),
    cert_chain: Buffer.from(leaf.certPem),
  }], false);
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, creds, (e, p) => e ? reject(e) : resolve(p))
  );
  return {
    port: bound,
    seen,
    close: () => new Promise<void>((r) => server.tryShutdown(() => r())),
  };
}

type CallResult = {
  ok: boolean;
  code: number;
  details: string;
  trailers: Record<string, string>;
  messages: { at: number; text: string }[];
};

/** Runs one call in a grpc-js client process with `env` (its proxy settings). */
export async function grpcCall(
  env: Record<string, string>,
  target: string,
  ca: string,
  call: string,
  arg = "",
  authorization?: string,
  netns?: string,
): Promise<CallResult> {
  const deno = [Deno.execPath(), "run", "-A", `${ROOT}test/e2e/_grpc_client.ts`];
  const cmd = netns ? ["ip", "netns", "exec", netns, ...deno] : deno;
  const out = await new Deno.Command(cmd[0], {
    args: [...cmd.slice(1), target, ca, call, arg, ...(authorization ? [authorization] : [])],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success || !text) {
    throw new Error(`grpc client failed: ${text}\n${new TextDecoder().decode(out.stderr)}`);
  }
  return JSON.parse(text.split("\n").pop()!);
}
