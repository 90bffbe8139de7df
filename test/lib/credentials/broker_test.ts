import { assert, assertEquals, assertStringIncludes, assertThrows } from "../../_assert.ts";
import { decideCredentials, loadPolicyText, parseDestinationHost } from "../../../policy/mod.ts";
import type { Credential, CredentialPlace } from "../../../policy/types.ts";
import { SecretError, SecretValue } from "../../../lib/credentials/secrets.ts";
import {
  type Broker,
  CredentialViolationError,
  type Found,
  makeBroker,
  rewriteBytes,
  rewriteStream,
} from "../../../lib/credentials/broker.ts";
import { Matcher } from "../../../lib/credentials/scrub.ts";

const loc = { file: "p.yaml", line: 1, col: 1 };
const enc = new TextEncoder();
const dec = new TextDecoder();

type Spec = {
  name: string;
  host: string;
  placeholder: string;
  secret: string;
  in: CredentialPlace[];
  inject?: Credential["inject"];
};

function cred(s: Spec): Credential {
  return {
    name: s.name,
    loc,
    kind: "static",
    from: { kind: "env", name: s.name },
    hosts: [{ pattern: { kind: "exact", name: s.host }, port: null, source: s.host, loc }],
    placeholder: s.placeholder,
    in: s.in,
    inject: s.inject,
    onViolation: "block",
  };
}

function broker(specs: Spec[]): Broker {
  return makeBroker(
    specs.map(cred),
    new Map(specs.map((s) => [s.name, s.placeholder])),
    new Map(specs.map((s) => [s.name, new SecretValue(s.name, s.secret)])),
  );
}

const OPENAI: Spec = {
  name: "OPENAI_API_KEY",
  host: "api.openai.com",
  placeholder: "sluice-openai-api-key-abcdefghijklmnopqrstuvwxyz",
  secret: "sk-REAL-openai-0123456789",
  in: ["header", "query"],
};
const NPM: Spec = {
  name: "NPM_TOKEN",
  host: "registry.npmjs.org",
  placeholder: "sluice-npm-token-zyxwvutsrqponmlkjihgfedcba",
  secret: "npm_REAL_9876543210",
  in: ["header", "path", "body"],
};
const GH: Spec = {
  name: "GH_TOKEN",
  host: "api.github.com",
  placeholder: "sluice-gh-token-22222222222222222222222222",
  secret: "gh/REAL+v&x=1#é",
  in: ["path", "query", "body"],
};
const FIXED: Spec = {
  name: "FIXED",
  host: "fixed.example",
  placeholder: "fx%PH/0000&1",
  secret: "fixed-REAL-secret",
  in: ["query", "header"],
};
const INJ: Spec = {
  name: "INJ",
  host: "api.openai.com",
  placeholder: "sluice-inj-33333333333333333333333333",
  secret: "inj-REAL-secret-1",
  in: [],
  inject: { header: "Authorization", value: "Bearer ${secret}" },
};
const ALL = [OPENAI, NPM, GH, FIXED];
const b = broker(ALL);

const basic = (s: string) => `Basic ${btoa(s)}`;

// ---------------------------------------------------------------------------------------------
// Scanning the head

