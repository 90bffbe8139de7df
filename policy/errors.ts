/**
 * Problems found in a policy, and the error that carries all of them.
 *
 * A policy is rejected as a whole: every problem is collected (never just the
 * first) so a user can fix the file in one pass. Each problem knows where it is
 * (`file:line:col`), which setting it concerns (a dotted path such as
 * `network.allow[3]`), what is wrong, and, where we can tell, what to do.
 *
 * @module
 */

/** A position in a policy file; `line` and `col` start at 1. */
export type Loc = { file: string; line: number; col: number };

/** One problem in a policy. Warnings do not stop a policy from loading. */
export type PolicyIssue = {
  severity: "error" | "warning";
  loc: Loc;
  /** The setting concerned, e.g. `network.allow[3]` or `credentials.NPM_TOKEN.hosts[0]`. */
  path: string;
  message: string;
  hint?: string;
};

/** Formats a location as `file:line:col`. */
export function formatLoc(loc: Loc): string {
  return `${loc.file}:${loc.line}:${loc.col}`;
}

/** Formats a location as `file:line`, the form decisions use to name a rule. */
export function formatLine(loc: Loc): string {
  return `${loc.file}:${loc.line}`;
}

/**
 * Formats one issue as `file:line:col: path: message (hint)`.
 *
 * @example
 * ```ts
 * formatIssue({ severity: "error", loc: { file: "p.yaml", line: 3, col: 7 },
 *   path: "network.allow[0]", message: "bad", hint: "do this" });
 * // "p.yaml:3:7: network.allow[0]: bad; do this"
 * ```
 */
export function formatIssue(issue: PolicyIssue): string {
  const where = issue.path ? `${issue.path}: ` : "";
  const prefix = issue.severity === "warning" ? "warning: " : "";
  const hint = issue.hint ? `; ${issue.hint}` : "";
  return `${formatLoc(issue.loc)}: ${prefix}${where}${issue.message}${hint}`;
}

/** Thrown when a policy has at least one error; `issues` holds all of them. */
export class PolicyError extends Error {
  override name = "PolicyError";
  readonly issues: PolicyIssue[];

  constructor(issues: PolicyIssue[], options?: ErrorOptions) {
    const errors = issues.filter((i) => i.severity === "error");
    super(
      `Cannot load policy: ${errors.length} error${errors.length === 1 ? "" : "s"}\n` +
        errors.map(formatIssue).join("\n"),
      options,
    );
    this.issues = issues;
  }
}

/**
 * The closest candidate to `word` by edit distance, for "did you mean" hints;
 * undefined when nothing is close enough to be a plausible typo.
 */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const d = editDistance(word.toLowerCase(), candidate.toLowerCase());
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  // A third of the word's length is the usual bound for a typo, at least 1 and at most 3.
  const limit = Math.min(3, Math.max(1, Math.floor(word.length / 3)));
  return bestDistance <= limit ? best : undefined;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(
        previous[j] + 1,
        current[j - 1] + 1,
        previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[b.length];
}
