/**
 * `sluice placeholders --policy FILE`: what each credential's placeholder is,
 * for configuring workloads once (the values are stable across restarts:
 * derived from a key in the state directory). Never prints a real value.
 *
 * @module
 */
import { loadOrCreatePlaceholderKey, placeholdersFor } from "../credentials/secrets.ts";
import { readPolicyFile } from "../gateway/policy_file.ts";
import { stateDirFrom } from "./ca.ts";

/** Renders NAME=placeholder lines (shell-safe: placeholders are printable ASCII without spaces), or JSON. */
export async function runPlaceholders(
  opts: { policy: string; state?: string; format?: string },
): Promise<string> {
  const format = opts.format ?? "env";
  if (format !== "env" && format !== "json") {
    throw new Error(`--format "${format}" is not env or json`);
  }
  const { compiled } = await readPolicyFile(opts.policy);
  const creds = compiled.credentials;
  const needsKey = creds.some((c) => c.placeholder === undefined);
  const key = needsKey
    ? await loadOrCreatePlaceholderKey(stateDirFrom(opts.state))
    : new Uint8Array(32);
  const map = await placeholdersFor(creds, key);
  if (format === "json") return JSON.stringify(Object.fromEntries(map), null, 2);
  return [...map].map(([name, ph]) => `${name}=${ph}`).join("\n");
}