/** [name, target, headers, found] */
const scanCases: [string, string, [string, string][], Record<string, string[]>][] = [
  [
    "finds nothing in an ordinary request",
    "/v1/chat?x=1",
    [["Authorization", "Bearer abc"], ["Accept", "*/*"]],
    {},
  ],
  [
    "finds a Bearer placeholder",
    "/v1/chat",
    [["Authorization", `Bearer ${OPENAI.placeholder}`]],
    { OPENAI_API_KEY: ["header authorization"] },
  ],
  [
    "finds a placeholder in a custom header",
    "/",
    [["X-Api-Key", OPENAI.placeholder]],
    { OPENAI_API_KEY: ["header x-api-key"] },
  ],
  [
    "finds a placeholder as the Basic password",
    "/",
    [["Authorization", basic(`me:${NPM.placeholder}`)]],
    { NPM_TOKEN: ["header authorization"] },
  ],
  [
    "finds a placeholder as the Basic user",
    "/",
    [["authorization", basic(`${NPM.placeholder}:x`)]],
    { NPM_TOKEN: ["header authorization"] },
  ],
  [
    "finds a placeholder in the query",
    `/v1/x?key=${OPENAI.placeholder}&a=b`,
    [],
    { OPENAI_API_KEY: ["query"] },
  ],
  [
    "finds a placeholder in the path",
    `/v1/${NPM.placeholder}/x`,
    [],
    { NPM_TOKEN: ["path"] },
  ],
  [
    "finds a percent-encoded placeholder in the path",
    `/v1/%73luice-npm-token-zyxwvutsrqponmlkjihgfedcba/x`,
    [],
    { NPM_TOKEN: ["path"] },
  ],
  [
    "finds a fixed placeholder without the common prefix, escaped in the query",
    `/?k=${encodeURIComponent(FIXED.placeholder)}`,
    [],
    { FIXED: ["query"] },
  ],
  [
    "finds two credentials in several places",
    `/${GH.placeholder}?a=${OPENAI.placeholder}`,
    [["X-A", `${OPENAI.placeholder},${NPM.placeholder}`], ["X-B", FIXED.placeholder]],
    {
      OPENAI_API_KEY: ["header x-a", "query"],
      NPM_TOKEN: ["header x-a"],
      FIXED: ["header x-b"],
      GH_TOKEN: ["path"],
    },
  ],
  [
    "treats a truncated placeholder as no placeholder",
    "/",
    [["X-A", OPENAI.placeholder.slice(0, -1)]],
    {},
  ],
];

function plain(found: Found): Record<string, string[]> {
  return Object.fromEntries([...found].map(([k, v]) => [k, [...v]]));
}

for (const [name, target, headers, want] of scanCases) {
  Deno.test(`Broker.scanRequest() ${name}`, () => {
    assertEquals(plain(b.scanRequest(target, headers)), want);
  });
}

Deno.test("Broker.violations() and decideCredentials() flag placeholders headed off-scope", () => {
  const yaml = `version: 1
network:
  allow: [api.openai.com, evil.example, registry.npmjs.org]
credentials:
  OPENAI_API_KEY:
    from: env:OPENAI_API_KEY
    hosts: [api.openai.com]
    placeholder: ${OPENAI.placeholder}
  NPM_TOKEN:
    from: env:NPM_TOKEN
    hosts: [registry.npmjs.org]
    placeholder: ${NPM.placeholder}
    in: [header, path, body]
`;
  const { compiled } = loadPolicyText(yaml, "p.yaml");
  const pb = makeBroker(
    compiled.credentials,
    new Map([[OPENAI.name, OPENAI.placeholder], [NPM.name, NPM.placeholder]]),
    new Map([OPENAI, NPM].map((s) => [s.name, new SecretValue(s.name, s.secret)])),
  );
  const cases: [string, string, string[]][] = [
    ["evil.example", `/?k=${OPENAI.placeholder}`, ["OPENAI_API_KEY"]],
    ["api.openai.com", `/?k=${OPENAI.placeholder}`, []],
    ["api.openai.com", `/${NPM.placeholder}?k=${OPENAI.placeholder}`, ["NPM_TOKEN"]],
  ];
  for (const [host, target, want] of cases) {
    const dest = parseDestinationHost(host);
    if (dest.kind === "invalid") throw new Error(dest.reason);
    const found = pb.scanRequest(target, []);
    const d = decideCredentials(compiled, dest, 443, [...found.keys()]);
    assertEquals(d.violations.map((c) => c.name), want, `${host}${target}`);
    assertEquals(pb.violations(found, d.substitute), want, `${host}${target}`);
  }
});

// ---------------------------------------------------------------------------------------------
// Rewriting the head

