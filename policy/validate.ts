/**
 * Validation: turns a located YAML/JSON tree into a normalized `Policy`,
 * collecting every problem at once (never stopping at the first).
 *
 * Unknown keys are errors (with "did you mean"): a misspelt `deny:` silently
 * ignored would be a hole in the policy, so anything unrecognised is refused.
 *
 * Why one file of ~1,050 lines: one pass over the located tree that reports every problem at once
 * with its file:line:col; each section's checks are a function here, in the policy's order.
 *
 * @module
 */
import { closest, type Loc, type PolicyIssue } from "./errors.ts";
import { hostMatches, type HostPattern, parseHostPattern } from "./host.ts";
import {
  formatRule,
  type LongFormField,
  parseDestination,
  parseLongRule,
  parsePort,
  parseRuleString,
  type RuleProblem,
} from "./rules.ts";
import type { MapEntry, SourceNode } from "./source.ts";
import type {
  ClientCert,
  Credential,
  CredentialHost,
  CredentialPlace,
  CredentialSource,
  Endpoint,
  LocatedPattern,
  NetRule,
  OAuth2Spec,
  Policy,
  UpstreamHostTls,
} from "./types.ts";

type Scalar = string | number | boolean | null;

/** Collects issues and offers typed accessors that report wrong shapes. */
class Reader {
  readonly issues: PolicyIssue[] = [];

  error(node: { loc: Loc; path: string }, message: string, hint?: string): void {
    this.issues.push({ severity: "error", loc: node.loc, path: node.path, message, hint });
  }

  warn(node: { loc: Loc; path: string }, message: string, hint?: string): void {
    this.issues.push({ severity: "warning", loc: node.loc, path: node.path, message, hint });
  }

  /** The entries of a map node, with unknown keys reported. */
  map(node: SourceNode, known: readonly string[]): Map<string, SourceNode> | undefined {
    if (node.kind !== "map") {
      this.error(node, `expected a mapping (key: value), found ${describe(node)}`);
      return undefined;
    }
    const out = new Map<string, SourceNode>();
    for (const e of node.entries) {
      if (!known.includes(e.key)) this.unknownKey(node, e, known);
      else out.set(e.key, e.value);
    }
    return out;
  }

  unknownKey(parent: SourceNode, e: MapEntry, known: readonly string[]): void {
    const near = closest(e.key, known);
    const path = parent.path ? `${parent.path}.${e.key}` : e.key;
    this.issues.push({
      severity: "error",
      loc: e.keyLoc,
      path,
      message: `unknown key "${e.key}"`,
      hint: near ? `did you mean "${near}"?` : `expected one of: ${known.join(", ")}`,
    });
  }

  seq(node: SourceNode | undefined): SourceNode[] {
    if (!node || (node.kind === "scalar" && node.value === null)) return [];
    if (node.kind !== "seq") {
      this.error(
        node,
        `expected a list, found ${describe(node)}`,
        "write [a, b] or one `- item` per line",
      );
      return [];
    }
    return node.items;
  }

  string(node: SourceNode | undefined): string | undefined {
    if (!node) return undefined;
    if (node.kind !== "scalar" || node.value === null || typeof node.value === "boolean") {
      this.error(node, `expected a string, found ${describe(node)}`);
      return undefined;
    }
    return String(node.value);
  }

  bool(node: SourceNode | undefined): boolean | undefined {
    if (!node) return undefined;
    if (node.kind !== "scalar" || typeof node.value !== "boolean") {
      this.error(node, `expected true or false, found ${describe(node)}`);
      return undefined;
    }
    return node.value;
  }

  oneOf<T extends string>(node: SourceNode | undefined, options: readonly T[]): T | undefined {
    if (!node) return undefined;
    const s = node.kind === "scalar" ? String(node.value) : undefined;
    if (s === undefined || !options.includes(s as T)) {
      const near = s !== undefined ? closest(s, options) : undefined;
      this.error(
        node,
        `expected one of ${options.join(" | ")}, found ${describe(node)}`,
        near ? `did you mean "${near}"?` : undefined,
      );
      return undefined;
    }
    return s as T;
  }

  port(node: SourceNode): number | undefined {
    const v =
      node.kind === "scalar" && (typeof node.value === "number" || typeof node.value === "string")
        ? node.value
        : undefined;
    if (v === undefined) {
      this.error(node, `expected a port number, found ${describe(node)}`);
      return undefined;
    }
    const p = parsePort(v);
    if (typeof p !== "number") {
      this.error(node, p.message, p.hint);
      return undefined;
    }
    return p;
  }

  problem(node: { loc: Loc; path: string }, p: RuleProblem): void {
    if (p.severity === "warning") this.warn(node, p.message, p.hint);
    else this.error(node, p.message, p.hint);
  }
}

