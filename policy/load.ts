/**
 * From policy text to a compiled policy, with every problem reported at once.
 *
 * @module
 */
import { decideConnection, parseDestinationHost, tokenEndpoint } from "./decide.ts";
import { type CompiledPolicy, compilePolicy } from "./compile.ts";
import { PolicyError, type PolicyIssue } from "./errors.ts";
import { readPolicySource } from "./source.ts";
import { validatePolicy } from "./validate.ts";
import type { Policy } from "./types.ts";

/** A loaded policy and its warnings. */
export type Loaded = { compiled: CompiledPolicy; warnings: PolicyIssue[] };

/**
 * Parses, validates and compiles policy text. Pure: the caller reads the file.
 *
 * @param text the policy file's contents (YAML or JSON)
 * @param file the path as the user gave it, used in every location
 * @returns the compiled policy and any warnings
 * @throws {PolicyError} with every error (and warning) when the policy is invalid
 *
 * @example
 * ```ts
 * const { compiled } = loadPolicyText("version: 1\nnetwork:\n  allow: [api.openai.com]\n", "p.yaml");
 * compiled.policy.network.allow.length; // 1
 * ```
 */
export function loadPolicyText(text: string, file: string): Loaded {
  const read = readPolicySource(text, file);
  if (!read.root) throw new PolicyError(read.issues);
  const { policy, issues } = validatePolicy(read.root, file);
  if (issues.some((i) => i.severity === "error")) throw new PolicyError(issues);
  const compiled = compilePolicy(policy);
  issues.push(...checkCredentialHosts(compiled, policy));
  if (issues.some((i) => i.severity === "error")) throw new PolicyError(issues);
  return { compiled, warnings: issues };
}

/**
 * A credential scoped to a host that `network` denies can never be used:
 * almost certainly a mistake, so it is an error rather than silence.
 */
function checkCredentialHosts(compiled: CompiledPolicy, policy: Policy): PolicyIssue[] {
  const out: PolicyIssue[] = [];
  for (const c of [...policy.credentials, ...policy.clientCerts]) {
    for (const h of c.hosts) {
      // A wildcard is checked through one representative subdomain.
      const name = h.pattern.kind === "exact" ? h.pattern.name : `sluice-check.${h.pattern.suffix}`;
      const port = h.port ?? 443;
      // An IP literal host is checked as the address it is.
      const parsed = parseDestinationHost(name);
      const dest = parsed.kind === "invalid" ? { kind: "name" as const, name } : parsed;
      const d = decideConnection(compiled, dest, port);
      if (d.verdict === "deny") {
        out.push({
          severity: "error",
          loc: h.loc,
          path: `credentials.${c.name}.hosts`,
          message:
            `${c.name} may be sent to ${h.source}, but the network policy denies it (${d.reason}, ${d.rule.at})`,
          hint: `add "${h.source}" to network.allow, or remove it from the credential's hosts`,
        });
      }
    }
  }
  for (const c of policy.credentials) {
    if (!c.oauth2) continue;
    const at = tokenEndpoint(c.oauth2);
    if (!at) {
      out.push({
        severity: "error",
        loc: c.oauth2.tokenUrlLoc,
        path: `credentials.${c.name}.token_url`,
        message:
          `the token endpoint's host in ${c.oauth2.tokenUrl} is not a valid host name or address`,
        hint: "write the token endpoint as https://host[:port]/path",
      });
      continue;
    }
    const d = decideConnection(compiled, at.dest, at.port);
    if (d.verdict === "deny") {
      out.push({
        severity: "error",
        loc: c.oauth2.tokenUrlLoc,
        path: `credentials.${c.name}.token_url`,
        message:
          `sluice must reach ${c.name}'s token endpoint ${at.authority}, but the network policy denies it (${d.reason}, ${d.rule.at})`,
        hint: `add "${at.authority}" to network.allow`,
      });
    }
  }
  return out;
}
