/**
 * Validation tables: every error kind the policy language reports, with the
 * exact `file:line:col: path` it must point at.
 */
import { assert, assertEquals, assertMatch, assertThrows } from "../_assert.ts";
import { formatIssue, loadPolicyText, PolicyError } from "../../policy/mod.ts";

function issuesOf(text: string): string[] {
  try {
    const { warnings } = loadPolicyText(text, "p.yaml");
    return warnings.map(formatIssue);
  } catch (e) {
    if (!(e instanceof PolicyError)) throw e;
    return e.issues.map(formatIssue);
  }
}

const net = (rule: string) => `version: 1\nnetwork:\n  allow:\n    - ${rule}\n`;

/** [name, policy text, expected issue line (regex, anchored at the start)] */
const errors: [string, string, RegExp][] = [
  [
    "rejects an unknown top-level key with a suggestion",
    "version: 1\nnetwork: {}\nnetwrok: {}\n",
    /^p\.yaml:3:1: netwrok: unknown key "netwrok"; did you mean "network"\?/,
  ],
  [
    "rejects an unknown network key",
    "version: 1\nnetwork:\n  alow: [a.com]\n",
    /^p\.yaml:3:3: network\.alow: unknown key "alow"; did you mean "allow"\?/,
  ],
  ["requires a version", "network: {}\n", /^p\.yaml:1:1: the policy has no `version`/],
  [
    "rejects another version",
    "version: 2\nnetwork: {}\n",
    /^p\.yaml:1:10: version: unsupported version 2/,
  ],
  [
    "requires a network section",
    "version: 1\n",
    /^p\.yaml:1:1: network: the policy has no `network` section/,
  ],
  [
    "rejects a wildcard in a later label",
    net('"a.*.example.com"'),
    /^p\.yaml:4:7: network\.allow\[0\]: "a\.\*\.example\.com": a wildcard may only be the whole first label; use "\*\.a\.example\.com"/,
  ],
  [
    "rejects *.*.com with the fix",
    net('"*.*.com"'),
    /^p\.yaml:4:7: .*a wildcard may only be the whole first label; use "\*\.com"/,
  ],
  [
    "rejects port 0",
    net("example.com:0"),
    /^p\.yaml:4:7: network\.allow\[0\]: port 0 is out of range/,
  ],
  ["rejects port 65536", net("example.com:65536"), /^p\.yaml:4:7: .*port 65536 is out of range/],
  [
    "rejects a non-numeric port",
    net("example.com:https"),
    /^p\.yaml:4:7: .*"https" is not a port number/,
  ],
  ["rejects a CIDR with host bits set", net("10.20.0.1/16"), /^p\.yaml:4:7: .*host bits/],
  ["rejects a CIDR prefix out of range", net("10.0.0.0/33"), /^p\.yaml:4:7: network\.allow\[0\]: /],
  [
    "rejects a leading-zero IPv4",
    net("010.0.0.1"),
    /^p\.yaml:4:7: .*"010\.0\.0\.1" is not a valid IPv4 address/,
  ],
  [
    "rejects a CIDR with methods",
    net('"GET 10.0.0.0/8"'),
    /^p\.yaml:4:7: .*a CIDR rule cannot have methods or paths/,
  ],
  [
    "rejects spaces between methods",
    net('"GET, HEAD a.com/x"'),
    /^p\.yaml:4:7: .*separate methods with commas/,
  ],
  ["rejects * as a method", net('"* a.com/x"'), /^p\.yaml:4:7: .*"\*" is not a method/],
  [
    "rejects a path glob with ** inside a segment",
    net('"GET a.com/a**b"'),
    /^p\.yaml:4:7: network\.allow\[0\]: /,
  ],
  [
    "rejects a long form without host",
    "version: 1\nnetwork:\n  allow:\n    - ports: [443]\n",
    /^p\.yaml:4:7: network\.allow\[0\]: a long-form rule needs `host`/,
  ],
  [
    "rejects a port inside the long form's host",
    "version: 1\nnetwork:\n  allow:\n    - host: a.com:443\n",
    /^p\.yaml:4:13: network\.allow\[0\]\.host: put the port in "ports"/,
  ],
  [
    "points at the bad port in a long form",
    "version: 1\nnetwork:\n  allow:\n    - host: a.com\n      ports: [443, 0]\n",
    /^p\.yaml:5:20: network\.allow\[0\]\.ports\[1\]: port 0 is out of range/,
  ],
  [
    "suggests ports for port",
    "version: 1\nnetwork:\n  allow:\n    - host: a.com\n      port: 443\n",
    /^p\.yaml:5:7: network\.allow\[0\]\.port: unknown key "port"; did you mean "ports"\?/,
  ],
  [
    "rejects a bad default",
    "version: 1\nnetwork:\n  default: deby\n",
    /^p\.yaml:3:12: network\.default: expected one of deny \| allow, found "deby"; did you mean "deny"\?/,
  ],
  [
    "rejects HTTP rules on a passthrough host",
    "version: 1\nnetwork:\n  allow:\n    - GET a.com/x\ntls:\n  passthrough: [a.com]\n",
    /^p\.yaml:4:7: network\.allow\[0\]: "GET a\.com\/x" has methods or paths, but a\.com is in tls\.passthrough \(p\.yaml:6\)/,
  ],
  [
    "rejects HTTP rules when interception is off",
    "version: 1\nnetwork:\n  allow:\n    - GET a.com/x\ntls:\n  intercept: false\n",
    /^p\.yaml:4:7: .*need TLS interception, but tls\.intercept is false/,
  ],
  [
    "rejects a credential host the network denies",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  K:\n    from: env:K\n    hosts: [b.com]\n",
    /^p\.yaml:7:13: credentials\.K\.hosts: K may be sent to b\.com, but the network policy denies it/,
  ],
  [
    "rejects a credential host given as a CIDR",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  K:\n    from: env:K\n    hosts: [10.0.0.0/8]\n",
    /^p\.yaml:7:13: credentials\.K\.hosts\[0\]: a credential host cannot be a CIDR/,
  ],
  [
    "rejects a client_cert credential without a key",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  M:\n    kind: client_cert\n    cert: file:/c.pem\n    hosts: [a.com]\n",
    /^p\.yaml:5:3: credentials\.M: a client_cert credential needs `cert` and `key`/,
  ],
  [
    "rejects a placeholder field on a client_cert credential",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  M:\n    kind: client_cert\n    cert: file:/c.pem\n    key: file:/k.pem\n    in: [header]\n    hosts: [a.com]\n",
    /^p\.yaml:9:5: credentials\.M\.in: unknown key "in"; expected one of: kind, cert, key, hosts/,
  ],
  [
    "rejects an unknown credential kind, suggesting the nearest",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  M:\n    kind: client-cert\n    from: env:M\n    hosts: [a.com]\n",
    /^p\.yaml:6:11: credentials\.M\.kind: expected one of static \| oauth2 \| aws_sigv4 \| client_cert, found "client-cert"; did you mean "client_cert"\?/,
  ],
  [
    "rejects an oauth2 credential without a token_url",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  O:\n    kind: oauth2\n    refresh_token: env:RT\n    hosts: [a.com]\n",
    /^p\.yaml:5:3: credentials\.O: an oauth2 credential needs `token_url`/,
  ],
  [
    "rejects a token endpoint over plain http",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  O:\n    kind: oauth2\n    token_url: http://a.com/token\n    refresh_token: env:RT\n    hosts: [a.com]\n",
    /^p\.yaml:7:16: credentials\.O\.token_url: the token endpoint must be https, not http/,
  ],
  [
    "rejects a client_credentials grant without a client secret",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  O:\n    kind: oauth2\n    token_url: https://a.com/token\n    grant: client_credentials\n    client_id: app\n    hosts: [a.com]\n",
    /^p\.yaml:5:3: credentials\.O: the client_credentials grant needs `client_secret`/,
  ],
  [
    "rejects a token endpoint the network denies",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  O:\n    kind: oauth2\n    token_url: https://auth.b.com/token\n    refresh_token: env:RT\n    hosts: [a.com]\n",
    /^p\.yaml:7:16: credentials\.O\.token_url: sluice must reach O's token endpoint auth\.b\.com, but the network policy denies it/,
  ],
  [
    "rejects `from` on an oauth2 credential",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  O:\n    kind: oauth2\n    token_url: https://a.com/token\n    refresh_token: env:RT\n    from: env:O\n    hosts: [a.com]\n",
    /^p\.yaml:9:5: credentials\.O\.from: unknown key "from"/,
  ],
  [
    "says an oauth2 field needs kind: oauth2",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  O:\n    from: env:O\n    token_url: https://a.com/token\n    hosts: [a.com]\n",
    /^p\.yaml:7:5: credentials\.O\.token_url: unknown key "token_url"; `token_url` belongs to oauth2 credentials: add `kind: oauth2`/,
  ],
  [
    "rejects an unknown oauth2 grant",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  O:\n    kind: oauth2\n    token_url: https://a.com/token\n    grant: password\n    hosts: [a.com]\n",
    /^p\.yaml:8:12: credentials\.O\.grant: expected one of refresh_token \| client_credentials \| jwt_bearer, found "password"/,
  ],
  [
    "rejects an aws_sigv4 credential without a secret key",
    "version: 1\nnetwork:\n  allow: [s3.test]\ncredentials:\n  AWS:\n    kind: aws_sigv4\n    access_key_id: env:K\n    hosts: [s3.test]\n",
    /^p\.yaml:5:3: credentials\.AWS: an aws_sigv4 credential needs `access_key_id` and `secret_access_key`/,
  ],
  [
    "rejects a placeholder field on an aws_sigv4 credential",
    "version: 1\nnetwork:\n  allow: [s3.test]\ncredentials:\n  AWS:\n    kind: aws_sigv4\n    access_key_id: env:K\n    secret_access_key: env:S\n    in: [header]\n    hosts: [s3.test]\n",
    /^p\.yaml:9:5: credentials\.AWS\.in: unknown key "in"/,
  ],
  [
    "rejects a client_cert host the network denies",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  M:\n    kind: client_cert\n    cert: file:/c.pem\n    key: file:/k.pem\n    hosts: [b.com]\n",
    /^p\.yaml:9:13: credentials\.M\.hosts: M may be sent to b\.com, but the network policy denies it/,
  ],
  [
    "rejects duplicate credential names",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  K:\n    from: env:K\n    hosts: [a.com]\n  K:\n    from: env:K\n    hosts: [a.com]\n",
    /^p\.yaml:8:3: Map keys must be unique \(a key, such as a credential name, appears twice\)/,
  ],
  [
    "rejects duplicate placeholders",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  K:\n    from: env:K\n    hosts: [a.com]\n    placeholder: same-placeholder\n  L:\n    from: env:L\n    hosts: [a.com]\n    placeholder: same-placeholder\n",
    /^p\.yaml:9:3: credentials\.L\.placeholder: the placeholder is the same as credential K's/,
  ],
  [
    "rejects a placeholder inside another",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  K:\n    from: env:K\n    hosts: [a.com]\n    placeholder: placeholder\n  L:\n    from: env:L\n    hosts: [a.com]\n    placeholder: placeholder-long\n",
    /^p\.yaml:9:3: credentials\.L\.placeholder: the placeholder contains credential K's/,
  ],
  [
    "rejects a short placeholder",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  K:\n    from: env:K\n    hosts: [a.com]\n    placeholder: abc\n",
    /^p\.yaml:8:18: credentials\.K\.placeholder: the placeholder is 3 characters long/,
  ],
  [
    "rejects an inject template without ${secret}",
    'version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  K:\n    from: env:K\n    hosts: [a.com]\n    inject: { header: Authorization, value: "Bearer x" }\n',
    /^p\.yaml:8:45: credentials\.K\.inject\.value: the inject template has no \$\{secret\}/,
  ],
  [
    "rejects injecting a framing header",
    'version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  K:\n    from: env:K\n    hosts: [a.com]\n    inject: { header: Content-Length, value: "${secret}" }\n',
    /^p\.yaml:8:23: .*will not inject "Content-Length"/,
  ],
  [
    "rejects an unknown credential source",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  K:\n    from: enviro:K\n    hosts: [a.com]\n",
    /^p\.yaml:6:11: credentials\.K\.from: unknown credential source "enviro:K"/,
  ],
  [
    "rejects a relative file source",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  K:\n    from: file:secret.txt\n    hosts: [a.com]\n",
    /^p\.yaml:6:11: .*not an absolute path/,
  ],
  [
    "rejects a credential without hosts",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  K:\n    from: env:K\n",
    /^p\.yaml:5:3: credentials\.K: the credential has no `hosts`/,
  ],
  [
    "rejects a bad credential name",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  my-key:\n    from: env:K\n    hosts: [a.com]\n",
    /^p\.yaml:5:3: credentials\.my-key: "my-key" is not a valid credential name/,
  ],
  [
    "rejects a tls.ca with only a cert",
    "version: 1\nnetwork: {}\ntls:\n  ca: { cert: /etc/ca.crt }\n",
    /^p\.yaml:4:7: tls\.ca: tls\.ca needs both `cert` and `key` \(only `cert` is set\)/,
  ],
  [
    "rejects a listen port used twice",
    "version: 1\nnetwork: {}\nlisten:\n  proxy: 127.0.0.1:3128\n  admin: 127.0.0.1:3128\n",
    /^p\.yaml:5:10: listen\.admin: port 3128 is also used by listen\.proxy/,
  ],
  [
    "rejects a bad listen address",
    "version: 1\nnetwork: {}\nlisten:\n  proxy: localhost\n",
    /^p\.yaml:4:10: listen\.proxy: "localhost" is not a listen address/,
  ],
  [
    "rejects a bad enforce backend",
    "version: 1\nnetwork: {}\nenforce:\n  backend: nft\n",
    /^p\.yaml:4:12: enforce\.backend: expected one of auto \| nftables \| iptables \| none/,
  ],
  [
    "rejects a relative audit log path",
    "version: 1\nnetwork: {}\naudit:\n  log: audit.log\n",
    /^p\.yaml:4:8: audit\.log: "audit\.log" is not stderr, stdout or an absolute path/,
  ],
  [
    "reports YAML syntax errors with a position",
    "version: 1\nnetwork:\n  allow: [a.com\n",
    /^p\.yaml:\d+:\d+: YAML syntax: /,
  ],
  [
    "rejects two documents",
    "version: 1\nnetwork: {}\n---\nversion: 1\n",
    /^p\.yaml:3:1: a policy file holds exactly one YAML document/,
  ],
  ["rejects an empty file", "", /^p\.yaml:1:1: the policy is empty/],
  [
    "rejects a list where a map belongs",
    "version: 1\nnetwork: [a.com]\n",
    /^p\.yaml:2:10: network: expected a mapping/,
  ],
];
for (const [name, text, want] of errors) {
  Deno.test(`loadPolicyText() ${name}`, () => {
    const issues = issuesOf(text);
    assert(
      issues.some((i) => want.test(i)),
      `no issue matched ${want}; got:\n${issues.join("\n")}`,
    );
  });
}