function describe(node: SourceNode): string {
  if (node.kind === "map") return "a mapping";
  if (node.kind === "seq") return "a list";
  if (node.value === null) return "nothing";
  return typeof node.value === "string" ? `"${node.value}"` : String(node.value);
}

const TOP_KEYS = [
  "version",
  "network",
  "credentials",
  "tls",
  "listen",
  "enforce",
  "audit",
] as const;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Headers that describe the connection or message framing: injecting them would corrupt the request. */
const FORBIDDEN_INJECT = [
  "host",
  "content-length",
  "transfer-encoding",
  "connection",
  "upgrade",
  "te",
  "trailer",
  "keep-alive",
  "proxy-connection",
];
const PLACES: readonly CredentialPlace[] = ["header", "query", "path", "body"];
/**
 * Credential kinds: `static` (a placeholder substituted by a value from a source), `oauth2` (a
 * placeholder substituted by an access token sluice mints), `aws_sigv4` (requests signed with
 * placeholder keys re-signed with the real ones), `client_cert` (presented in mTLS).
 */
const CREDENTIAL_KINDS = ["static", "oauth2", "aws_sigv4", "client_cert"] as const;

/** The fields of a `kind: oauth2` credential beyond those it shares with a static one. */
const OAUTH2_FIELDS = [
  "token_url",
  "grant",
  "client_id",
  "client_secret",
  "refresh_token",
  "key",
  "issuer",
  "subject",
  "audience",
  "scope",
  "client_auth",
] as const;
const OAUTH2_GRANTS = ["refresh_token", "client_credentials", "jwt_bearer"] as const;
const ON_VIOLATION = ["block", "block_and_terminate"] as const;
const MIN_PLACEHOLDER = 8;

/**
 * Validates a located tree into a normalized `Policy`.
 *
 * @param root the document root from `readPolicySource`
 * @param file the file name used in locations
 * @returns the policy (only meaningful when no issue is an error) and every issue found
 */
export function validatePolicy(
  root: SourceNode,
  file: string,
): { policy: Policy; issues: PolicyIssue[] } {
  const r = new Reader();
  const top = r.map(root, TOP_KEYS) ?? new Map<string, SourceNode>();

  const version = top.get("version");
  if (!version) {
    r.error(root, "the policy has no `version`", "add `version: 1` as the first line");
  } else if (!(version.kind === "scalar" && (version.value === 1 || version.value === "1"))) {
    r.error(version, `unsupported version ${describe(version)}`, "this sluice reads `version: 1`");
  }

  const network = readNetwork(r, top.get("network"), root.loc);
  const tls = readTls(r, top.get("tls"));
  const { credentials, clientCerts } = readCredentials(r, top.get("credentials"));
  const listen = readListen(r, top.get("listen"));
  const enforce = readEnforce(r, top.get("enforce"));
  const audit = readAudit(r, top.get("audit"));

  const policy: Policy = {
    file,
    version: 1,
    network,
    credentials,
    clientCerts,
    tls,
    listen,
    enforce,
    audit,
  };
  crossCheck(r, policy);
  return { policy, issues: r.issues };
}

function readNetwork(r: Reader, node: SourceNode | undefined, rootLoc: Loc): Policy["network"] {
  const out: Policy["network"] = { default: "deny", allow: [], deny: [], private: "deny" };
  if (!node) {
    r.error(
      { loc: rootLoc, path: "network" },
      "the policy has no `network` section",
      "add `network: { default: deny, allow: [...] }`",
    );
    return out;
  }
  const m = r.map(node, ["default", "allow", "deny", "private"]);
  if (!m) return out;
  const def = m.get("default");
  out.default = r.oneOf(def, ["deny", "allow"] as const) ?? "deny";
  out.defaultLoc = def?.loc;
  const priv = m.get("private");
  out.private = r.oneOf(priv, ["deny", "allow"] as const) ?? "deny";
  out.privateLoc = priv?.loc;
  let id = 0;
  const rules: NetRule[] = [];
  for (const list of ["allow", "deny"] as const) {
    r.seq(m.get(list)).forEach((item, index) => {
      const rule = readRule(r, item);
      if (rule) {
        rules.push({ ...rule, list, index, source: formatRule(rule), loc: item.loc, id: 0 });
      }
    });
  }
  // Ids follow file order so "the first rule that matches" means what the user reads.
  rules.sort((a, b) => a.loc.line - b.loc.line || a.loc.col - b.loc.col);
  for (const rule of rules) rule.id = id++;
  out.allow = rules.filter((x) => x.list === "allow");
  out.deny = rules.filter((x) => x.list === "deny");
  return out;
}