type RewriteCase = {
  name: string;
  broker?: Broker;
  target?: string;
  headers?: [string, string][];
  allowed: string[];
  wantTarget?: string;
  wantHeaders?: [string, string][];
  substituted: string[];
  injected?: string[];
};

const withInject = broker([OPENAI, INJ]);

const rewriteCases: RewriteCase[] = [
  {
    name: "replaces a Bearer placeholder",
    headers: [["Authorization", `Bearer ${OPENAI.placeholder}`], ["Accept", "*/*"]],
    allowed: ["OPENAI_API_KEY"],
    wantHeaders: [["Authorization", `Bearer ${OPENAI.secret}`], ["Accept", "*/*"]],
    substituted: ["OPENAI_API_KEY"],
  },
  {
    name: "replaces every placeholder of two credentials in one value",
    headers: [["X-Keys", `${OPENAI.placeholder} ${NPM.placeholder} ${OPENAI.placeholder}`]],
    allowed: ["OPENAI_API_KEY", "NPM_TOKEN"],
    wantHeaders: [["X-Keys", `${OPENAI.secret} ${NPM.secret} ${OPENAI.secret}`]],
    substituted: ["OPENAI_API_KEY", "NPM_TOKEN"],
  },
  {
    name: "replaces inside Basic credentials and re-encodes them",
    headers: [["Authorization", basic(`me:${NPM.placeholder}`)], [
      "X-Other",
      basic(`${NPM.placeholder}:x`),
    ]],
    allowed: ["NPM_TOKEN"],
    wantHeaders: [["Authorization", basic(`me:${NPM.secret}`)], [
      "X-Other",
      basic(`${NPM.secret}:x`),
    ]],
    substituted: ["NPM_TOKEN"],
  },
  {
    name: "puts a non-ASCII value in a header as its UTF-8 bytes",
    broker: broker([{ ...GH, in: ["header"] }]),
    headers: [["X-Token", GH.placeholder]],
    allowed: ["GH_TOKEN"],
    wantHeaders: [["X-Token", "gh/REAL+v&x=1#\xc3\xa9"]],
    substituted: ["GH_TOKEN"],
  },
  {
    name: "percent-encodes the value in the query",
    target: `/x?a=1&key=${GH.placeholder}&b=${GH.placeholder}`,
    allowed: ["GH_TOKEN"],
    wantTarget: `/x?a=1&key=${encodeURIComponent(GH.secret)}&b=${encodeURIComponent(GH.secret)}`,
    substituted: ["GH_TOKEN"],
  },
  {
    name: "percent-encodes the value as one path segment",
    target: `/v1/${GH.placeholder}/x`,
    allowed: ["GH_TOKEN"],
    wantTarget: "/v1/gh%2FREAL%2Bv%26x%3D1%23%C3%A9/x",
    substituted: ["GH_TOKEN"],
  },
  {
    name: "replaces a fixed placeholder the client percent-encoded",
    target: `/?k=${encodeURIComponent(FIXED.placeholder)}`,
    allowed: ["FIXED"],
    wantTarget: `/?k=${FIXED.secret}`,
    substituted: ["FIXED"],
  },
  {
    name: "respects `in`: a header placeholder of a query-only credential stays",
    target: `/v1/${GH.placeholder}`,
    headers: [["X-Token", GH.placeholder]],
    allowed: ["GH_TOKEN"],
    wantTarget: `/v1/${encodeURIComponent(GH.secret)}`,
    wantHeaders: [["X-Token", GH.placeholder]],
    substituted: ["GH_TOKEN"],
  },
  {
    name: "respects `in`: a query placeholder of a header/path credential stays",
    target: `/p?k=${NPM.placeholder}`,
    allowed: ["NPM_TOKEN"],
    wantTarget: `/p?k=${NPM.placeholder}`,
    substituted: [],
  },
  {
    name: "never replaces placeholders of credentials not allowed",
    target: `/?k=${OPENAI.placeholder}`,
    headers: [["X-A", NPM.placeholder]],
    allowed: ["GH_TOKEN"],
    wantTarget: `/?k=${OPENAI.placeholder}`,
    wantHeaders: [["X-A", NPM.placeholder]],
    substituted: [],
  },
  {
    name: "injects a header, replacing every client value of any case",
    broker: withInject,
    headers: [["authorization", "Bearer client"], ["X-A", "1"], ["AUTHORIZATION", "dup"]],
    allowed: ["INJ"],
    wantHeaders: [["X-A", "1"], ["Authorization", `Bearer ${INJ.secret}`]],
    substituted: [],
    injected: ["INJ"],
  },
  {
    name: "injects a header the client did not send",
    broker: withInject,
    headers: [["X-A", "1"]],
    allowed: ["INJ", "OPENAI_API_KEY"],
    wantHeaders: [["X-A", "1"], ["Authorization", `Bearer ${INJ.secret}`]],
    substituted: [],
    injected: ["INJ"],
  },
  {
    name: "does not inject toward other hosts",
    broker: withInject,
    headers: [["Authorization", "Bearer client"]],
    allowed: [],
    wantHeaders: [["Authorization", "Bearer client"]],
    substituted: [],
  },
];

