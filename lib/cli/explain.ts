/**
 * `sluice explain`: print, for one request, what sluice would do and why.
 *
 * @module
 */
import { type CompiledPolicy, explain, type Explanation } from "../../policy/mod.ts";
import { PLACEHOLDER_KEY_FILE, placeholdersFor } from "../credentials/secrets.ts";

/** Exit code when the request would be denied (0 when allowed, 1 for bad input). */
export const EXIT_DENIED = 3;

/** Parses `-H "Name: value"` arguments. */
export function parseHeaderArgs(list: readonly string[]): [string, string][] | string {
  const out: [string, string][] = [];
  for (const h of list) {
    const i = h.indexOf(":");
    if (i <= 0) return `-H "${h}" is not a header; write -H "Name: value"`;
    out.push([h.slice(0, i).trim(), h.slice(i + 1).trim()]);
  }
  return out;
}

/** The placeholders explain can recognise: each credential's fixed placeholder. */
export function fixedPlaceholders(compiled: CompiledPolicy): Map<string, string> {
  const m = new Map<string, string>();
  for (const c of compiled.credentials) if (c.placeholder) m.set(c.name, c.placeholder);
  return m;
}

/** Renders an explanation for a person. */
export function formatExplanation(e: Explanation): string {
  const lines: string[] = [];
  const verdict = e.verdict === "allow" ? "ALLOW" : "DENY";
  lines.push(`${verdict}  ${e.method} ${e.url}`);
  if (e.error) {
    lines.push(`  error        ${e.error}`);
    return lines.join("\n");
  }
  const decisive = e.decidedBy === "connection"
    ? e.connection
    : e.decidedBy === "request"
    ? e.request
    : e.decidedBy === "address"
    ? e.address
    : (e.request ?? e.connection);
  if (e.decidedBy === "credentials") {
    for (const v of e.credentials.violations) {
      lines.push(
        `  reason       placeholder of credential ${v.name} (in ${v.places.join(", ")}) ` +
          `may only be sent to ${v.hosts.join(", ")}, not ${e.destination}`,
      );
    }
    lines.push(`  response     403 from sluice; the request is never sent`);
  } else if (decisive) {
    lines.push(`  reason       ${decisive.reason}`);
    lines.push(`  rule         ${decisive.rule.source}  (${decisive.rule.at})`);
  }
  lines.push(`  destination  ${e.destination}:${e.port}`);
  const tls = e.tls === "intercept"
    ? "intercepted: sluice presents a certificate for this host from its CA and checks each request"
    : e.tls === "passthrough"
    ? "passed through untouched (sluice sees only the server name)"
    : "none (plain HTTP)";
  lines.push(`  tls          ${tls}`);
  if (e.connection && e.connection.inspect) {
    lines.push(`  inspection   every request on this connection is checked against HTTP rules`);
  }
  if (e.address) lines.push(`  address      ${e.address.verdict}: ${e.address.reason}`);
  const value = (minted?: string) =>
    minted
      ? `an access token sluice obtains from ${minted} (redacted)`
      : "the real value (redacted)";
  for (const s of e.credentials.substituted) {
    lines.push(
      `  credential   ${s.name}: placeholder replaced by ${value(s.minted)} in ${
        s.places.join(", ")
      }`,
    );
  }
  for (const s of e.credentials.injected) {
    lines.push(
      `  credential   ${s.name}: header ${s.header} set from ${
        s.minted ? value(s.minted) : "the secret (redacted)"
      }`,
    );
  }
  if (e.credentials.resigned) {
    lines.push(
      `  credential   ${e.credentials.resigned}: signed with its placeholder keys; sluice checks ` +
        "the signature and re-signs with the real keys (SigV4)",
    );
  }
  if (e.credentials.presented) {
    lines.push(
      `  credential   ${e.credentials.presented}: client certificate presented by sluice (mTLS)`,
    );
  }
  if (
    e.verdict === "allow" && !e.credentials.substituted.length && !e.credentials.injected.length &&
    !e.credentials.presented && !e.credentials.resigned
  ) {
    lines.push(`  credentials  none applied`);
  }
  for (const n of e.notes) lines.push(`  note         ${n}`);
  return lines.join("\n");
}

/**
 * The placeholders explain recognises: fixed ones, plus derived ones when the
 * state directory already holds the placeholder key (explain never creates it).
 */
export async function knownPlaceholders(
  compiled: CompiledPolicy,
  stateDir: string | undefined,
): Promise<Map<string, string>> {
  const fixed = fixedPlaceholders(compiled);
  if (!stateDir || compiled.credentials.every((c) => c.placeholder)) return fixed;
  const key = await Deno.readFile(`${stateDir}/${PLACEHOLDER_KEY_FILE}`).catch(() => undefined);
  if (!key) return fixed;
  return await placeholdersFor(compiled.credentials, key);
}

/** Runs `explain` and returns `[output, exit code]`. */
export function runExplain(
  compiled: CompiledPolicy,
  args: { method: string; url: string; headers: [string, string][]; json: boolean },
  placeholders: ReadonlyMap<string, string> = fixedPlaceholders(compiled),
): [string, number] {
  const e = explain(compiled, {
    method: args.method,
    url: args.url,
    headers: args.headers,
    placeholders,
  });
  const text = args.json ? JSON.stringify(e, null, 2) : formatExplanation(e);
  return [text, e.error ? 1 : e.verdict === "allow" ? 0 : EXIT_DENIED];
}