function readRule(r: Reader, item: SourceNode) {
  if (item.kind === "scalar") {
    const text = item.value === null ? "" : String(item.value);
    const problems: RuleProblem[] = [];
    const rule = parseRuleString(text, problems);
    problems.forEach((p) => r.problem(item, p));
    return rule;
  }
  const m = r.map(item, ["host", "ports", "methods", "paths"]);
  if (!m) return undefined;
  const hostNode = m.get("host");
  const host = r.string(hostNode);
  if (!hostNode) r.error(item, "a long-form rule needs `host`", "e.g. host: uploads.example.com");
  if (host === undefined) return undefined;
  const list = (key: LongFormField) => {
    const n = m.get(key);
    if (!n) return undefined;
    // `ports: 443` and `methods: GET` are forgiven as one-element lists.
    const items = n.kind === "scalar" ? [n] : r.seq(n);
    return items.map((i) => (i.kind === "scalar" ? i.value : null))
      .map((v) => (v === null ? "" : v)) as (string | number)[];
  };
  const problems: Array<RuleProblem & { field: LongFormField; index?: number }> = [];
  const rule = parseLongRule(
    {
      host,
      ports: list("ports"),
      methods: list("methods")?.map(String),
      paths: list("paths")?.map(String),
    },
    problems,
  );
  for (const p of problems) {
    const fieldNode = m.get(p.field) ?? item;
    const at = fieldNode.kind === "seq" && p.index !== undefined
      ? fieldNode.items[p.index] ?? fieldNode
      : fieldNode;
    r.problem(at, p);
  }
  return rule;
}

function readPatterns(r: Reader, node: SourceNode | undefined, what: string): LocatedPattern[] {
  const out: LocatedPattern[] = [];
  for (const item of r.seq(node)) {
    const s = r.string(item);
    if (s === undefined) continue;
    const p = parseHostPattern(s.trim());
    if (!p.ok) r.error(item, `${what}: ${p.message}`, p.hint);
    else out.push({ pattern: p.value, source: s, loc: item.loc });
  }
  return out;
}

function readPaths(r: Reader, node: SourceNode | undefined): string[] {
  const out: string[] = [];
  for (const item of r.seq(node)) {
    const s = r.string(item);
    if (s === undefined) continue;
    if (!s.startsWith("/")) {
      r.error(item, `"${s}" is not an absolute path`, "write the full path, starting with /");
    } else out.push(s);
  }
  return out;
}

function readTls(r: Reader, node: SourceNode | undefined): Policy["tls"] {
  const out: Policy["tls"] = {
    intercept: true,
    passthrough: [],
    upstream: { verify: true, ca: [], hosts: [] },
  };
  if (!node) return out;
  const m = r.map(node, ["intercept", "passthrough", "ca", "upstream"]);
  if (!m) return out;
  out.intercept = r.bool(m.get("intercept")) ?? true;
  out.passthrough = readPatterns(r, m.get("passthrough"), "passthrough host");
  const caNode = m.get("ca");
  if (caNode) {
    const ca = r.map(caNode, ["cert", "key"]);
    if (ca) {
      const cert = r.string(ca.get("cert"));
      const key = r.string(ca.get("key"));
      if (!ca.get("cert") || !ca.get("key")) {
        r.error(
          caNode,
          `tls.ca needs both \`cert\` and \`key\` (only \`${
            ca.get("cert") ? "cert" : "key"
          }\` is set)`,
          "give both paths, or remove tls.ca to let sluice generate its own CA",
        );
      } else if (cert !== undefined && key !== undefined) {
        for (const [k, v] of [["cert", cert], ["key", key]] as const) {
          if (!v.startsWith("/")) {
            r.error(
              ca.get(k)!,
              `"${v}" is not an absolute path`,
              "write the full path, starting with /",
            );
          }
        }
        out.ca = { cert, key };
      }
    }
  }
  const upNode = m.get("upstream");
  if (upNode) {
    const up = r.map(upNode, ["verify", "ca", "hosts"]);
    if (up) {
      out.upstream.verify = r.bool(up.get("verify")) ?? true;
      out.upstream.ca = readPaths(r, up.get("ca"));
      const hosts: UpstreamHostTls[] = [];
      for (const item of r.seq(up.get("hosts"))) {
        const h = r.map(item, ["match", "ca", "verify"]);
        if (!h) continue;
        const matchNode = h.get("match");
        const match = r.string(matchNode);
        if (!matchNode) {
          r.error(
            item,
            "an upstream host entry needs `match`",
            `e.g. { match: "*.corp.example", ca: [...] }`,
          );
          continue;
        }
        if (match === undefined) continue;
        const p = parseHostPattern(match);
        if (!p.ok) {
          r.error(matchNode, p.message, p.hint);
          continue;
        }
        const verify = r.bool(h.get("verify"));
        const ca = readPaths(r, h.get("ca"));
        if (verify === false && ca.length > 0) {
          r.warn(item, "`ca` is ignored when `verify: false`", "remove one of the two");
        }
        if (verify === undefined && ca.length === 0) {
          r.warn(item, "this entry changes nothing", "set `ca:` or `verify:`");
        }
        hosts.push({ match: p.value, ca, verify, loc: item.loc });
      }
      out.upstream.hosts = hosts;
    }
  }
  return out;
}