for (const c of rewriteCases) {
  Deno.test(`Broker.rewriteRequest() ${c.name}`, () => {
    const target = c.target ?? "/";
    const headers = c.headers ?? [];
    const before = JSON.stringify(headers);
    const r = (c.broker ?? b).rewriteRequest(target, headers, c.allowed);
    assertEquals(r.target, c.wantTarget ?? target);
    assertEquals(r.headers, c.wantHeaders ?? headers);
    assertEquals(r.substituted, c.substituted);
    assertEquals(r.injected, c.injected ?? []);
    assertEquals(JSON.stringify(headers), before, "the input headers are not modified");
  });
}

Deno.test("Broker.rewriteRequest() accepts the credentials decideCredentials() returns", () => {
  const r = b.rewriteRequest(`/?key=${OPENAI.placeholder}`, [], [cred(OPENAI)]);
  assertEquals(r.target, `/?key=${OPENAI.secret}`);
});

// ---------------------------------------------------------------------------------------------
// Bodies

async function collect(
  ts: TransformStream<Uint8Array, Uint8Array>,
  chunks: Uint8Array[],
): Promise<Uint8Array> {
  const out: number[] = [];
  const reader = ReadableStream.from(chunks).pipeThrough(ts).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    out.push(...value);
  }
  return new Uint8Array(out);
}

function splitAt(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [0, ...cuts, bytes.length];
  return points.slice(1).map((p, i) => bytes.slice(points[i], p));
}

const jsonBody = JSON.stringify({ token: NPM.placeholder, gh: GH.placeholder, n: 1 });
const jsonWant = JSON.stringify({ token: NPM.secret, gh: GH.secret, n: 1 });

Deno.test("Broker.requestBodyStream() substitutes a JSON body split at every single boundary", async () => {
  const bytes = enc.encode(jsonBody);
  for (let i = 0; i <= bytes.length; i++) {
    const ts = b.requestBodyStream(["NPM_TOKEN", "GH_TOKEN"])!;
    assertEquals(dec.decode(await collect(ts, splitAt(bytes, [i]))), jsonWant, `cut at ${i}`);
  }
});

Deno.test("Broker.requestBodyStream() substitutes a JSON body split into 3 chunks anywhere", async () => {
  const bytes = enc.encode(jsonBody);
  for (let i = 0; i <= bytes.length; i += 3) {
    for (let j = i; j <= bytes.length; j += 2) {
      const ts = b.requestBodyStream(["NPM_TOKEN", "GH_TOKEN"])!;
      assertEquals(dec.decode(await collect(ts, splitAt(bytes, [i, j]))), jsonWant, `${i},${j}`);
    }
  }
});

