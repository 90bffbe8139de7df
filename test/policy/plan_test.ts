import { assert, assertEquals } from "../_assert.ts";
import { loadPolicyText } from "../../policy/load.ts";
import { explain } from "../../policy/explain.ts";
import { hostHeaderTarget, type PlanInput, planRequest } from "../../policy/plan.ts";
import { PlaceholderScanner } from "../../policy/placeholders.ts";

const { compiled } = loadPolicyText(
  `version: 1
network:
  allow:
    - scoped.test
    - other.test
    - plain.test:80
    - 203.0.113.7
    - "GET,POST api.test/v1/**"
  deny:
    - "scoped.test/admin/**"
credentials:
  KEY:
    from: env:K
    hosts: [scoped.test]
    placeholder: sluice-key-placeholder-0001
  PLAIN:
    from: env:P
    hosts: ["plain.test:80"]
    placeholder: sluice-plain-placeholder-0002
`,
  "p.yaml",
);
const PH = new Map([["KEY", "sluice-key-placeholder-0001"], [
  "PLAIN",
  "sluice-plain-placeholder-0002",
]]);
const scanner = new PlaceholderScanner(PH);

function input(over: Partial<PlanInput>): PlanInput {
  return {
    secure: true,
    connectionHost: "scoped.test",
    port: 443,
    method: "GET",
    host: "scoped.test",
    pathname: "/",
    search: "",
    headers: [["Host", "scoped.test"]],
    scanner,
    ...over,
  };
}

// name, input, expected verdict, expected code (deny) or target (allow)
const cases: [string, Partial<PlanInput>, "allow" | "deny", string][] = [
  ["a plain allowed request", {}, "allow", "/"],
  ["no Host header at all (HTTP/2 :authority only)", { headers: [] }, "allow", "/"],
  [
    "a Host with the default port written out",
    { headers: [["host", "scoped.test:443"]] },
    "allow",
    "/",
  ],
  ["a Host in another case", { headers: [["HOST", "SCOPED.test"]] }, "allow", "/"],
  [
    "fronting: Host names another virtual host",
    { headers: [["Host", "other.test"]] },
    "deny",
    "host-mismatch",
  ],
  [
    "fronting: Host names another port",
    { headers: [["Host", "scoped.test:8443"]] },
    "deny",
    "host-mismatch",
  ],
  [
    "fronting: two Host headers",
    { headers: [["Host", "scoped.test"], ["host", "other.test"]] },
    "deny",
    "host-mismatch",
  ],
  [
    "fronting: a Host that does not parse",
    { headers: [["Host", "scoped.test:x"]] },
    "deny",
    "host-mismatch",
  ],
  [
    "fronting over TLS: the authority is not the SNI",
    { host: "other.test", headers: [] },
    "deny",
    "host-mismatch",
  ],
  [
    "direct path (name unknown): decided on the authority, which is where it goes",
    { host: "other.test", connectionHost: undefined, nameUnknown: true, headers: [] },
    "allow",
    "/",
  ],
  [
    "direct path: a Host header that is not the authority is still fronting",
    { connectionHost: undefined, nameUnknown: true, headers: [["Host", "other.test"]] },
    "deny",
    "host-mismatch",
  ],
  [
    "direct path: a denied authority is denied",
    { host: "denied.test", connectionHost: undefined, nameUnknown: true, headers: [] },
    "deny",
    "default",
  ],
  ["an unparseable host", { host: "a%00b", connectionHost: "a%00b" }, "deny", "invalid-host"],
  [
    "a placeholder in the host name",
    { host: "sluice-key-placeholder-0001.evil.test" },
    "deny",
    "credential-violation",
  ],
  [
    "a placeholder in the Host header",
    { headers: [["Host", "sluice-key-placeholder-0001.x"]] },
    "deny",
    "credential-violation",
  ],
  [
    "a path rule matches // as the upstream reads it",
    { pathname: "//admin/x" },
    "deny",
    "deny-rule",
  ],
  ["a path rule matches ///admin//x", { pathname: "///admin//x" }, "deny", "deny-rule"],
  [
    "the merged path is what is forwarded",
    { pathname: "/a//b", search: "?q=1" },
    "allow",
    "/a/b?q=1",
  ],
  [
    "a method rule",
    {
      host: "api.test",
      connectionHost: "api.test",
      headers: [],
      method: "DELETE",
      pathname: "/v1/x",
    },
    "deny",
    "default",
  ],
  [
    "a path rule allows",
    { host: "api.test", connectionHost: "api.test", headers: [], pathname: "/v1//x" },
    "allow",
    "/v1/x",
  ],
  [
    "a placeholder toward its host",
    { headers: [["Authorization", "Bearer sluice-key-placeholder-0001"]] },
    "allow",
    "/",
  ],
  [
    "a placeholder toward another host",
    {
      host: "other.test",
      connectionHost: "other.test",
      headers: [["X", "sluice-key-placeholder-0001"]],
    },
    "deny",
    "credential-violation",
  ],
  [
    "a placeholder in a header name",
    {
      host: "other.test",
      connectionHost: "other.test",
      headers: [["x-sluice-key-placeholder-0001", "1"]],
    },
    "deny",
    "credential-violation",
  ],
  [
    "a placeholder in Basic credentials",
    {
      host: "other.test",
      connectionHost: "other.test",
      headers: [["Authorization", `Basic ${btoa("u:sluice-key-placeholder-0001")}`]],
    },
    "deny",
    "credential-violation",
  ],
  [
    "a percent-encoded placeholder in the query",
    {
      host: "other.test",
      connectionHost: "other.test",
      headers: [],
      search: "?k=sluice%2Dkey-placeholder-0001",
    },
    "deny",
    "credential-violation",
  ],
  [
    "plain HTTP to a credential host without its port",
    {
      secure: false,
      port: 80,
      connectionHost: undefined,
      headers: [["X", "sluice-key-placeholder-0001"]],
    },
    "deny",
    "credential-violation",
  ],
  [
    "plain HTTP to a credential host that names port 80",
    {
      secure: false,
      port: 80,
      host: "plain.test",
      connectionHost: undefined,
      headers: [["X", "sluice-plain-placeholder-0002"]],
    },
    "allow",
    "/",
  ],
  [
    "an IP literal in a private range",
    { host: "10.0.0.1", connectionHost: "10.0.0.1", headers: [] },
    "deny",
    "default",
  ],
  [
    "an allowed IP literal",
    { host: "203.0.113.7", connectionHost: "203.0.113.7", headers: [] },
    "allow",
    "/",
  ],
];

