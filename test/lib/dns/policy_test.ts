/**
 * Which names the DNS server answers. The expected rule pins precedence
 * (which rule decided), not just the verdict.
 */
import { assertEquals } from "../../_assert.ts";
import { dnsAnswerable } from "../../../lib/dns/policy.ts";
import { loadPolicyText } from "../../../policy/load.ts";

const DENY_BY_DEFAULT = `version: 1
network:
  default: deny
  allow:
    - api.example.com
    - registry.example.org:443
    - "*.cdn.example.net"
    - "GET,HEAD api.github.example/repos/**"
    - both.example.com:443
    - "*.corp.example"
    - 203.0.113.7
    - 10.20.0.0/16
    - some-ports.example:80
    - some-ports.example:443
  deny:
    - "*.internal.corp.example"
    - both.example.com:443
    - blocked.corp.example
    - some-ports.example:80
`;

const ALLOW_BY_DEFAULT = `version: 1
network:
  default: allow
  deny:
    - "*.attacker.example"
    - metadata.example
    - web-only.example:80
    - "POST api.example.com/upload"
`;

const deny = loadPolicyText(DENY_BY_DEFAULT, "deny.yaml").compiled;
const allow = loadPolicyText(ALLOW_BY_DEFAULT, "allow.yaml").compiled;

/** [case, policy, queried name, ok, code, deciding rule as written] */
const cases: [string, typeof deny, string, boolean, string, string][] = [
  ["answers a host rule", deny, "api.example.com", true, "allow-rule", "api.example.com"],
  [
    "compares names case-insensitively, ignoring a trailing dot",
    deny,
    "API.Example.COM.",
    true,
    "allow-rule",
    "api.example.com",
  ],
  [
    "answers a host:port rule (a lookup has no port)",
    deny,
    "registry.example.org",
    true,
    "allow-rule",
    "registry.example.org:443",
  ],
  [
    "answers a wildcard at any depth",
    deny,
    "a.b.cdn.example.net",
    true,
    "allow-rule",
    "*.cdn.example.net",
  ],
  ["does not answer a wildcard's apex", deny, "cdn.example.net", false, "default", "default: deny"],
  [
    "answers a host that only an HTTP rule allows",
    deny,
    "api.github.example",
    true,
    "needs-inspection",
    "GET,HEAD api.github.example/repos/**",
  ],
  [
    "lets a deny rule take the only allowed port",
    deny,
    "both.example.com",
    false,
    "deny-rule",
    "both.example.com:443",
  ],
  [
    "answers when a deny rule takes only some allowed ports",
    deny,
    "some-ports.example",
    true,
    "allow-rule",
    "some-ports.example:443",
  ],
  [
    "lets a wildcard deny win over a wildcard allow",
    deny,
    "db.internal.corp.example",
    false,
    "deny-rule",
    "*.internal.corp.example",
  ],
  [
    "lets an exact deny win over a wildcard allow",
    deny,
    "blocked.corp.example",
    false,
    "deny-rule",
    "blocked.corp.example",
  ],
  [
    "answers a sibling of a denied name",
    deny,
    "ok.corp.example",
    true,
    "allow-rule",
    "*.corp.example",
  ],
  [
    "does not answer exfiltration lookups under default deny",
    deny,
    "c2VjcmV0.attacker.example",
    false,
    "default",
    "default: deny",
  ],
  [
    "does not answer an IP literal named by a rule",
    deny,
    "203.0.113.7",
    false,
    "invalid-host",
    "default: deny",
  ],
  [
    "does not answer a name with an empty label",
    deny,
    "a..example",
    false,
    "invalid-host",
    "default: deny",
  ],
  [
    "does not answer a name with an escaped dot in a label",
    deny,
    "api\\046example.com",
    false,
    "invalid-host",
    "default: deny",
  ],
  ["does not answer the root", deny, "", false, "invalid-host", "default: deny"],
  [
    "answers anything under default allow",
    allow,
    "anything.example",
    true,
    "default",
    "default: allow",
  ],
  [
    "lets a wildcard deny win under default allow",
    allow,
    "c2VjcmV0.attacker.example",
    false,
    "deny-rule",
    "*.attacker.example",
  ],
  [
    "lets an exact deny win under default allow",
    allow,
    "metadata.example",
    false,
    "deny-rule",
    "metadata.example",
  ],
  [
    "answers a host denied on one port only",
    allow,
    "web-only.example",
    true,
    "default",
    "default: allow",
  ],
  [
    "answers a host denied for some requests only",
    allow,
    "api.example.com",
    true,
    "default",
    "default: allow",
  ],
];

for (const [name, compiled, query, ok, code, rule] of cases) {
  Deno.test(`dnsAnswerable() ${name}`, () => {
    const v = dnsAnswerable(compiled, query);
    assertEquals({ ok: v.ok, code: v.code, rule: v.rule.source }, { ok, code, rule }, v.reason);
  });
}

Deno.test("dnsAnswerable() names the rule's file:line and the normalized name", () => {
  const v = dnsAnswerable(deny, "X.Internal.Corp.Example.");
  assertEquals(v.rule.at, "deny.yaml:16");
  assertEquals(v.name, "x.internal.corp.example");
  assertEquals(v.reason, 'x.internal.corp.example is denied by rule "*.internal.corp.example"');
  assertEquals(
    dnsAnswerable(deny, "nowhere.example").reason,
    "no allow rule matches nowhere.example, and the default is deny",
  );
});

Deno.test("dnsAnswerable() converts IDNs to punycode before matching", () => {
  const c =
    loadPolicyText("version: 1\nnetwork: { allow: [xn--bcher-kva.example] }\n", "p.yaml").compiled;
  assertEquals(dnsAnswerable(c, "Bücher.example").ok, true);
});