Deno.test("Broker.requestBodyStream() substitutes a body fed one byte at a time", async () => {
  const bytes = enc.encode(jsonBody);
  const ts = b.requestBodyStream(["NPM_TOKEN", "GH_TOKEN"])!;
  const chunks = [...bytes].map((x) => new Uint8Array([x]));
  assertEquals(dec.decode(await collect(ts, chunks)), jsonWant);
});

Deno.test("Broker.requestBodyStream() leaves placeholders of allowed credentials without `body`", async () => {
  const body = `{"a":"${OPENAI.placeholder}"}`;
  const found: string[] = [];
  const ts = b.requestBodyStream(["OPENAI_API_KEY"], (n) => found.push(n))!;
  assertEquals(dec.decode(await collect(ts, [enc.encode(body)])), body);
  assertEquals(found, ["OPENAI_API_KEY"]);
});

Deno.test("Broker.requestBodyStream() fails before forwarding any byte of an off-scope placeholder", async () => {
  const prefix = "x".repeat(5000);
  const bytes = enc.encode(`${prefix}${OPENAI.placeholder}tail`);
  for (const cut of [10, 4990, 5000, 5003, 5020, bytes.length - 2]) {
    const found: string[] = [];
    const ts = b.requestBodyStream(["NPM_TOKEN"], (n) => found.push(n))!;
    const reader = ReadableStream.from(splitAt(bytes, [cut])).pipeThrough(ts).getReader();
    let forwarded = "";
    let error: unknown;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        forwarded += dec.decode(value);
      }
    } catch (e) {
      error = e;
    }
    assert(error instanceof CredentialViolationError, `cut ${cut}: ${error}`);
    assertEquals(error.credential, "OPENAI_API_KEY");
    assertStringIncludes(error.message, "credential OPENAI_API_KEY");
    assert(prefix.startsWith(forwarded), `cut ${cut}: forwarded placeholder bytes`);
    assertEquals(found, ["OPENAI_API_KEY"]);
  }
});

Deno.test("Broker.rewriteBody() substitutes a buffered body and gives its new length", () => {
  const r = b.rewriteBody(enc.encode(jsonBody), ["NPM_TOKEN", "GH_TOKEN"]);
  assertEquals(dec.decode(r.body), jsonWant);
  assertEquals(r.body.length, enc.encode(jsonWant).length);
  assertEquals(r.found, ["NPM_TOKEN", "GH_TOKEN"]);
  assertEquals(r.substituted, ["NPM_TOKEN", "GH_TOKEN"]);
  assertEquals(r.violations, []);
});

Deno.test("Broker.rewriteBody() reports violations and substitutes nothing then", () => {
  const input = enc.encode(jsonBody);
  const r = b.rewriteBody(input, ["NPM_TOKEN"]);
  assertEquals(r.violations, ["GH_TOKEN"]);
  assertEquals(r.found, ["NPM_TOKEN", "GH_TOKEN"]);
  assertEquals(r.substituted, []);
  assert(r.body === input, "the body is returned unchanged");
  assertEquals(b.scanBody(input), ["NPM_TOKEN", "GH_TOKEN"]);
  assertEquals(b.scanBody(enc.encode("nothing here, sluice-")), []);
});

// ---------------------------------------------------------------------------------------------
// Scrubbing responses

Deno.test("Broker.scrubHeaders() puts placeholders back in response header values", () => {
  const got = b.scrubHeaders(
    [
      ["X-Echo", `got ${OPENAI.secret} and ${NPM.secret}`],
      ["Location", `https://x/${FIXED.secret}`],
      ["Content-Type", "text/plain"],
    ],
    ["OPENAI_API_KEY", "FIXED"],
  );
  assertEquals(got, [
    ["X-Echo", `got ${OPENAI.placeholder} and ${NPM.secret}`],
    ["Location", `https://x/${FIXED.placeholder}`],
    ["Content-Type", "text/plain"],
  ]);
});

