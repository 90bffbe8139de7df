/**
 * `sluice check POLICY...`: validate policies and print a normalized summary.
 *
 * @module
 */
import { formatHostPort } from "../../policy/address.ts";
import { formatHostPattern, formatIssue, type Loaded, type Policy } from "../../policy/mod.ts";
import type { CredentialSource, Endpoint } from "../../policy/types.ts";
import { readPolicyFile } from "../gateway/policy_file.ts";

/** Default listener addresses, shown when the policy does not set them. */
export const DEFAULT_PROXY = "127.0.0.1:3128";

/**
 * Renders the normalized summary of a loaded policy: rules in file order with
 * their `file:line`, credentials with their hosts (never values), TLS and
 * listeners.
 */
export function summarize(loaded: Loaded): string {
  const p: Policy = loaded.compiled.policy;
  const lines: string[] = [];
  const rules = [...p.network.allow, ...p.network.deny].sort((a, b) => a.id - b.id);
  lines.push(`${p.file}: valid`);
  lines.push(`network (default ${p.network.default}, private addresses ${p.network.private}):`);
  for (const r of rules) {
    lines.push(`  ${r.list.padEnd(5)} ${r.source}  (${r.loc.file}:${r.loc.line})`);
  }
  if (rules.length === 0) lines.push("  (no rules)");
  const source = (s: CredentialSource) =>
    s.kind === "file" ? `file:${s.path}` : `${s.kind}:${s.name}`;
  lines.push(
    p.credentials.length + p.clientCerts.length === 0 ? "credentials: none" : "credentials:",
  );
  for (const c of p.credentials) {
    const o = c.oauth2;
    const k = c.sigv4;
    const from = c.from
      ? `from ${source(c.from)}`
      : k
      ? `AWS keys ${source(k.accessKeyId)}, ${source(k.secretAccessKey)}` +
        (k.sessionToken ? `, session token ${source(k.sessionToken)}` : "") +
        " (requests signed with the placeholder keys are re-signed)"
      : o
      ? `minted by ${o.grant} at ${o.tokenUrl}` +
        [o.refreshToken, o.clientSecret, o.key].filter((x) => x).map((x) => `, ${source(x!)}`).join(
          "",
        )
      : "";
    const extra = (k ? ["derived placeholder keys", c.onViolation] : [
      `in ${c.in.join(",") || "nowhere"}`,
      c.inject ? `inject ${c.inject.header}` : "",
      c.placeholder ? "fixed placeholder" : "derived placeholder",
      c.onViolation,
    ]).filter(Boolean).join("; ");
    lines.push(`  ${c.name} ${from} -> ${c.hosts.map((h) => h.source).join(", ")} (${extra})`);
  }
  for (const c of p.clientCerts) {
    lines.push(
      `  ${c.name} client certificate ${source(c.cert)}, key ${source(c.key)} -> ` +
        `${c.hosts.map((h) => h.source).join(", ")} (presented by sluice in mTLS)`,
    );
  }
  const pt = p.tls.passthrough.map((x) => formatHostPattern(x.pattern));
  lines.push(
    `tls: ${p.tls.intercept ? "intercept" : "no interception"}` +
      (pt.length ? `; passthrough ${pt.join(", ")}` : "") +
      `; upstream verify ${p.tls.upstream.verify}` +
      (p.tls.ca ? `; CA ${p.tls.ca.cert}` : "; CA generated in the state directory"),
  );
  const ep = (e: Endpoint | undefined, def: string) =>
    e ? formatHostPort(e.hostname ?? "127.0.0.1", e.port) : def;
  lines.push(
    `listen: proxy ${ep(p.listen.proxy, `${DEFAULT_PROXY} (default)`)}` +
      `; transparent https ${ep(p.listen.transparent?.https, "off")}, http ${
        ep(p.listen.transparent?.http, "off")
      }` +
      `; dns ${ep(p.listen.dns, "off")}; admin ${ep(p.listen.admin, "off")}`,
  );
  const s = p.enforce.subjects;
  const subjects = [
    s.users.length ? `users ${s.users.join(",")}` : "",
    s.cgroups.length ? `cgroups ${s.cgroups.join(",")}` : "",
    s.interfaces.length ? `interfaces ${s.interfaces.join(",")}` : "",
  ].filter(Boolean).join("; ");
  lines.push(
    `enforce: backend ${p.enforce.backend}; subjects ${
      subjects || "none"
    }; dns ${p.enforce.dns}; other ${p.enforce.other}`,
  );
  lines.push(`audit: ${p.audit.log}`);
  return lines.join("\n");
}

/**
 * Runs `check` on each file; returns the exit code (0 all valid, 1 otherwise).
 * Errors go to stderr as `file:line:col: path: message`.
 */
export async function runCheck(
  files: string[],
  opts: { quiet?: boolean },
  out: (s: string) => void,
  err: (s: string) => void,
): Promise<number> {
  let code = 0;
  for (const file of files) {
    try {
      const loaded = await readPolicyFile(file);
      for (const w of loaded.warnings) err(formatIssue(w));
      if (!opts.quiet) out(summarize(loaded));
    } catch (e) {
      code = 1;
      err((e as Error).message);
    }
  }
  return code;
}