/** Warnings load the policy but are reported. */
const warnings: [string, string, RegExp][] = [
  [
    "warns about an unusual method",
    net('"GTE a.com/x"'),
    /warning: network\.allow\[0\]: "GTE" is not a standard HTTP method; did you mean GET\?/,
  ],
  [
    "warns when a credential host is passed through",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  K:\n    from: env:K\n    hosts: [a.com]\ntls:\n  passthrough: [a.com]\n",
    /^p\.yaml:7:13: warning: credentials\.K\.hosts: a\.com is also in tls\.passthrough/,
  ],
  [
    "warns when a client_cert host is passed through",
    "version: 1\nnetwork:\n  allow: [a.com]\ncredentials:\n  M:\n    kind: client_cert\n    cert: file:/c.pem\n    key: file:/k.pem\n    hosts: [a.com]\ntls:\n  passthrough: [a.com]\n",
    /^p\.yaml:9:13: warning: credentials\.M\.hosts: a\.com is also in tls\.passthrough: the client's own TLS goes through there, so sluice never presents M/,
  ],
];
for (const [name, text, want] of warnings) {
  Deno.test(`loadPolicyText() ${name}`, () => {
    const { warnings } = loadPolicyText(text, "p.yaml");
    const lines = warnings.map(formatIssue);
    assert(
      lines.some((l) => want.test(l)),
      `no warning matched ${want}; got:\n${lines.join("\n")}`,
    );
  });
}