Deno.test("Broker.scrubHeaders() scrubs a non-ASCII value in its latin1 header form", () => {
  const got = b.scrubHeaders([["X-Echo", "a gh/REAL+v&x=1#\xc3\xa9 b"]], ["GH_TOKEN"]);
  assertEquals(got, [["X-Echo", `a ${GH.placeholder} b`]]);
});

Deno.test("Broker.responseBodyStream() scrubs a text body split across chunks", async () => {
  const text = `{"echo":"${OPENAI.secret}","again":"${OPENAI.secret}","gh":"${GH.secret}"}`;
  const want =
    `{"echo":"${OPENAI.placeholder}","again":"${OPENAI.placeholder}","gh":"${GH.placeholder}"}`;
  const bytes = enc.encode(text);
  for (let i = 0; i <= bytes.length; i++) {
    const ts = b.responseBodyStream([["Content-Type", "application/json; charset=utf-8"]], [
      "OPENAI_API_KEY",
      "GH_TOKEN",
    ])!;
    assertEquals(dec.decode(await collect(ts, splitAt(bytes, [i]))), want, `cut at ${i}`);
  }
  assertEquals(dec.decode(b.scrubBytes(bytes, ["OPENAI_API_KEY", "GH_TOKEN"])), want);
});

Deno.test("Broker.responseBodyStream() scrubs every media type, and every credential by default", async () => {
  const body = enc.encode(`\x00\x01${OPENAI.secret}\xff${NPM.secret}`);
  for (const type of ["image/png", "application/octet-stream", "text/plain"]) {
    const ts = b.responseBodyStream([["Content-Type", type]])!;
    assertEquals(
      dec.decode(await collect(ts, [body])),
      `\x00\x01${OPENAI.placeholder}\xff${NPM.placeholder}`,
      type,
    );
  }
  assertEquals(b.responseBodyStream([], []), null, "no credential named");
});

Deno.test("Broker.scrubHeaders() and scrubBytes() default to every credential, in every form", () => {
  const got = b.scrubHeaders([
    ["X-A", OPENAI.secret],
    ["Authorization", basic(`me:${NPM.secret}`)],
    ["Location", `https://x/?k=${encodeURIComponent(GH.secret)}`],
  ]);
  assertEquals(got, [
    ["X-A", OPENAI.placeholder],
    ["Authorization", basic(`me:${NPM.placeholder}`)],
    ["Location", `https://x/?k=${encodeURIComponent(GH.placeholder)}`],
  ]);
  const bytes = enc.encode(`{"k":"${btoa(FIXED.secret)}"}`);
  assertEquals(dec.decode(b.scrubBytes(bytes)), `{"k":"${btoa(FIXED.placeholder)}"}`);
});

Deno.test("Broker.scrubResponse() scrubs any response, and refuses a coding it cannot decode", async () => {
  const r = await b.scrubResponse({
    status: 500,
    reason: "Internal Server Error",
    headers: [["Content-Type", "application/octet-stream"], ["X-Echo", NPM.secret]],
    body: ReadableStream.from([enc.encode(`bin ${OPENAI.secret}`)]),
  }, false);
  assert(r.ok);
  assertEquals(r.headers, [["Content-Type", "application/octet-stream"], [
    "X-Echo",
    NPM.placeholder,
  ]]);
  assertEquals(await new Response(r.body).text(), `bin ${OPENAI.placeholder}`);
  const refused = await b.scrubResponse({
    status: 200,
    reason: "OK",
    headers: [["Content-Encoding", "compress"]],
    body: ReadableStream.from([enc.encode("x")]),
  }, false);
  assert(!refused.ok);
  assertStringIncludes(refused.reason, "cannot decode");
});

Deno.test("Broker without credentials passes responses through untouched", async () => {
  const empty = makeBroker([], new Map(), new Map());
  assertEquals(empty.responseScrubber(), null);
  const headers: [string, string][] = [["Content-Encoding", "zstd"]];
  const whole = enc.encode("coded bytes");
  const r = await empty.scrubResponse(
    { status: 200, reason: "OK", headers, body: null, whole },
    false,
  );
  assert(r.ok && r.headers === headers && r.body === whole);
});

