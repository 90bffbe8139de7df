/**
 * Decision tables. Each case names what it pins; the expected rule line pins
 * precedence (which rule decided), not just the verdict.
 */
import { assertEquals } from "../_assert.ts";
import { parseIp } from "../../policy/address.ts";
import {
  decideAddress,
  decideConnection,
  decideCredentials,
  decideRequest,
  type Destination,
  loadPolicyText,
  parseDestinationHost,
} from "../../policy/mod.ts";
import { ADDRESS_MEMO_SIZE, REQUEST_MEMO_SIZE } from "../../policy/decide.ts";

const FILE = "test/fixtures/policies/decide.yaml";
const { compiled } = loadPolicyText(Deno.readTextFileSync(FILE), FILE);

function dest(host: string): Destination {
  const d = parseDestinationHost(host);
  if (d.kind === "invalid") throw new Error(d.reason);
  return d;
}

/** [name, host, port, verdict, inspect, rule line or "default", tls] */
const connections: [string, string, number, "allow" | "deny", boolean, number | string, string][] =
  [
    ["allows a host rule on any port", "api.openai.com", 8443, "allow", false, 5, "intercept"],
    ["matches names case-insensitively", "API.OpenAI.COM", 443, "allow", false, 5, "intercept"],
    ["ignores a trailing dot", "api.openai.com.", 443, "allow", false, 5, "intercept"],
    ["allows host:port on its port", "registry.npmjs.org", 443, "allow", false, 6, "intercept"],
    [
      "denies host:port on another port",
      "registry.npmjs.org",
      80,
      "deny",
      false,
      "default",
      "intercept",
    ],
    [
      "allows a subdomain of a wildcard",
      "raw.githubusercontent.com",
      443,
      "allow",
      false,
      7,
      "intercept",
    ],
    [
      "allows a deep subdomain of a wildcard",
      "a.b.githubusercontent.com",
      443,
      "allow",
      false,
      7,
      "intercept",
    ],
    [
      "does not give a wildcard's apex",
      "githubusercontent.com",
      443,
      "deny",
      false,
      "default",
      "intercept",
    ],
    [
      "does not match a lookalike suffix",
      "evilgithubusercontent.com",
      443,
      "deny",
      false,
      "default",
      "intercept",
    ],
    ["allows an IPv4 literal rule", "203.0.113.7", 443, "allow", false, 8, "intercept"],
    [
      "allows a bracketed IPv6 rule on its port",
      "[2001:db8::1]",
      8443,
      "allow",
      false,
      9,
      "intercept",
    ],
    [
      "matches IPv6 in non-canonical form",
      "[2001:DB8:0:0:0:0:0:1]",
      8443,
      "allow",
      false,
      9,
      "intercept",
    ],
    [
      "denies IPv6 rule on another port",
      "[2001:db8::1]",
      443,
      "deny",
      false,
      "default",
      "intercept",
    ],
    ["allows a CIDR member on its port", "10.20.3.4", 5432, "allow", false, 10, "intercept"],
    [
      "denies a CIDR member on another port",
      "10.20.3.4",
      443,
      "deny",
      false,
      "default",
      "intercept",
    ],
    ["denies outside a CIDR", "10.21.0.1", 5432, "deny", false, "default", "intercept"],
    [
      "needs inspection for a short HTTP rule",
      "api.github.com",
      443,
      "allow",
      true,
      11,
      "intercept",
    ],
    [
      "needs inspection for a long HTTP rule",
      "uploads.example.com",
      443,
      "allow",
      true,
      12,
      "intercept",
    ],
    [
      "denies a long HTTP rule's host on another port",
      "uploads.example.com",
      80,
      "deny",
      false,
      "default",
      "intercept",
    ],
    [
      "lets a deny wildcard win over an allow wildcard",
      "db.internal.example.com",
      8443,
      "deny",
      false,
      22,
      "intercept",
    ],
    ["lets a deny IP win", "169.254.169.254", 80, "deny", false, 21, "intercept"],
    [
      "inspects a host that an HTTP deny rule names",
      "example.com",
      443,
      "allow",
      true,
      16,
      "intercept",
    ],
    ["denies by default", "evil.example.net", 443, "deny", false, "default", "intercept"],
    ["marks passthrough hosts", "swscan.apple.com", 443, "deny", false, "default", "passthrough"],
    ["reads hex IPv4 as the address it is", "0xcb.0.113.7", 443, "allow", false, 8, "intercept"],
    ["allows a wildcard on its port only", "a.example.com", 8443, "allow", false, 17, "intercept"],
    ["unmaps IPv4-mapped IPv6", "[::ffff:203.0.113.7]", 443, "allow", false, 8, "intercept"],
  ];
