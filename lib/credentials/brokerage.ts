/**
 * Building the credential broker for a loaded policy: the real values from
 * their sources (env, files, systemd credentials), the placeholders (fixed,
 * or derived from a key in the state directory so workloads can be
 * configured once), and the broker that substitutes and scrubs.
 *
 * Values live only in memory, inside `SecretValue`s that never print.
 *
 * @module
 */
import type { CompiledPolicy } from "../../policy/mod.ts";
import {
  loadOrCreatePlaceholderKey,
  loadSecrets,
  placeholdersFor,
  type SecretValue,
} from "./secrets.ts";
import { type Broker, makeBroker } from "./broker.ts";

/**
 * The broker, the placeholders it recognises (name to placeholder), and the
 * loaded values (`sluice run` needs them only to keep them out of the
 * command's environment).
 */
export type Brokerage = {
  broker: Broker;
  placeholders: Map<string, string>;
  secrets: ReadonlyMap<string, SecretValue>;
};

/**
 * Loads every credential of the policy and builds its broker.
 *
 * @param stateDir where the placeholder key lives (created 0600 on first use);
 *   a `Uint8Array` supplies the key directly (`sluice run` uses a fresh one)
 * @throws {SecretError} listing every credential that could not be loaded
 */
export async function buildBrokerage(
  compiled: CompiledPolicy,
  stateDir: string | Uint8Array,
  env: { get(name: string): string | undefined } = Deno.env,
): Promise<Brokerage> {
  const creds = compiled.credentials;
  const secrets = await loadSecrets(
    creds,
    env,
    (p) => Deno.readTextFile(p),
    env.get("CREDENTIALS_DIRECTORY"),
  );
  const needsKey = creds.some((c) => c.placeholder === undefined);
  const key = typeof stateDir === "string"
    ? (needsKey ? await loadOrCreatePlaceholderKey(stateDir) : new Uint8Array(32))
    : stateDir;
  const placeholders = await placeholdersFor(creds, key);
  return { broker: makeBroker(creds, placeholders, secrets), placeholders, secrets };
}
