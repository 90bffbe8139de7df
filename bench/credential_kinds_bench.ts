/**
 * What each credential kind adds per request on sluice's side (`deno bench -A
 * bench/credential_kinds_bench.ts`): a static substitution (the baseline), an oauth2 request with
 * a cached token (the broker's token check plus the substitution), SigV4 verification and
 * re-signing of a header-signed request, and re-signing 1 MiB of an aws-chunked upload (64 KiB
 * chunks). Client certificates cost nothing per request (they are a connection's handshake).
 */
import { makeBroker } from "../lib/credentials/broker.ts";
import { OAuth2Tokens } from "../lib/credentials/oauth2.ts";
import { SecretValue } from "../lib/credentials/secrets.ts";
import { parseSigV4, resign, signature, type SigV4Auth } from "../lib/credentials/sigv4.ts";
import type { Credential } from "../policy/types.ts";

const loc = { file: "b", line: 1, col: 1 };
const hosts = [{
  pattern: { kind: "exact" as const, name: "api.test" },
  port: null,
  source: "api.test",
  loc,
}];
const staticCred: Credential = {
  name: "S",
  loc,
  kind: "static",
  from: { kind: "env", name: "S" },
  hosts,
  in: ["header"],
  onViolation: "block",
};
const oauthCred: Credential = {
  name: "O",
  loc,
  kind: "oauth2",
  from: null,
  oauth2: {
    tokenUrl: "https://auth.test/token",
    tokenUrlLoc: loc,
    grant: "refresh_token",
    clientAuth: "basic",
  },
  hosts,
  in: ["header"],
  onViolation: "block",
};
const tokens = new OAuth2Tokens();
tokens.connect(() =>
  Promise.resolve({
    status: 200,
    body: new TextEncoder().encode('{"access_token":"access-token-0123456789","expires_in":3600}'),
  })
);
const cell = tokens.cell(oauthCred, { refreshToken: new SecretValue("r", "refresh-token-0") });
const broker = makeBroker(
  [staticCred, oauthCred],
  new Map([["S", "sluice-static-placeholder-0001"], ["O", "sluice-oauth2-placeholder-0001"]]),
  new Map([["S", new SecretValue("S", "static-secret-value-0123")]]),
  undefined,
  { tokens, cells: new Map([["O", cell]]) },
);
await broker.tokens(["O"]);
const head = (p: string): [string, string][] => [
  ["accept", "application/json"],
  ["authorization", `Bearer ${p}`],
  ["user-agent", "bench"],
];

Deno.bench("static: substitute one header", { group: "kinds", baseline: true }, () => {
  broker.rewriteRequest("/v1/x", head("sluice-static-placeholder-0001"), [staticCred]);
});

Deno.bench("oauth2: cached token, substitute one header", { group: "kinds" }, async () => {
  await broker.tokens(["O"]);
  broker.rewriteRequest("/v1/x", head("sluice-oauth2-placeholder-0001"), [oauthCred]);
});

const ph = {
  accessKeyId: "AKIAPLACEHOLDER00000",
  secretAccessKey: "placeholder-secret-0123456789",
};
const real = {
  accessKeyId: new SecretValue("i", "AKIAREALKEY000000000"),
  secretAccessKey: new SecretValue("s", "real-secret-0123456789"),
};
const a0 = {
  where: "header" as const,
  service: "s3",
  region: "us-east-1",
  date: "20261201",
  amzDate: "20261201T000000Z",
  signedHeaders: ["host", "x-amz-content-sha256", "x-amz-date"],
};
const base: [string, string][] = [
  ["host", "bucket.s3.test"],
  ["x-amz-content-sha256", "UNSIGNED-PAYLOAD"],
  ["x-amz-date", a0.amzDate],
];
const target = "/bucket/some/key.bin?partNumber=1&uploadId=abc";
const sig = signature(
  { method: "PUT", target, headers: base, payloadHash: "UNSIGNED-PAYLOAD" },
  a0,
  ph.secretAccessKey,
);
const sent: [string, string][] = [...base, [
  "authorization",
  `AWS4-HMAC-SHA256 Credential=${ph.accessKeyId}/20261201/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=${sig}`,
]];

Deno.bench("aws_sigv4: verify and re-sign a header-signed request", { group: "kinds" }, () => {
  const auth = parseSigV4(target, sent) as SigV4Auth;
  const r = resign(
    "AWS",
    auth,
    { method: "PUT", target, headers: sent },
    { target, headers: base },
    null,
    ph,
    real,
  );
  if (!r.ok) throw new Error(r.reason);
});

// 1 MiB of aws-chunked body in 64 KiB chunks, signed with the placeholder chain.
const { createHash, createHmac } = await import("node:crypto");
const scope = "20261201/us-east-1/s3/aws4_request";
const key = [a0.date, a0.region, a0.service, "aws4_request"].reduce(
  (k: Uint8Array | string, d) => createHmac("sha256", k).update(d).digest(),
  `AWS4${ph.secretAccessKey}`,
) as Uint8Array;
const chunkedHeaders: [string, string][] = [
  ["host", "bucket.s3.test"],
  ["x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"],
  ["x-amz-date", a0.amzDate],
];
const seed = signature(
  {
    method: "PUT",
    target,
    headers: chunkedHeaders,
    payloadHash: "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
  },
  a0,
  ph.secretAccessKey,
);
const chunkedSent: [string, string][] = [...chunkedHeaders, [
  "authorization",
  `AWS4-HMAC-SHA256 Credential=${ph.accessKeyId}/${scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=${seed}`,
]];
const parts: Uint8Array[] = [];
let prev = seed;
const empty = createHash("sha256").update("").digest("hex");
for (const n of [...Array(16).fill(65536), 0]) {
  const data = new Uint8Array(n).fill(0x61);
  prev = createHmac("sha256", key).update(
    `AWS4-HMAC-SHA256-PAYLOAD\n${a0.amzDate}\n${scope}\n${prev}\n${empty}\n${
      createHash("sha256").update(data).digest("hex")
    }`,
  ).digest("hex");
  parts.push(
    new TextEncoder().encode(`${n.toString(16)};chunk-signature=${prev}\r\n`),
    data,
    new Uint8Array([13, 10]),
  );
}

Deno.bench(
  "aws_sigv4: re-sign 1 MiB of aws-chunked upload (64 KiB chunks)",
  { group: "chunked" },
  async () => {
    const auth = parseSigV4(target, chunkedSent) as SigV4Auth;
    const r = resign(
      "AWS",
      auth,
      { method: "PUT", target, headers: chunkedSent },
      { target, headers: chunkedHeaders },
      undefined,
      ph,
      real,
    );
    if (!r.ok || !r.body) throw new Error("not re-signed");
    await new Response(ReadableStream.from(parts).pipeThrough(r.body)).arrayBuffer();
  },
);

Deno.bench(
  "baseline: pass 1 MiB through an identity stream",
  { group: "chunked", baseline: true },
  async () => {
    await new Response(ReadableStream.from(parts).pipeThrough(new TransformStream())).arrayBuffer();
  },
);