for (const [name, host, port, verdict, inspect, line, tls] of connections) {
  Deno.test(`decideConnection() ${name}`, () => {
    const d = decideConnection(compiled, dest(host), port);
    assertEquals(
      { verdict: d.verdict, inspect: d.inspect, at: d.rule.at, tls: d.tls },
      {
        verdict,
        inspect,
        at: line === "default" ? `${FILE}:3` : `${FILE}:${line}`,
        tls,
      },
    );
  });
}

/** [name, method, host, port, path, verdict, rule line or "default" or code] */
const requests: [string, string, string, number, string, "allow" | "deny", number | string][] = [
  [
    "allows a method and path under **",
    "GET",
    "api.github.com",
    443,
    "/repos/acme/widgets/pulls",
    "allow",
    11,
  ],
  ["allows HEAD listed with GET", "HEAD", "api.github.com", 443, "/repos/acme/x", "allow", 11],
  ["denies a method not listed", "POST", "api.github.com", 443, "/repos/acme/x", "deny", "default"],
  [
    "denies a path outside the glob",
    "GET",
    "api.github.com",
    443,
    "/repos/other/x",
    "deny",
    "default",
  ],
  [
    "does not let a sibling prefix match",
    "GET",
    "api.github.com",
    443,
    "/repos/acmex/y",
    "deny",
    "default",
  ],
  [
    "removes dot segments before matching",
    "GET",
    "api.github.com",
    443,
    "/repos/acme/../other/x",
    "deny",
    "default",
  ],
  [
    "decodes %2e%2e before removing dot segments",
    "GET",
    "api.github.com",
    443,
    "/repos/acme/%2e%2e/other",
    "deny",
    "default",
  ],
  [
    "decodes mixed-case %2E%2e",
    "GET",
    "api.github.com",
    443,
    "/repos/acme/%2E%2e/other",
    "deny",
    "default",
  ],
  [
    "ignores the query",
    "GET",
    "api.github.com",
    443,
    "/repos/acme/x?next=/repos/other",
    "allow",
    11,
  ],
  ["treats methods case-insensitively", "get", "api.github.com", 443, "/repos/acme/x", "allow", 11],
  [
    "lets an HTTP deny win inside an allowed subtree",
    "POST",
    "api.github.com",
    443,
    "/repos/acme/secret/k",
    "deny",
    24,
  ],
  [
    "matches * within one segment",
    "PUT",
    "uploads.example.com",
    443,
    "/bucket/b1/objects/a/b",
    "allow",
    12,
  ],
  [
    "does not let * cross a slash",
    "PUT",
    "uploads.example.com",
    443,
    "/bucket/b1/b2/objects/a",
    "deny",
    "default",
  ],
  [
    "checks the long form's port",
    "PUT",
    "uploads.example.com",
    80,
    "/bucket/b1/objects/a",
    "deny",
    "default",
  ],
  ["denies DELETE by an HTTP deny rule", "DELETE", "example.com", 443, "/anything", "deny", 23],
  ["allows GET where only DELETE is denied", "GET", "example.com", 443, "/anything", "allow", 16],
  ["denies an unparseable path", "GET", "api.openai.com", 443, "/a/%zz", "deny", "invalid-path"],
  [
    "allows a plain host rule for any request",
    "POST",
    "api.openai.com",
    443,
    "/v1/chat",
    "allow",
    5,
  ],
];
for (const [name, method, host, port, path, verdict, line] of requests) {
  Deno.test(`decideRequest() ${name}`, () => {
    const d = decideRequest(compiled, { method, dest: dest(host), port, path });
    const got = typeof line === "string" && line !== "default" ? d.code : d.rule.at;
    const want = line === "default"
      ? `${FILE}:3`
      : typeof line === "number"
      ? `${FILE}:${line}`
      : line;
    assertEquals({ verdict: d.verdict, got }, { verdict, got: want });
  });
}

/**
 * decideRequest() remembers decisions per compiled policy. Every request of the table above,
 * with its query and fragment varied, asked of a policy that has seen all of them (and of one
 * whose memory was filled to overflowing in between), must get what a freshly compiled copy of
 * the same policy decides the first time it is asked.
 */