function readCredentials(
  r: Reader,
  node: SourceNode | undefined,
): { credentials: Credential[]; clientCerts: ClientCert[] } {
  const clientCerts: ClientCert[] = [];
  if (!node || (node.kind === "scalar" && node.value === null)) {
    return { credentials: [], clientCerts };
  }
  if (node.kind !== "map") {
    r.error(
      node,
      `expected a mapping of credential names, found ${describe(node)}`,
      "write `credentials: { NAME: { from: ..., hosts: [...] } }`",
    );
    return { credentials: [], clientCerts };
  }
  const out: Credential[] = [];
  for (const e of node.entries) {
    const at = { loc: e.keyLoc, path: `credentials.${e.key}` };
    if (!ENV_NAME.test(e.key)) {
      r.error(
        at,
        `"${e.key}" is not a valid credential name`,
        "use an environment variable name: letters, digits and _, not starting with a digit",
      );
    }
    const kindNode = e.value.kind === "map"
      ? e.value.entries.find((x) => x.key === "kind")?.value
      : undefined;
    const kind = kindNode ? r.oneOf(kindNode, CREDENTIAL_KINDS) : "static";
    if (kind === undefined) continue;
    if (kind === "client_cert") {
      const m = r.map(e.value, ["kind", "cert", "key", "hosts"]);
      if (!m) continue;
      const certNode = m.get("cert");
      const keyNode = m.get("key");
      const cert = readSource(r, certNode);
      const key = readSource(r, keyNode);
      if (!certNode || !keyNode) {
        r.error(
          at,
          `a client_cert credential needs \`cert\` and \`key\``,
          "e.g. cert: file:/etc/sluice/client.crt, key: credential:client.key",
        );
      }
      const hosts = readCredentialHosts(r, m.get("hosts"), at, e.key);
      if (cert && key) clientCerts.push({ name: e.key, loc: e.keyLoc, cert, key, hosts });
      continue;
    }
    if (kind === "aws_sigv4") {
      const m = r.map(e.value, [
        "kind",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "hosts",
        "on_violation",
      ]);
      if (!m) continue;
      const accessKeyId = readSource(r, m.get("access_key_id"));
      const secretAccessKey = readSource(r, m.get("secret_access_key"));
      const sessionToken = readSource(r, m.get("session_token"));
      if (!m.has("access_key_id") || !m.has("secret_access_key")) {
        r.error(
          at,
          "an aws_sigv4 credential needs `access_key_id` and `secret_access_key`",
          "e.g. access_key_id: env:REAL_AWS_ACCESS_KEY_ID, secret_access_key: credential:aws-secret",
        );
      }
      const hosts = readCredentialHosts(r, m.get("hosts"), at, e.key);
      const onViolation = r.oneOf(m.get("on_violation"), ON_VIOLATION) ?? "block";
      if (accessKeyId && secretAccessKey) {
        out.push({
          name: e.key,
          loc: e.keyLoc,
          kind,
          from: null,
          sigv4: { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) },
          hosts,
          // Nothing is substituted as a string: requests are re-signed (lib/credentials/sigv4.ts).
          in: [],
          onViolation,
        });
      }
      continue;
    }
    const shared = ["kind", "hosts", "placeholder", "in", "inject", "on_violation"];
    const m = r.map(
      e.value,
      kind === "oauth2" ? [...shared, ...OAUTH2_FIELDS] : [...shared, "from"],
    );
    if (!m) continue;
    if (kind === "static") {
      // An oauth2 field on a credential without `kind`: say which kind it belongs to.
      for (const issue of r.issues) {
        const field = issue.path.slice(`credentials.${e.key}.`.length);
        if (
          issue.path.startsWith(`credentials.${e.key}.`) &&
          (OAUTH2_FIELDS as readonly string[]).includes(field)
        ) issue.hint = `\`${field}\` belongs to oauth2 credentials: add \`kind: oauth2\``;
      }
    }
    let from: CredentialSource | null | undefined = null;
    let oauth2: OAuth2Spec | undefined;
    if (kind === "oauth2") {
      oauth2 = readOAuth2(r, m, at);
    } else {
      const fromNode = m.get("from");
      from = readSource(r, fromNode);
      if (!fromNode) r.error(at, "the credential has no `from`", "e.g. from: env:NPM_TOKEN");
    }
    const hosts = readCredentialHosts(r, m.get("hosts"), at, e.key);
    const phNode = m.get("placeholder");
    const placeholder = r.string(phNode);
    if (phNode && placeholder !== undefined) {
      if (placeholder.length < MIN_PLACEHOLDER) {
        r.error(
          phNode,
          `the placeholder is ${placeholder.length} characters long; at least ${MIN_PLACEHOLDER} are needed`,
          "a short placeholder could match ordinary request data; leave it out to get a generated one",
        );
      } else if (!/^[\x21-\x7e]+$/.test(placeholder)) {
        r.error(
          phNode,
          "the placeholder may hold only printable ASCII without spaces",
          "use letters, digits and - _",
        );
      }
    }
    const inNode = m.get("in");
    let places: CredentialPlace[] = ["header", "query"];
    if (inNode) {
      places = [];
      const items = inNode.kind === "scalar" ? [inNode] : r.seq(inNode);
      for (const item of items) {
        const p = r.oneOf(item, PLACES);
        if (p && !places.includes(p)) places.push(p);
      }
    }
    let inject: Credential["inject"];
    const injNode = m.get("inject");
    if (injNode) {
      const inj = r.map(injNode, ["header", "value"]);
      if (inj) {
        const header = r.string(inj.get("header"));
        const value = r.string(inj.get("value"));
        if (!inj.get("header") || !inj.get("value")) {
          r.error(
            injNode,
            "inject needs `header` and `value`",
            `e.g. { header: Authorization, value: "Bearer \${secret}" }`,
          );
        }
        if (header !== undefined) {
          if (!HEADER_NAME.test(header)) {
            r.error(inj.get("header")!, `"${header}" is not a valid header name`);
          } else if (FORBIDDEN_INJECT.includes(header.toLowerCase())) {
            r.error(
              inj.get("header")!,
              `sluice will not inject "${header}": it controls the connection or message framing`,
            );
          }
        }
        if (value !== undefined) {
          const refs = [...value.matchAll(/\$\{([^}]*)\}/g)].map((x) => x[1]);
          if (!refs.includes("secret")) {
            r.error(
              inj.get("value")!,
              "the inject template has no ${secret}",
              `write where the real value goes, e.g. "Bearer \${secret}"`,
            );
          }
          for (const ref of refs.filter((x) => x !== "secret")) {
            r.error(
              inj.get("value")!,
              `unknown template variable \${${ref}}`,
              "only ${secret} is available",
            );
          }
        }
        if (header !== undefined && value !== undefined) inject = { header, value };
      }
    }
    if (inNode && places.length === 0 && !inject) {
      r.warn(
        inNode,
        "with an empty `in` and no `inject`, this credential is never used",
        "list where placeholders appear, e.g. in: [header]",
      );
    }
    const onViolation = r.oneOf(m.get("on_violation"), ON_VIOLATION) ?? "block";
    if (kind === "oauth2" ? oauth2 : from) {
      out.push({
        name: e.key,
        loc: e.keyLoc,
        kind,
        from: from ?? null,
        ...(oauth2 ? { oauth2 } : {}),
        hosts,
        placeholder,
        in: places,
        inject,
        onViolation,
      });
    }
  }
  // Placeholders must be unambiguous: neither equal nor one inside another,
  // or a scan could not tell which credential a match belongs to.
  const fixed = out.filter((c) => c.placeholder !== undefined);
  for (let i = 0; i < fixed.length; i++) {
    for (let j = 0; j < fixed.length; j++) {
      if (i === j) continue;
      const a = fixed[i], b = fixed[j];
      if (a.placeholder === b.placeholder ? i < j : b.placeholder!.includes(a.placeholder!)) {
        const entry = node.entries.find((x) => x.key === b.name)!;
        r.error(
          { loc: entry.keyLoc, path: `credentials.${b.name}.placeholder` },
          a.placeholder === b.placeholder
            ? `the placeholder is the same as credential ${a.name}'s`
            : `the placeholder contains credential ${a.name}'s placeholder`,
          "every credential needs its own distinct placeholder",
        );
      }
    }
  }
  return { credentials: out, clientCerts };
}

