import { assertEquals } from "../../_assert.ts";
import {
  encodeGrpcMessage,
  grpcMessageStream,
  grpcRefusal,
  grpcStatusOf,
  isGrpc,
} from "../../../lib/http2/grpc.ts";

Deno.test("isGrpc: gRPC content types, and only those", () => {
  const cases: [string | null, boolean][] = [
    ["application/grpc", true],
    ["application/grpc+proto", true],
    ["Application/GRPC+json", true],
    ["application/grpc; charset=utf-8", true],
    ["application/grpc-web", false],
    ["application/grpcx", false],
    ["application/json", false],
    [null, false],
    ["", false],
  ];
  for (const [ct, want] of cases) assertEquals(isGrpc(ct), want, String(ct));
});

Deno.test("grpcStatusOf: sluice's refusals as gRPC statuses", () => {
  const cases: [number, number, string][] = [
    [403, 7, "a policy or credential refusal is PERMISSION_DENIED"],
    [502, 14, "an upstream failure is UNAVAILABLE"],
    [503, 14, "the direct path's refusal is UNAVAILABLE"],
    [421, 14, "a misrouted request is UNAVAILABLE"],
    [504, 4, "a timeout is DEADLINE_EXCEEDED"],
    [429, 8, "a limit is RESOURCE_EXHAUSTED"],
    [431, 8, "a head too large is RESOURCE_EXHAUSTED"],
    [400, 3, "bad input is INVALID_ARGUMENT"],
    [500, 13, "anything else is INTERNAL"],
  ];
  for (const [status, code, name] of cases) assertEquals(grpcStatusOf(status), code, name);
});

Deno.test("encodeGrpcMessage: printable ASCII kept, % and the rest percent-encoded", () => {
  assertEquals(encodeGrpcMessage("denied by rule a.test"), "denied by rule a.test");
  assertEquals(encodeGrpcMessage("100% sure"), "100%25 sure");
  assertEquals(encodeGrpcMessage("line\nbreak"), "line%0Abreak");
  assertEquals(encodeGrpcMessage("é"), "%C3%A9");
});

Deno.test("grpcRefusal: HTTP 200, grpc-status and grpc-message in the headers, x-sluice-* kept", async () => {
  const refusal = new Response("no\n", {
    status: 403,
    headers: { "x-sluice-decision": "deny; code=deny-rule", "content-type": "text/plain" },
  });
  const r = grpcRefusal(refusal, "denied by rule POST a.test/x");
  assertEquals(r.status, 200);
  assertEquals(r.headers.get("content-type"), "application/grpc");
  assertEquals(r.headers.get("grpc-status"), "7");
  assertEquals(r.headers.get("grpc-message"), "sluice: denied by rule POST a.test/x");
  assertEquals(r.headers.get("x-sluice-decision"), "deny; code=deny-rule");
  assertEquals(await r.text(), "");
});

function frame(payload: string, flag = 0): Uint8Array {
  const p = new TextEncoder().encode(payload);
  const out = new Uint8Array(5 + p.length);
  out[0] = flag;
  new DataView(out.buffer).setUint32(1, p.length);
  out.set(p, 5);
  return out;
}

async function run(chunks: Uint8Array[], map: (p: Uint8Array) => Uint8Array) {
  const out: Uint8Array[] = [];
  await ReadableStream.from(chunks).pipeThrough(grpcMessageStream(map)).pipeTo(
    new WritableStream({ write: (c) => void out.push(c) }),
  );
  return out;
}

Deno.test("grpcMessageStream: each whole message mapped and re-framed, however the bytes are cut", async () => {
  const upper = (p: Uint8Array) =>
    new TextEncoder().encode(new TextDecoder().decode(p).toUpperCase() + "!");
  const bytes = new Uint8Array([...frame("ab"), ...frame(""), ...frame("hello")]);
  for (let cut = 0; cut <= bytes.length; cut++) {
    const out = await run([bytes.subarray(0, cut), bytes.subarray(cut)], upper);
    assertEquals(out, [frame("AB!"), frame("!"), frame("HELLO!")], `cut at ${cut}`);
  }
});

Deno.test("grpcMessageStream: a message goes on as soon as it is complete, not at the end", async () => {
  const seen: Uint8Array[] = [];
  const ts = grpcMessageStream((p) => p);
  const writer = ts.writable.getWriter();
  const reader = ts.readable.getReader();
  writer.write(frame("one"));
  seen.push((await reader.read()).value!);
  assertEquals(seen, [frame("one")]);
  writer.write(frame("two").subarray(0, 4));
  writer.write(frame("two").subarray(4));
  assertEquals((await reader.read()).value, frame("two"));
  writer.close();
});

Deno.test("grpcMessageStream: a body cut off mid-message is passed on as it came", async () => {
  const cut = frame("truncated").subarray(0, 8);
  assertEquals(await run([frame("x"), cut], (p) => p), [frame("x"), cut]);
});