for (const [name, over, verdict, want] of cases) {
  Deno.test(`planRequest(): ${name}`, () => {
    const plan = planRequest(compiled, input(over));
    assertEquals(
      plan.verdict,
      verdict,
      JSON.stringify(plan.verdict === "deny" ? plan.decision : plan.target),
    );
    if (plan.verdict === "deny") assertEquals(plan.decision.code, want, plan.decision.reason);
    else assertEquals(plan.target, want);
  });
}

Deno.test("planRequest() sends the Host it decided on, with the port only when it is not the default", () => {
  const a = planRequest(compiled, input({ headers: [] }));
  assert(a.verdict === "allow");
  assertEquals(a.hostHeader, "scoped.test");
  const b = planRequest(
    compiled,
    input({ secure: false, port: 8080, host: "203.0.113.7", headers: [] }),
  );
  assert(b.verdict === "allow");
  assertEquals(b.hostHeader, "203.0.113.7:8080");
});

Deno.test("planRequest() never puts a placeholder or secret in a reason", () => {
  const plan = planRequest(
    compiled,
    input({
      host: "other.test",
      connectionHost: "other.test",
      headers: [["X", "sluice-key-placeholder-0001"]],
    }),
  );
  assert(plan.verdict === "deny");
  assert(!plan.decision.reason.includes("sluice-key-placeholder-0001"));
  assertEquals(plan.decision.rule.source, "credentials.KEY.hosts");
  assertEquals(plan.decision.rule.at, "p.yaml:12");
});

Deno.test("hostHeaderTarget() parses names, IPv4, bracketed IPv6 and ports", () => {
  assertEquals(hostHeaderTarget("A.test", 443), { host: "a.test", port: 443 });
  assertEquals(hostHeaderTarget("[::1]:8080", 80), { host: "[::1]", port: 8080 });
  assertEquals(hostHeaderTarget("1.2.3.4:80", 443), { host: "1.2.3.4", port: 80 });
  assertEquals(hostHeaderTarget("a.test:99999", 80), undefined);
  assertEquals(hostHeaderTarget("", 80), undefined);
});