/**
 * The token endpoint and grant of a `kind: oauth2` credential. The grant defaults to what the
 * material given implies: a refresh token, else a key (JWT bearer), else client credentials.
 */
function readOAuth2(
  r: Reader,
  m: Map<string, SourceNode>,
  at: { loc: Loc; path: string },
): OAuth2Spec | undefined {
  const urlNode = m.get("token_url");
  const url = r.string(urlNode);
  let tokenUrl: string | undefined;
  if (!urlNode) {
    r.error(
      at,
      "an oauth2 credential needs `token_url`",
      "e.g. token_url: https://oauth2.googleapis.com/token",
    );
  } else if (url !== undefined) {
    let u: URL | undefined;
    try {
      u = new URL(url);
    } catch {
      r.error(urlNode, `"${url}" is not a URL`, "write the token endpoint as https://host/path");
    }
    if (u && u.protocol !== "https:") {
      r.error(
        urlNode,
        `the token endpoint must be https, not ${u.protocol.slice(0, -1)}`,
        "sluice sends the client secret and refresh token only over TLS",
      );
    } else if (u && (u.username || u.password || u.hash)) {
      r.error(urlNode, "the token URL may not hold credentials or a fragment");
    } else if (u) tokenUrl = u.href;
  }
  const clientSecret = readSource(r, m.get("client_secret"));
  const refreshToken = readSource(r, m.get("refresh_token"));
  const key = readSource(r, m.get("key"));
  const grantNode = m.get("grant");
  const grant = grantNode
    ? r.oneOf(grantNode, OAUTH2_GRANTS)
    : m.has("refresh_token")
    ? "refresh_token"
    : m.has("key")
    ? "jwt_bearer"
    : "client_credentials";
  const clientId = r.string(m.get("client_id"));
  const needs: Record<typeof OAUTH2_GRANTS[number], string[]> = {
    refresh_token: ["refresh_token"],
    client_credentials: ["client_id", "client_secret"],
    jwt_bearer: ["key"],
  };
  for (const field of grant ? needs[grant] : []) {
    if (!m.has(field)) {
      r.error(
        at,
        `the ${grant} grant needs \`${field}\``,
        field === "key"
          ? "key: file:/etc/sluice/service-account.json (or a PEM RSA key with issuer:)"
          : `e.g. ${field}: credential:${field.replace("_", "-")}`,
      );
    }
  }
  const clientAuth = r.oneOf(m.get("client_auth"), ["basic", "body"] as const) ?? "basic";
  if (!grant || !tokenUrl) return undefined;
  return {
    tokenUrl,
    tokenUrlLoc: urlNode!.loc,
    grant,
    ...(clientId !== undefined ? { clientId } : {}),
    ...(clientSecret ? { clientSecret } : {}),
    ...(refreshToken ? { refreshToken } : {}),
    ...(key ? { key } : {}),
    ...(m.has("issuer") ? { issuer: r.string(m.get("issuer")) } : {}),
    ...(m.has("subject") ? { subject: r.string(m.get("subject")) } : {}),
    ...(m.has("audience") ? { audience: r.string(m.get("audience")) } : {}),
    ...(m.has("scope") ? { scope: r.string(m.get("scope")) } : {}),
    clientAuth,
  };
}

