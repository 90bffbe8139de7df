/**
 * lib/credentials/oauth2.ts: the token request of each grant, reading token answers, the RS256
 * assertion, and the token cell (cache, single flight, expiry, renewal after 401, rotation,
 * failures), and the broker substituting and scrubbing minted tokens.
 */
import { generateKeyPairSync, verify } from "node:crypto";
import { assert, assertEquals, assertMatch, assertRejects } from "../../_assert.ts";
import type { Credential, OAuth2Spec } from "../../../policy/types.ts";
import {
  jwtAssertion,
  type OAuth2Material,
  OAuth2Tokens,
  parseTokenResponse,
  TokenError,
  type TokenEvent,
  tokenRequest,
} from "../../../lib/credentials/oauth2.ts";
import { SecretValue } from "../../../lib/credentials/secrets.ts";
import { makeBroker } from "../../../lib/credentials/broker.ts";

const loc = { file: "p.yaml", line: 1, col: 1 };
const URL_ = "https://auth.example/token";
const spec = (o: Partial<OAuth2Spec>): OAuth2Spec => ({
  tokenUrl: URL_,
  tokenUrlLoc: loc,
  grant: "refresh_token",
  clientAuth: "basic",
  ...o,
});
const cred = (name: string, o: Partial<OAuth2Spec> = {}): Credential => ({
  name,
  loc,
  kind: "oauth2",
  from: null,
  oauth2: spec(o),
  hosts: [{
    pattern: { kind: "exact", name: "api.example" },
    port: null,
    source: "api.example",
    loc,
  }],
  in: ["header"],
  onViolation: "block",
});
const secret = (v: string) => new SecretValue("t", v);
const enc = new TextEncoder();

Deno.test("tokenRequest: each grant's form and client authentication", async (t) => {
  const cases: [string, OAuth2Spec, OAuth2Material, Record<string, string>, string | null][] = [
    [
      "refresh_token with HTTP Basic (both parts form-encoded)",
      spec({ clientId: "app id", scope: "a b" }),
      { clientSecret: secret("s3cr&t=x"), refreshToken: secret("rt-1") },
      { grant_type: "refresh_token", refresh_token: "rt-1", scope: "a b" },
      `Basic ${btoa("app+id:s3cr%26t%3Dx")}`,
    ],
    [
      "refresh_token with client_auth: body",
      spec({ clientId: "app", clientAuth: "body" }),
      { clientSecret: secret("sec-12345"), refreshToken: secret("rt-1") },
      {
        grant_type: "refresh_token",
        refresh_token: "rt-1",
        client_id: "app",
        client_secret: "sec-12345",
      },
      null,
    ],
    [
      "a public client: client_id in the form, no secret",
      spec({ clientId: "app" }),
      { refreshToken: secret("rt-1") },
      { grant_type: "refresh_token", refresh_token: "rt-1", client_id: "app" },
      null,
    ],
    [
      "client_credentials with a scope",
      spec({ grant: "client_credentials", clientId: "ci", scope: "read" }),
      { clientSecret: secret("sec-12345") },
      { grant_type: "client_credentials", scope: "read" },
      `Basic ${btoa("ci:sec-12345")}`,
    ],
  ];
  for (const [name, s, m, form, auth] of cases) {
    await t.step(name, () => {
      const r = tokenRequest(s, m, m.refreshToken, 1000);
      assertEquals(Object.fromEntries(new URLSearchParams(r.form)), form);
      assertEquals(r.headers.find(([n]) => n === "authorization")?.[1] ?? null, auth);
      assertEquals(
        r.headers.find(([n]) => n === "content-type")?.[1],
        "application/x-www-form-urlencoded",
      );
    });
  }
});

Deno.test("jwtAssertion: an RS256 JWT the public key verifies, with the claims asked for", () => {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const s = spec({ grant: "jwt_bearer", scope: "cloud", subject: "user@example" });
  const jwt = jwtAssertion(s, { value: secret("k"), object: privateKey, issuer: "sa@x" }, 1_000);
  const [h, c, sig] = jwt.split(".");
  const b64 = (x: string) =>
    Uint8Array.from(atob(x.replaceAll("-", "+").replaceAll("_", "/")), (ch) => ch.charCodeAt(0));
  assert(verify("sha256", enc.encode(`${h}.${c}`), publicKey, b64(sig)), "signature verifies");
  assertEquals(JSON.parse(new TextDecoder().decode(b64(h))), { alg: "RS256", typ: "JWT" });
  assertEquals(JSON.parse(new TextDecoder().decode(b64(c))), {
    iss: "sa@x",
    aud: URL_,
    iat: 1000,
    exp: 4600,
    scope: "cloud",
    sub: "user@example",
  });
  const form = new URLSearchParams(
    tokenRequest(
      s,
      { key: { value: secret("k"), object: privateKey, issuer: "sa@x" } },
      undefined,
      1,
    )
      .form,
  );
  assertEquals(form.get("grant_type"), "urn:ietf:params:oauth:grant-type:jwt-bearer");
});