Deno.test("loadPolicyText() reports every error at once", () => {
  const text =
    "version: 1\nnetwork:\n  allow:\n    - a.*.com\n    - b.com:0\n    - 10.0.0.1/8\n  deby: []\n";
  const e = assertThrows(() => loadPolicyText(text, "p.yaml"), PolicyError);
  const lines = e.issues.map(formatIssue);
  assertEquals(lines.length, 4, lines.join("\n"));
  assertMatch(e.message, /^Cannot load policy: 4 errors\n/);
});

Deno.test("loadPolicyText() reads the JSON form with positions", () => {
  const text = '{\n  "version": 1,\n  "network": {\n    "allow": ["a.com:99999"]\n  }\n}\n';
  const issues = issuesOf(text);
  assert(
    issues.some((i) => /^p\.yaml:4:15: network\.allow\[0\]: port 99999 is out of range/.test(i)),
    issues.join("\n"),
  );
});

Deno.test("loadPolicyText() normalizes hosts, IPv6 and paths at load", () => {
  const { compiled } = loadPolicyText(
    'version: 1\nnetwork:\n  allow:\n    - "Bücher.Example.:443"\n    - "[2001:DB8:0:0::1]:8443"\n    - "GET a.com/x/./y/%7euser/**"\n',
    "p.yaml",
  );
  assertEquals(compiled.policy.network.allow.map((r) => r.source), [
    "xn--bcher-kva.example:443",
    "[2001:db8::1]:8443",
    "GET a.com/x/y/~user/**",
  ]);
});