const MEMO_VARIANTS: [string, (p: string) => string][] = [
  ["as is", (p) => p],
  ["with a query", (p) => `${p}?q=1`],
  ["with another query", (p) => `${p}?q=2&r=%zz`],
  ["with a fragment", (p) => `${p}#top`],
  ["lowercase method (decided as uppercase)", (p) => p],
];
Deno.test("decideRequest() remembers: a repeated request gets what a fresh policy decides", () => {
  const text = Deno.readTextFileSync(FILE);
  const ask = (c: typeof compiled, method: string, host: string, port: number, path: string) =>
    decideRequest(c, { method, dest: dest(host), port, path });
  for (let round = 0; round < 3; round++) {
    if (round === 2) {
      // Fill the memory past its size: it is forgotten all at once, then refilled.
      for (let i = 0; i <= REQUEST_MEMO_SIZE; i++) ask(compiled, "GET", "x.test", 443, `/${i}`);
    }
    for (const [name, method, host, port, path] of requests) {
      for (const [variant, vary] of MEMO_VARIANTS) {
        const m = variant.startsWith("lowercase") ? method.toLowerCase() : method;
        const fresh = loadPolicyText(text, FILE).compiled;
        assertEquals(
          ask(compiled, m, host, port, vary(path)),
          ask(fresh, m, host, port, vary(path)),
          `${name}, ${variant}, round ${round}`,
        );
      }
    }
  }
});

Deno.test("decideRequest() returns the same frozen decision for the same shape, and tells shapes apart", () => {
  const ask = (method: string, host: string, port: number, path: string) =>
    decideRequest(compiled, { method, dest: dest(host), port, path });
  const first = ask("GET", "example.com", 443, "/anything?a=1");
  assertEquals(Object.isFrozen(first), true);
  assertEquals(Object.isFrozen(first.rule), true, "the rule too: the audit log keeps its JSON");
  assertEquals(ask("GET", "example.com", 443, "/anything?b=2") === first, true, "query ignored");
  // Each differs from `first` in one part of the key, and so is decided on its own.
  const others: [string, ReturnType<typeof ask>][] = [
    ["method", ask("DELETE", "example.com", 443, "/anything")],
    ["host", ask("GET", "api.openai.com", 443, "/anything")],
    ["port", ask("GET", "example.com", 8443, "/anything")],
    ["path", ask("GET", "example.com", 443, "/other")],
  ];
  for (const [what, d] of others) assertEquals(d === first, false, what);
  assertEquals(others[0][1].verdict, "deny", "DELETE is denied even after GET was allowed");
  // An IP literal and a name spelled alike never share a key.
  const ip = decideRequest(compiled, {
    method: "GET",
    dest: dest("10.1.2.3"),
    port: 443,
    path: "/",
  });
  const name: Destination = { kind: "name", name: "10.1.2.3" };
  const named = decideRequest(compiled, { method: "GET", dest: name, port: 443, path: "/" });
  assertEquals(ip === named, false);
});

/** [name, ip, port, verdict, code] */
const addresses: [string, string, number, "allow" | "deny", string][] = [
  ["allows a public address", "93.184.216.34", 443, "allow", "allow-rule"],
  ["denies loopback", "127.0.0.1", 443, "deny", "private-address"],
  ["denies RFC1918", "10.1.2.3", 443, "deny", "private-address"],
  [
    "denies the metadata address by its deny rule first",
    "169.254.169.254",
    80,
    "deny",
    "deny-rule",
  ],
  ["denies other link-local", "169.254.1.1", 80, "deny", "private-address"],
  ["denies CGNAT", "100.64.0.1", 443, "deny", "private-address"],
  ["denies ULA", "fd12::1", 443, "deny", "private-address"],
  ["denies IPv4-mapped loopback", "::ffff:127.0.0.1", 443, "deny", "private-address"],
  ["denies IPv6 link-local", "fe80::1", 443, "deny", "private-address"],
  [
    "allows a private address named by an IP rule on its port",
    "192.168.1.10",
    8080,
    "allow",
    "allow-rule",
  ],
  ["denies that address on another port", "192.168.1.10", 8081, "deny", "private-address"],
  ["allows a private address inside an allowed CIDR", "10.20.9.9", 5432, "allow", "allow-rule"],
  ["denies 0.0.0.0", "0.0.0.0", 443, "deny", "private-address"],
];
for (const [name, ipText, port, verdict, code] of addresses) {
  Deno.test(`decideAddress() ${name}`, () => {
    const ip = parseIp(ipText);
    if (!ip) throw new Error(`bad test ip ${ipText}`);
    const d = decideAddress(compiled, ip, port, "metadata-alias.example.org");
    assertEquals({ verdict: d.verdict, code: d.code }, { verdict, code });
  });
}