/** A credential's `hosts`: names, wildcards or IP literals, each with an optional port. */
function readCredentialHosts(
  r: Reader,
  hostsNode: SourceNode | undefined,
  at: { loc: Loc; path: string },
  name: string,
): CredentialHost[] {
  const hosts: CredentialHost[] = [];
  for (const item of r.seq(hostsNode)) {
    const s = r.string(item);
    if (s === undefined) continue;
    const d = parseDestination(s.trim());
    if ("message" in d) {
      r.error(item, d.message, d.hint);
    } else if (d.target.kind === "cidr") {
      r.error(
        item,
        "a credential host cannot be a CIDR",
        "name the exact hosts the secret is for: a range would send it to any machine there",
      );
    } else {
      const pattern: HostPattern = d.target.kind === "host"
        ? d.target.pattern
        : { kind: "exact", name: d.target.ip.text };
      hosts.push({ pattern, port: d.port, source: s, loc: item.loc });
    }
  }
  if (
    hosts.length === 0 && !r.issues.some((i) => i.path.startsWith(`credentials.${name}.hosts`))
  ) {
    r.error(
      hostsNode ?? at,
      "the credential has no `hosts`",
      "list the hosts the real value may be sent to, e.g. hosts: [api.openai.com]",
    );
  }
  return hosts;
}

/** A credential source (`env:`, `file:`, `credential:`); undefined when the key is absent. */
function readSource(r: Reader, node: SourceNode | undefined): CredentialSource | undefined {
  if (!node) return undefined;
  const s = r.string(node);
  if (s === undefined) return undefined;
  const colon = s.indexOf(":");
  const scheme = colon === -1 ? "" : s.slice(0, colon);
  const rest = colon === -1 ? s : s.slice(colon + 1);
  const hint = "write env:NAME, file:/absolute/path or credential:NAME";
  switch (scheme) {
    case "env":
      if (!ENV_NAME.test(rest)) {
        r.error(node, `"${rest}" is not an environment variable name`, hint);
        return undefined;
      }
      return { kind: "env", name: rest };
    case "file":
      if (!rest.startsWith("/")) {
        r.error(
          node,
          `"${rest}" is not an absolute path`,
          "file: sources need an absolute path, e.g. file:/etc/sluice/token",
        );
        return undefined;
      }
      return { kind: "file", path: rest };
    case "credential":
      if (!rest || rest.includes("/")) {
        r.error(
          node,
          `"${rest}" is not a systemd credential name`,
          "use the name given to LoadCredential=, without slashes",
        );
        return undefined;
      }
      return { kind: "credential", name: rest };
    default: {
      const near = closest(scheme, ["env", "file", "credential"]);
      r.error(
        node,
        `unknown credential source "${s}"`,
        near ? `did you mean "${near}:${rest}"?` : hint,
      );
      return undefined;
    }
  }
}