Deno.test("parseTokenResponse: named cases", async (t) => {
  const cases: [string, number, string, ReturnType<typeof parseTokenResponse>][] = [
    [
      "a token with a lifetime and a rotated refresh token",
      200,
      '{"access_token":"at-123456","expires_in":3600,"refresh_token":"rt-2"}',
      { ok: true, accessToken: "at-123456", expiresIn: 3600, refreshToken: "rt-2" },
    ],
    [
      "expires_in as a string (some providers)",
      200,
      '{"access_token":"at-123456","expires_in":"60"}',
      { ok: true, accessToken: "at-123456", expiresIn: 60 },
    ],
    [
      "no lifetime",
      200,
      '{"access_token":"at-123456"}',
      { ok: true, accessToken: "at-123456", expiresIn: null },
    ],
    [
      "an error names the status and the standard code only",
      400,
      '{"error":"invalid_grant","error_description":"token rt-SECRET is revoked"}',
      { ok: false, reason: "the token endpoint answered 400 (invalid_grant)" },
    ],
    [
      "an error code that is not a token is left out",
      401,
      '{"error":"bad\\nthing"}',
      { ok: false, reason: "the token endpoint answered 401" },
    ],
    [
      "an answer that is not JSON",
      200,
      "<html>",
      { ok: false, reason: "the token endpoint's answer is not a JSON object" },
    ],
    [
      "no access_token",
      200,
      '{"token_type":"bearer"}',
      { ok: false, reason: "the token endpoint's answer has no access_token" },
    ],
    [
      "a token a header cannot carry",
      200,
      '{"access_token":"a b\\r\\nX: y"}',
      { ok: false, reason: "the access token holds characters a header cannot carry" },
    ],
  ];
  for (const [name, status, body, want] of cases) {
    await t.step(name, () => assertEquals(parseTokenResponse(status, enc.encode(body)), want));
  }
});

/** A registry with a fake clock and a scripted endpoint. */
function harness(answers: (n: number, form: URLSearchParams) => { status: number; body: string }) {
  let now = 0;
  const events: TokenEvent[] = [];
  const forms: URLSearchParams[] = [];
  const tokens = new OAuth2Tokens({ now: () => now, onEvent: (e) => events.push(e) });
  tokens.connect(async (_c, req) => {
    const form = new URLSearchParams(req.form);
    forms.push(form);
    await new Promise((r) => setTimeout(r, 5));
    const a = answers(forms.length, form);
    return { status: a.status, body: enc.encode(a.body) };
  });
  return {
    tokens,
    events,
    forms,
    advance: (ms: number) => {
      now += ms;
    },
  };
}

const ok = (n: number, expires = 100) => ({
  status: 200,
  body: JSON.stringify({
    access_token: `access-token-${n}`,
    expires_in: expires,
    refresh_token: `refresh-${n}`,
  }),
});

Deno.test("TokenCell: one fetch for concurrent callers, cached until near expiry", async () => {
  const h = harness((n) => ok(n));
  const cell = h.tokens.cell(cred("A"), { refreshToken: secret("refresh-0") });
  const got = await Promise.all(Array.from({ length: 20 }, () => cell.token()));
  assertEquals(h.forms.length, 1);
  assert(got.every((v) => v.reveal() === "access-token-1"));
  h.advance(89_000); // 100 s token, renewed 10 s (a tenth) before expiry
  assertEquals((await cell.token()).reveal(), "access-token-1");
  assertEquals(h.forms.length, 1);
  h.advance(2_000);
  assertEquals((await cell.token()).reveal(), "access-token-2");
  // The rotated refresh token is the one used next.
  assertEquals(h.forms.map((f) => f.get("refresh_token")), ["refresh-0", "refresh-1"]);
  assertEquals(h.events.map((e) => [e.credential, e.ok]), [["A", true], ["A", true]]);
});