Deno.test("decideAddress() remembers: a repeated address gets what a fresh policy decides", () => {
  const text = Deno.readTextFileSync(FILE);
  const ask = (c: typeof compiled, ipText: string, port: number, host?: string) =>
    decideAddress(c, parseIp(ipText)!, port, host);
  for (let round = 0; round < 3; round++) {
    if (round === 2) {
      // Fill the memory past its size: it is forgotten all at once, then refilled.
      for (let i = 0; i <= ADDRESS_MEMO_SIZE; i++) {
        ask(compiled, "93.184.216.34", 443, `n${i}.test`);
      }
    }
    for (const [name, ipText, port] of addresses) {
      for (const host of [undefined, "metadata-alias.example.org", "other.example"]) {
        const fresh = loadPolicyText(text, FILE).compiled;
        assertEquals(
          ask(compiled, ipText, port, host),
          ask(fresh, ipText, port, host),
          `${name}, ${host ?? "no name"}, round ${round}`,
        );
      }
    }
  }
});

Deno.test("decideAddress() returns the same frozen decision for the same triple, and tells triples apart", () => {
  const ask = (ipText: string, port: number, host?: string) =>
    decideAddress(compiled, parseIp(ipText)!, port, host);
  const first = ask("10.1.2.3", 443, "a.example");
  assertEquals(Object.isFrozen(first), true);
  assertEquals(Object.isFrozen(first.rule), true);
  assertEquals(ask("10.1.2.3", 443, "a.example") === first, true);
  // Each differs from `first` in one part of the key, and so is decided on its own: the reason
  // names the host it was resolved for.
  const others: [string, ReturnType<typeof ask>][] = [
    ["address", ask("10.1.2.4", 443, "a.example")],
    ["port", ask("10.1.2.3", 8443, "a.example")],
    ["host", ask("10.1.2.3", 443, "b.example")],
    ["no host", ask("10.1.2.3", 443)],
  ];
  for (const [what, d] of others) assertEquals(d === first, false, what);
  assertEquals(others[2][1].reason.includes("b.example"), true, "the reason names its own host");
  assertEquals(others[3][1].reason.includes("a.example"), false);
  // The allowed CIDR's port decides too (the table's 192.168.1.10 8080 / 8081 pair, remembered).
  assertEquals(ask("192.168.1.10", 8080).verdict, "allow");
  assertEquals(ask("192.168.1.10", 8081).verdict, "deny");
  assertEquals(ask("192.168.1.10", 8080).verdict, "allow");
});

Deno.test("decideAddress() allows private addresses when private: allow", () => {
  const { compiled: open } = loadPolicyText(
    "version: 1\nnetwork:\n  private: allow\n  allow: [intranet.example]\n",
    "p.yaml",
  );
  assertEquals(decideAddress(open, parseIp("10.0.0.1")!, 443).verdict, "allow");
});

/** [name, host, port, found, substitute, violations] */
const creds: [string, string, number, string[], string[], string[]][] = [
  ["offers a credential to its host", "api.openai.com", 443, [], ["OPENAI_API_KEY"], []],
  ["flags a placeholder sent to another host", "api.github.com", 443, ["OPENAI_API_KEY"], [], [
    "OPENAI_API_KEY",
  ]],
  ["is not a violation at the credential's own host", "api.openai.com", 443, ["OPENAI_API_KEY"], [
    "OPENAI_API_KEY",
  ], []],
  ["respects a credential host's port", "uploads.example.com", 8443, ["UPLOAD_TOKEN"], [], [
    "UPLOAD_TOKEN",
  ]],
  [
    "offers a port-scoped credential on its port",
    "uploads.example.com",
    443,
    [],
    ["UPLOAD_TOKEN"],
    [],
  ],
  ["does not offer to a subdomain of an exact host", "x.api.openai.com", 443, [], [], []],
];
for (const [name, host, port, found, substitute, violations] of creds) {
  Deno.test(`decideCredentials() ${name}`, () => {
    const d = decideCredentials(compiled, dest(host), port, found);
    assertEquals(
      { substitute: d.substitute.map((c) => c.name), violations: d.violations.map((c) => c.name) },
      { substitute, violations },
    );
  });
}

Deno.test("decideConnection() matches an IPv4-mapped IP rule against the IPv4 address", () => {
  const { compiled: c } = loadPolicyText(
    "version: 1\nnetwork:\n  allow: ['::ffff:10.0.0.1']\n",
    "p.yaml",
  );
  assertEquals(decideConnection(c, dest("10.0.0.1"), 443).verdict, "allow");
});

Deno.test("parseDestinationHost() refuses a host that ends in a number but is no IPv4 address", () => {
  assertEquals(parseDestinationHost("1.2.3.999").kind, "invalid");
  assertEquals(parseDestinationHost("host.123").kind, "invalid");
  assertEquals(parseDestinationHost("1password.com").kind, "name");
});