function readEndpoint(r: Reader, node: SourceNode | undefined): Endpoint | undefined {
  if (!node) return undefined;
  if (node.kind === "scalar" && typeof node.value === "number") {
    const port = r.port(node);
    return port === undefined ? undefined : { port, loc: node.loc };
  }
  const s = r.string(node);
  if (s === undefined) return undefined;
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+))?:(\d+)$/.exec(s) ??
    (/^\d+$/.test(s) ? [s, undefined, undefined, s] : null);
  if (!m) {
    r.error(
      node,
      `"${s}" is not a listen address`,
      "write host:port, [ipv6]:port or a port number, e.g. 127.0.0.1:3128",
    );
    return undefined;
  }
  const p = parsePort(m[3]);
  if (typeof p !== "number") {
    r.error(node, p.message, p.hint);
    return undefined;
  }
  return { hostname: m[1] ?? m[2], port: p, loc: node.loc };
}

function readListen(r: Reader, node: SourceNode | undefined): Policy["listen"] {
  const out: Policy["listen"] = {};
  if (!node) return out;
  const m = r.map(node, ["proxy", "transparent", "dns", "admin"]);
  if (!m) return out;
  out.proxy = readEndpoint(r, m.get("proxy"));
  out.dns = readEndpoint(r, m.get("dns"));
  out.admin = readEndpoint(r, m.get("admin"));
  const t = m.get("transparent");
  if (t) {
    const tm = r.map(t, ["https", "http"]);
    if (tm) {
      out.transparent = {
        https: readEndpoint(r, tm.get("https")),
        http: readEndpoint(r, tm.get("http")),
      };
    }
  }
  const seen = new Map<string, string>();
  const named: [string, Endpoint | undefined][] = [
    ["proxy", out.proxy],
    ["transparent.https", out.transparent?.https],
    ["transparent.http", out.transparent?.http],
    ["admin", out.admin],
  ];
  for (const [name, ep] of named) {
    if (!ep) continue;
    const key = `${ep.hostname ?? "*"}:${ep.port}`;
    const other = seen.get(String(ep.port));
    if (other) {
      r.error(
        { loc: ep.loc, path: `listen.${name}` },
        `port ${ep.port} is also used by listen.${other}`,
        "give each listener its own port",
      );
    }
    seen.set(String(ep.port), name);
    void key;
  }
  return out;
}

function readEnforce(r: Reader, node: SourceNode | undefined): Policy["enforce"] {
  const out: Policy["enforce"] = {
    backend: "auto",
    subjects: { users: [], cgroups: [], interfaces: [] },
    ports: { http: [80], https: [443] },
    dns: "proxy",
    other: "drop",
  };
  if (!node) return out;
  const m = r.map(node, ["backend", "subjects", "ports", "dns", "other"]);
  if (!m) return out;
  out.backend = r.oneOf(m.get("backend"), ["auto", "nftables", "iptables", "none"] as const) ??
    "auto";
  out.dns = r.oneOf(m.get("dns"), ["proxy", "allow", "block"] as const) ?? "proxy";
  out.other = r.oneOf(m.get("other"), ["drop", "allow"] as const) ?? "drop";
  const subj = m.get("subjects");
  if (subj) {
    const s = r.map(subj, ["users", "cgroups", "interfaces"]);
    if (s) {
      const users: (string | number)[] = [];
      for (const item of r.seq(s.get("users"))) {
        if (
          item.kind === "scalar" && typeof item.value === "number" &&
          Number.isInteger(item.value) && item.value >= 0
        ) {
          users.push(item.value);
        } else {
          const u = r.string(item);
          if (u !== undefined && !/^[a-z_][a-z0-9_.-]*\$?$/i.test(u)) {
            r.error(item, `"${u}" is not a user name or uid`);
          } else if (u !== undefined) users.push(u);
        }
      }
      const cgroups: string[] = [];
      for (const item of r.seq(s.get("cgroups"))) {
        const c = r.string(item);
        if (c === undefined) continue;
        if (c.startsWith("/") || c.includes("..") || c === "") {
          r.error(
            item,
            `"${c}" is not a cgroup path`,
            "give the path below the cgroup2 root without a leading /, e.g. system.slice/build.service",
          );
        } else cgroups.push(c);
      }
      const interfaces: string[] = [];
      for (const item of r.seq(s.get("interfaces"))) {
        const i = r.string(item);
        if (i === undefined) continue;
        if (!/^[A-Za-z0-9_.+-]{1,15}$/.test(i)) {
          r.error(
            item,
            `"${i}" is not an interface name`,
            "interface names are 1 to 15 letters, digits or . _ - +",
          );
        } else interfaces.push(i);
      }
      out.subjects = { users, cgroups, interfaces };
    }
  }
  const portsNode = m.get("ports");
  if (portsNode) {
    const p = r.map(portsNode, ["http", "https"]);
    if (p) {
      for (const k of ["http", "https"] as const) {
        const n = p.get(k);
        if (!n) continue;
        const items = n.kind === "scalar" ? [n] : r.seq(n);
        out.ports[k] = items.map((i) => r.port(i)).filter((x): x is number => x !== undefined);
      }
      const both = out.ports.http.filter((x) => out.ports.https.includes(x));
      if (both.length) {
        r.error(
          portsNode,
          `port ${both[0]} is listed for both http and https`,
          "each port is redirected to one listener",
        );
      }
    }
  }
  return out;
}