// explain prints the plan: for every case it can express (a URL and headers), the same verdict and code.
for (const [name, over, verdict, want] of cases) {
  const i = input(over);
  if (i.secure && i.connectionHost !== i.host) continue; // explain's connection is always for its URL's host
  Deno.test(`explain() agrees with planRequest(): ${name}`, () => {
    const scheme = i.secure ? "https" : "http";
    const host = i.host.includes(":") ? `[${i.host}]` : i.host;
    const url = `${scheme}://${host}${
      i.port === (i.secure ? 443 : 80) ? "" : `:${i.port}`
    }${i.pathname}${i.search}`;
    let e;
    try {
      e = explain(compiled, {
        method: i.method,
        url,
        headers: i.headers as [string, string][],
        placeholders: PH,
      });
    } catch {
      return;
    }
    if (e.error) {
      assertEquals(verdict, "deny");
      return;
    }
    assertEquals(e.verdict, verdict, `${url}: ${JSON.stringify(e)}`);
    if (verdict === "deny") {
      const code = e.refusal?.code ?? e.connection?.code ?? e.request?.code;
      assertEquals(code, want);
    }
  });
}

Deno.test("explain() names the client certificate sluice would present, by host and port", () => {
  const { compiled } = loadPolicyText(
    `version: 1
network:
  allow: [partner.test, other.test]
credentials:
  MTLS:
    kind: client_cert
    cert: file:/c.pem
    key: file:/k.pem
    hosts: ["partner.test:443"]
`,
    "p.yaml",
  );
  const cases: [string, string, string | undefined][] = [
    ["its host and port, over TLS", "https://partner.test/x", "MTLS"],
    ["another port", "https://partner.test:8443/x", undefined],
    ["another host", "https://other.test/x", undefined],
    ["plain HTTP (no TLS to present it in)", "http://partner.test:443/x", undefined],
  ];
  for (const [name, url, want] of cases) {
    const e = explain(compiled!, { method: "GET", url, headers: [], placeholders: new Map() });
    assertEquals(e.credentials.presented, want, name);
  }
});

Deno.test("explain() says an oauth2 credential's placeholder becomes a token from its endpoint", () => {
  const { compiled } = loadPolicyText(
    `version: 1
network:
  allow: [api.test, auth.test]
credentials:
  API:
    kind: oauth2
    token_url: https://auth.test/token
    refresh_token: env:RT
    hosts: [api.test]
    placeholder: sluice-oauth2-placeholder
`,
    "p.yaml",
  );
  const placeholders = new Map([["API", "sluice-oauth2-placeholder"]]);
  const headers: [string, string][] = [["authorization", "Bearer sluice-oauth2-placeholder"]];
  const scoped = explain(compiled!, {
    method: "GET",
    url: "https://api.test/x",
    headers,
    placeholders,
  });
  assertEquals(scoped.verdict, "allow");
  assertEquals(scoped.credentials.substituted, [
    { name: "API", places: ["header authorization"], minted: "https://auth.test/token" },
  ]);
  // The token endpoint is not one of its hosts: the placeholder headed there is a violation.
  const toAuth = explain(compiled!, {
    method: "POST",
    url: "https://auth.test/token",
    headers,
    placeholders,
  });
  assertEquals([toAuth.verdict, toAuth.refusal?.code], ["deny", "credential-violation"]);
});

Deno.test("explain() says a request signed with aws_sigv4 placeholder keys is re-signed, and only toward its hosts", () => {
  const { compiled } = loadPolicyText(
    `version: 1
network:
  allow: [s3.test, other.test]
credentials:
  AWS:
    kind: aws_sigv4
    access_key_id: env:K
    secret_access_key: env:S
    hosts: [s3.test]
`,
    "p.yaml",
  );
  const placeholders = new Map([
    ["AWS", "AKIAPLACEHOLDER00000"],
    ["AWS#secret_access_key", "sluice-aws-secret-placeholder"],
  ]);
  const headers: [string, string][] = [[
    "authorization",
    "AWS4-HMAC-SHA256 Credential=AKIAPLACEHOLDER00000/20261201/us-east-1/s3/aws4_request, " +
    `SignedHeaders=host, Signature=${"0".repeat(64)}`,
  ]];
  const e = explain(compiled!, {
    method: "GET",
    url: "https://s3.test/b/k",
    headers,
    placeholders,
  });
  assertEquals([e.verdict, e.credentials.resigned], ["allow", "AWS"]);
  const other = explain(compiled!, {
    method: "GET",
    url: "https://other.test/b/k",
    headers,
    placeholders,
  });
  assertEquals([other.verdict, other.refusal?.code], ["deny", "credential-violation"]);
  // The secret key's placeholder is a placeholder too: sent anywhere, it is found.
  const leak = explain(compiled!, {
    method: "POST",
    url: "https://other.test/paste",
    headers: [["x-note", "sluice-aws-secret-placeholder"]],
    placeholders,
  });
  assertEquals([leak.verdict, leak.refusal?.code], ["deny", "credential-violation"]);
});