Deno.test("TokenCell: renew after a 401 fetches once; a stale token does not fetch again", async () => {
  const h = harness((n) => ok(n, 3600));
  const cell = h.tokens.cell(cred("A"), { refreshToken: secret("refresh-0") });
  const first = await cell.token();
  const renewed = await Promise.all([cell.renew(first), cell.renew(first)]);
  assertEquals(renewed.map((v) => v?.reveal()), ["access-token-2", "access-token-2"]);
  assertEquals(h.forms.length, 2);
  // A request that used the first token, answering late: the second is already in force.
  assertEquals((await cell.renew(first))?.reveal(), "access-token-2");
  assertEquals(h.forms.length, 2);
  // Its earlier tokens and material stay scrubbed.
  assertEquals(
    cell.scrubValues().map((v) => v.reveal()).sort(),
    ["access-token-1", "access-token-2", "refresh-0", "refresh-2"].sort(),
  );
});

Deno.test("TokenCell: a failing endpoint is a TokenError naming the credential; the next call tries again", async () => {
  let fail = true;
  const h = harness((n) => fail ? { status: 400, body: '{"error":"invalid_grant"}' } : ok(n));
  const cell = h.tokens.cell(cred("BROKEN"), { refreshToken: secret("refresh-0") });
  const e = await assertRejects(() => cell.token(), TokenError);
  assertMatch(e.message, /^credential BROKEN: no access token: .*400 \(invalid_grant\)$/);
  assertEquals(h.events[0].ok, false);
  fail = false;
  assertEquals((await cell.token()).reveal(), "access-token-2");
});

Deno.test("TokenCell: a reload with the same credential and material keeps the cell", () => {
  const tokens = new OAuth2Tokens();
  const a = tokens.cell(cred("A"), { refreshToken: secret("refresh-0") });
  assert(tokens.cell(cred("A"), { refreshToken: secret("refresh-0") }) === a);
  assert(tokens.cell(cred("A"), { refreshToken: secret("refresh-9") }) !== a);
  assert(tokens.cell(cred("A", { scope: "x" }), { refreshToken: secret("refresh-0") }) !== a);
});

Deno.test("Broker: a minted token is substituted once fetched, checked against placeholders, and every token scrubbed", async () => {
  let next = "access-token-1";
  const h = harness(() => ({ status: 200, body: JSON.stringify({ access_token: next }) }));
  const c = cred("A");
  const cell = h.tokens.cell(c, { refreshToken: secret("refresh-0") });
  const ph = "sluice-placeholder-for-a-0001";
  const broker = makeBroker([c], new Map([["A", ph]]), new Map(), undefined, {
    tokens: h.tokens,
    cells: new Map([["A", cell]]),
  });
  const head: [string, string][] = [["authorization", `Bearer ${ph}`]];
  // No token yet: the placeholder stays (the data path fetches first; see forward.ts).
  assertEquals(broker.rewriteRequest("/", head, [c]).headers, head);
  assertEquals(broker.minted([c]), ["A"]);
  const used = await broker.tokens(["A"]);
  assertEquals(broker.rewriteRequest("/", head, [c]).headers, [[
    "authorization",
    "Bearer access-token-1",
  ]]);
  next = "access-token-2";
  assert(await broker.renewTokens(used));
  assertEquals(broker.rewriteRequest("/", head, [c]).headers, [[
    "authorization",
    "Bearer access-token-2",
  ]]);
  const echoed = enc.encode("old access-token-1 new access-token-2 refresh-0");
  assertEquals(new TextDecoder().decode(broker.scrubBytes(echoed)), `old ${ph} new ${ph} ${ph}`);
  // A token that contains the placeholder would undo substitution: refused like a failure.
  next = `x-${ph}-y`;
  await assertRejects(() => cell.renew(cell.current!), TokenError, "overlap");
});

Deno.test("TokenCell: a rotated refresh token is kept in the store and used after a restart, while the source is unchanged", async () => {
  const saved = new Map<string, { source: string; token: string }>();
  const store = {
    load: (c: string, source: string) =>
      saved.get(c)?.source === source ? saved.get(c)!.token : undefined,
    save: (c: string, source: string, token: string) => saved.set(c, { source, token }),
  };
  const forms: string[] = [];
  const registry = () => {
    const t = new OAuth2Tokens({ store });
    t.connect((_c, req) => {
      const n = forms.push(new URLSearchParams(req.form).get("refresh_token")!);
      return Promise.resolve({
        status: 200,
        body: enc.encode(
          JSON.stringify({ access_token: `access-token-${n}`, refresh_token: `refresh-${n}` }),
        ),
      });
    });
    return t;
  };
  await registry().cell(cred("A"), { refreshToken: secret("refresh-0") }).token();
  // "Restart": a new registry, the same source.
  await registry().cell(cred("A"), { refreshToken: secret("refresh-0") }).token();
  // The source was given a new token: it wins over the stored one.
  await registry().cell(cred("A"), { refreshToken: secret("refresh-new") }).token();
  assertEquals(forms, ["refresh-0", "refresh-1", "refresh-new"]);
});