function readAudit(r: Reader, node: SourceNode | undefined): Policy["audit"] {
  const out = { log: "stderr" };
  if (!node) return out;
  const m = r.map(node, ["log"]);
  const logNode = m?.get("log");
  const log = r.string(logNode);
  if (logNode && log !== undefined) {
    if (log !== "stderr" && log !== "stdout" && !log.startsWith("/")) {
      r.error(
        logNode,
        `"${log}" is not stderr, stdout or an absolute path`,
        "write audit.log: /var/log/sluice/audit.jsonl",
      );
    } else out.log = log;
  }
  return out;
}

/** Checks that need the whole policy: contradictions between sections. */
function crossCheck(r: Reader, policy: Policy): void {
  const needsInspection = [...policy.network.allow, ...policy.network.deny].filter((x) =>
    x.methods || x.paths
  );
  const passthrough = policy.tls.passthrough;
  for (const rule of needsInspection) {
    const at = { loc: rule.loc, path: `network.${rule.list}[${rule.index}]` };
    if (!policy.tls.intercept) {
      r.error(
        at,
        `"${rule.source}" has methods or paths, which need TLS interception, but tls.intercept is false`,
        "set tls.intercept: true, or drop the methods/paths from the rule",
      );
      continue;
    }
    if (rule.target.kind !== "host") continue;
    const hostPattern = rule.target.pattern;
    const clash = passthrough.find((p) => patternsOverlap(p.pattern, hostPattern));
    if (clash) {
      r.error(
        at,
        `"${rule.source}" has methods or paths, but ${clash.source} is in tls.passthrough (${clash.loc.file}:${clash.loc.line}), where requests cannot be seen`,
        "remove the host from tls.passthrough, or drop the methods/paths",
      );
    }
  }
  for (const c of policy.credentials) {
    for (const h of c.hosts) {
      const at = { loc: h.loc, path: `credentials.${c.name}.hosts` };
      const clash = passthrough.find((p) => patternsOverlap(p.pattern, h.pattern));
      if (clash) {
        r.warn(
          at,
          `${h.source} is also in tls.passthrough: sluice cannot see inside that TLS, so ${c.name} is never substituted there`,
          "remove it from tls.passthrough",
        );
      } else if (!policy.tls.intercept) {
        r.warn(
          at,
          `tls.intercept is false: ${c.name} can only be substituted in plain HTTP`,
          "set tls.intercept: true",
        );
      }
    }
  }
  for (const c of policy.clientCerts) {
    for (const h of c.hosts) {
      const clash = passthrough.find((p) => patternsOverlap(p.pattern, h.pattern));
      if (clash) {
        r.warn(
          { loc: h.loc, path: `credentials.${c.name}.hosts` },
          `${h.source} is also in tls.passthrough: the client's own TLS goes through there, so sluice never presents ${c.name}`,
          "remove it from tls.passthrough",
        );
      }
    }
  }
}

/** Whether two host patterns can match a common name. */
export function patternsOverlap(a: HostPattern, b: HostPattern): boolean {
  if (a.kind === "exact" && b.kind === "exact") return a.name === b.name;
  if (a.kind === "exact") return hostMatches(b, a.name);
  if (b.kind === "exact") return hostMatches(a, b.name);
  return a.suffix === b.suffix || hostMatches(a, "x." + b.suffix) ||
    hostMatches(b, "x." + a.suffix);
}
