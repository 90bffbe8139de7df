/**
 * lib/credentials/sigv4.ts against AWS's published examples (the SigV4 test suite's
 * get-vanilla, the S3 GET Object and streaming PUT examples), reading signatures, and
 * re-signing: what sluice sends verifies with the real key and nothing else changes.
 */
import { assert, assertEquals } from "../../_assert.ts";
import {
  type AwsKeys,
  loadAwsKeys,
  parseSigV4,
  resign,
  signature,
  type SigV4Auth,
} from "../../../lib/credentials/sigv4.ts";
import { SecretError, SecretValue } from "../../../lib/credentials/secrets.ts";

const EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const keys = (id: string, secret: string, token?: string): AwsKeys => ({
  accessKeyId: new SecretValue("id", id),
  secretAccessKey: new SecretValue("secret", secret),
  ...(token ? { sessionToken: new SecretValue("token", token) } : {}),
});

Deno.test("signature(): AWS's published examples", async (t) => {
  await t.step("SigV4 test suite get-vanilla", () => {
    const headers: [string, string][] = [
      ["Host", "example.amazonaws.com"],
      ["X-Amz-Date", "20150830T123600Z"],
    ];
    const sig = signature(
      { method: "GET", target: "/", headers, payloadHash: EMPTY },
      {
        where: "header",
        service: "service",
        region: "us-east-1",
        date: "20150830",
        amzDate: "20150830T123600Z",
        signedHeaders: ["host", "x-amz-date"],
      },
      "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    );
    assertEquals(sig, "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
  });
  await t.step("S3 GET Object with a Range", () => {
    const headers: [string, string][] = [
      ["Host", "examplebucket.s3.amazonaws.com"],
      ["Range", "bytes=0-9"],
      ["x-amz-content-sha256", EMPTY],
      ["x-amz-date", "20130524T000000Z"],
    ];
    const sig = signature(
      { method: "GET", target: "/test.txt", headers, payloadHash: EMPTY },
      {
        where: "header",
        service: "s3",
        region: "us-east-1",
        date: "20130524",
        amzDate: "20130524T000000Z",
        signedHeaders: ["host", "range", "x-amz-content-sha256", "x-amz-date"],
      },
      EXAMPLE_SECRET,
    );
    assertEquals(sig, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  });
});

/** S3's streaming example: PUT /examplebucket/chunkObject.txt, 65,536 + 1,024 bytes of 'a'. */
const CHUNKED_HEADERS: [string, string][] = [
  ["Host", "s3.amazonaws.com"],
  ["x-amz-date", "20130524T000000Z"],
  ["x-amz-storage-class", "REDUCED_REDUNDANCY"],
  [
    "Authorization",
    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, " +
    "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;" +
    "x-amz-decoded-content-length;x-amz-storage-class, " +
    "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
  ],
  ["x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"],
  ["Content-Encoding", "aws-chunked"],
  ["x-amz-decoded-content-length", "66560"],
  ["Content-Length", "66824"],
];
const CHUNK_SIGS = [
  "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
  "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
  "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
];

function chunkedBody(sigs: string[]): Uint8Array {
  const enc = new TextEncoder();
  const parts = [[65536, sigs[0]], [1024, sigs[1]], [0, sigs[2]]] as const;
  const out: number[] = [];
  for (const [n, sig] of parts) {
    out.push(...enc.encode(`${n.toString(16)};chunk-signature=${sig}\r\n`));
    for (let i = 0; i < n; i++) out.push(0x61);
    out.push(13, 10);
  }
  return new Uint8Array(out);
}

async function drain(body: Uint8Array, ts: TransformStream<Uint8Array, Uint8Array>, piece: number) {
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < body.length; i += piece) chunks.push(body.slice(i, i + piece));
  const out = new Uint8Array(
    await new Response(ReadableStream.from(chunks).pipeThrough(ts)).arrayBuffer(),
  );
  return out;
}

Deno.test("resign(): S3's streaming example verifies, and every chunk signature is re-chained", async () => {
  const auth = parseSigV4("/examplebucket/chunkObject.txt", CHUNKED_HEADERS) as SigV4Auth;
  assertEquals([auth.where, auth.keyId, auth.service], ["header", "AKIAIOSFODNN7EXAMPLE", "s3"]);
  const body = chunkedBody(CHUNK_SIGS);
  assertEquals(body.length, 66824);
  const ph = { accessKeyId: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: EXAMPLE_SECRET };
  const received = {
    method: "PUT",
    target: "/examplebucket/chunkObject.txt",
    headers: CHUNKED_HEADERS,
  };
  // Re-signed with the same keys, the output is the input: the chain math is AWS's.
  const same = resign(
    "AWS",
    auth,
    received,
    received,
    undefined,
    ph,
    keys(ph.accessKeyId, EXAMPLE_SECRET),
  );
  assert(same.ok && same.body, JSON.stringify(same));
  assertEquals(
    same.headers.find(([n]) => n === "authorization")![1].split("Signature=")[1],
    "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
  );
  for (const piece of [1, 7, 4096, 70_000]) {
    const r = resign(
      "AWS",
      auth,
      received,
      received,
      undefined,
      ph,
      keys(ph.accessKeyId, EXAMPLE_SECRET),
    );
    assert(r.ok && r.body);
    assertEquals(await drain(body, r.body, piece), body, `in pieces of ${piece}`);
  }
  // Re-signed with other keys: same length, every signature changed, and it verifies as a
  // request signed with those keys (re-signing it back with the example keys restores it).
  const real = keys("AKIAREALREALREAL0000", "real-secret-key-0123456789abcdefghijklmn");
  const r = resign("AWS", auth, received, received, undefined, ph, real);
  assert(r.ok && r.body);
  const out = await drain(body, r.body, 1000);
  assertEquals(out.length, body.length);
  const text = new TextDecoder().decode(out);
  for (const s of CHUNK_SIGS) assert(!text.includes(s));
  const back = parseSigV4(received.target, r.headers) as SigV4Auth;
  const again = resign(
    "AWS",
    back,
    { ...received, headers: r.headers },
    received,
    undefined,
    {
      accessKeyId: "AKIAREALREALREAL0000",
      secretAccessKey: "real-secret-key-0123456789abcdefghijklmn",
    },
    keys(ph.accessKeyId, EXAMPLE_SECRET),
  );
  assert(again.ok && again.body, JSON.stringify(again));
  assertEquals(await drain(out, again.body, 999), body);
  // A chunk whose data was altered fails its signature.
  const bad = body.slice();
  bad[200] = 0x62;
  const r2 = resign("AWS", auth, received, received, undefined, ph, real);
  assert(r2.ok && r2.body);
  let failed = "";
  await drain(bad, r2.body, 4096).catch((e) => (failed = String(e)));
  assert(/chunk signature does not verify/.test(failed), failed);
});

Deno.test("resign(): header and presigned requests; forged ones are refused", async (t) => {
  const ph = {
    accessKeyId: "AKIAPLACEHOLDER00000",
    secretAccessKey: "placeholder-secret-0123456789",
    sessionToken: "ph-token-000000",
  };
  const real = keys("AKIAREALKEY000000000", "real-secret-0123456789", "real-token-9999999");
  const auth0 = {
    where: "header" as const,
    service: "s3",
    region: "eu-west-1",
    date: "20261201",
    amzDate: "20261201T101010Z",
    signedHeaders: ["host", "x-amz-content-sha256", "x-amz-date", "x-amz-security-token"],
  };
  const base: [string, string][] = [
    ["host", "bucket.s3.test"],
    ["x-amz-content-sha256", "UNSIGNED-PAYLOAD"],
    ["x-amz-date", auth0.amzDate],
    ["x-amz-security-token", ph.sessionToken],
  ];
  const target = "/a%20b/c.txt?versionId=3&list-type=2";
  const signedWith = (secret: string, id: string, headers: [string, string][]) => {
    const sig = signature(
      { method: "GET", target, headers, payloadHash: "UNSIGNED-PAYLOAD" },
      auth0,
      secret,
    );
    return [
      ...headers,
      [
        "authorization",
        `AWS4-HMAC-SHA256 Credential=${id}/20261201/eu-west-1/s3/aws4_request, ` +
        `SignedHeaders=${auth0.signedHeaders.join(";")}, Signature=${sig}`,
      ],
    ] as [string, string][];
  };

  await t.step("header auth: re-signed with the real keys and token, verifiable as such", () => {
    const sent = signedWith(ph.secretAccessKey, ph.accessKeyId, base);
    const auth = parseSigV4(target, sent) as SigV4Auth;
    const r = resign(
      "AWS",
      auth,
      { method: "GET", target, headers: sent },
      { target, headers: base },
      null,
      ph,
      real,
    );
    assert(r.ok);
    assertEquals(r.headers.find(([n]) => n === "x-amz-security-token")![1], "real-token-9999999");
    const want = signedWith("real-secret-0123456789", "AKIAREALKEY000000000", [
      ...base.filter(([n]) => n !== "x-amz-security-token"),
      ["x-amz-security-token", "real-token-9999999"],
    ]);
    assertEquals(
      r.headers.find(([n]) => n === "authorization"),
      want.find(([n]) => n === "authorization"),
    );
  });

  await t.step("a signature that does not verify with the placeholder secret is refused", () => {
    const sent = signedWith("some-other-secret-000", ph.accessKeyId, base);
    const auth = parseSigV4(target, sent) as SigV4Auth;
    const r = resign(
      "AWS",
      auth,
      { method: "GET", target, headers: sent },
      { target, headers: base },
      null,
      ph,
      real,
    );
    assert(!r.ok && /does not verify with the placeholder secret key/.test(r.reason));
  });

  await t.step("a signed header changed after signing is refused", () => {
    const sent = signedWith(ph.secretAccessKey, ph.accessKeyId, base).map((
      [n, v],
    ): [string, string] => n === "x-amz-date" ? [n, "20261201T101011Z"] : [n, v]);
    const auth = parseSigV4(target, sent) as SigV4Auth;
    const r = resign(
      "AWS",
      auth,
      { method: "GET", target, headers: sent },
      { target, headers: sent },
      null,
      ph,
      real,
    );
    assert(!r.ok);
  });

  await t.step("presigned: X-Amz-Credential, the token and the signature are replaced", () => {
    const q = (id: string, token: string) =>
      `/bucket/key.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=${id}%2F20261201%2Feu-west-1%2Fs3%2Faws4_request` +
      `&X-Amz-Date=20261201T101010Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Security-Token=${token}`;
    const a = { ...auth0, where: "query" as const, signedHeaders: ["host"] };
    const headers: [string, string][] = [["host", "bucket.s3.test"]];
    const sig = (t: string, secret: string) =>
      signature({ method: "GET", target: t, headers, payloadHash: "UNSIGNED-PAYLOAD" }, a, secret);
    const phTarget = q(ph.accessKeyId, ph.sessionToken);
    const sent = `${phTarget}&X-Amz-Signature=${sig(phTarget, ph.secretAccessKey)}`;
    const auth = parseSigV4(sent, headers) as SigV4Auth;
    assertEquals([auth.where, auth.keyId], ["query", ph.accessKeyId]);
    const r = resign(
      "AWS",
      auth,
      { method: "GET", target: sent, headers },
      { target: sent, headers },
      null,
      ph,
      real,
    );
    assert(r.ok);
    const realTarget = q("AKIAREALKEY000000000", "real-token-9999999");
    assertEquals(
      r.target,
      `${realTarget}&X-Amz-Signature=${sig(realTarget, "real-secret-0123456789")}`,
    );
  });

  await t.step("parseSigV4: unsigned, and malformed claims", () => {
    assertEquals(parseSigV4("/x", [["host", "a"]]), null);
    assertEquals(parseSigV4("/x", [["authorization", "Bearer abc"]]), null);
    assert(
      "error" in (parseSigV4("/x", [["authorization", "AWS4-HMAC-SHA256 Credential=x"]]) as object),
    );
    assert("error" in (parseSigV4("/x?X-Amz-Algorithm=AWS4-HMAC-SHA256", []) as object));
  });
});

Deno.test("loadAwsKeys(): a value that is not a key, and a missing variable, are named with their source", async () => {
  const loc = { file: "p.yaml", line: 1, col: 1 };
  const cred = {
    name: "AWS",
    loc,
    kind: "aws_sigv4" as const,
    from: null,
    sigv4: {
      accessKeyId: { kind: "env" as const, name: "ID" },
      secretAccessKey: { kind: "env" as const, name: "SECRET" },
    },
    hosts: [],
    in: [],
    onViolation: "block" as const,
  };
  const env = new Map([["ID", "short"]]);
  let problems: readonly string[] = [];
  try {
    await loadAwsKeys([cred], env, () => Promise.reject(new Error("no files")), undefined);
  } catch (e) {
    assert(e instanceof SecretError);
    problems = e.problems;
  }
  assertEquals(problems.length, 2, problems.join("\n"));
  assertEquals(
    problems[0],
    "credential AWS (access_key_id): env:ID is not a key (at least 8 printable characters, no spaces)",
  );
  assert(problems[1].startsWith("credential AWS (secret_access_key): env:SECRET is not set"));
});