// ---------------------------------------------------------------------------------------------
// The matcher and validation

Deno.test("Matcher finds leftmost, then longest, non-overlapping matches", () => {
  const set = new Matcher(["abcd", "bcdefg", "abcdefgh", "zz"].map((s) => enc.encode(s)));
  const tag = (i: number) => enc.encode(`<${i}>`);
  const cases: [string, string][] = [
    ["xxabcdefghxx", "xx<2>xx"],
    ["xxabcdefxx", "xx<0>efxx"],
    ["xbcdefgabcd", "x<1><0>"],
    ["zzzzz", "<3><3>z"],
    ["", ""],
  ];
  for (const [input, want] of cases) {
    assertEquals(dec.decode(rewriteBytes(set, tag, enc.encode(input))), want, input);
  }
});

Deno.test("rewriteStream() can pass a match on unchanged and report it", async () => {
  const set = new Matcher([enc.encode("needle")]);
  let n = 0;
  const ts = rewriteStream(set, () => {
    n++;
    return null;
  });
  const out = await collect(ts, splitAt(enc.encode("a needle, a nee dle, needle"), [4, 22]));
  assertEquals(dec.decode(out), "a needle, a nee dle, needle");
  assertEquals(n, 2);
});

type InvalidCase = {
  name: string;
  specs: Spec[];
  placeholders?: Record<string, string>;
  error: string;
};

const invalid: InvalidCase[] = [
  {
    name: "a value that contains a placeholder",
    specs: [OPENAI, { ...NPM, secret: `x${OPENAI.placeholder}x` }],
    error: "credential NPM_TOKEN: the value contains the placeholder of credential OPENAI_API_KEY",
  },
  {
    name: "a placeholder that contains a value",
    specs: [OPENAI, { ...NPM, secret: "token-zyxwvutsrq" }],
    error: "credential NPM_TOKEN: the value appears inside the placeholder of credential NPM_TOKEN",
  },
  {
    name: "two equal placeholders",
    specs: [OPENAI, { ...NPM, placeholder: OPENAI.placeholder }],
    error: "its placeholder is the same as credential",
  },
  {
    name: "a placeholder inside another",
    specs: [OPENAI, { ...NPM, placeholder: `${OPENAI.placeholder}-2` }],
    error: "credential NPM_TOKEN: its placeholder contains credential OPENAI_API_KEY's placeholder",
  },
  {
    name: "a line break in a value bound for a header",
    specs: [{ ...OPENAI, secret: "sk-REAL\r\nX-Injected: 1" }],
    error: "credential OPENAI_API_KEY: the value contains a line break or NUL",
  },
];

for (const c of invalid) {
  Deno.test(`makeBroker() refuses ${c.name}, naming no value`, () => {
    const e = assertThrows(() => broker(c.specs), SecretError);
    assertStringIncludes(e.message, c.error);
    for (const s of c.specs) assert(!e.message.includes(s.secret), e.message);
  });
}

Deno.test("makeBroker() refuses a credential without a value or a placeholder", () => {
  const e = assertThrows(
    () => makeBroker([cred(OPENAI), cred(NPM)], new Map([[NPM.name, NPM.placeholder]]), new Map()),
    SecretError,
  );
  assertEquals(e.problems, [
    "credential OPENAI_API_KEY: no placeholder was given",
    "credential OPENAI_API_KEY: no value was loaded",
    "credential NPM_TOKEN: no value was loaded",
  ]);
});

Deno.test("makeBroker() with no credentials scans nothing and streams nothing", () => {
  const empty = makeBroker([], new Map(), new Map());
  assertEquals(empty.scanRequest("/sluice-x", [["A", "sluice-"]]).size, 0);
  assertEquals(empty.requestBodyStream([]), null);
  assertEquals(empty.rewriteBody(enc.encode("abc"), []).found, []);
});
