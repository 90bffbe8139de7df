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
  SecretError,
  type SecretValue,
} from "./secrets.ts";
import { type ClientCerts, loadClientCerts } from "./client_certs.ts";
import { type Broker, makeBroker } from "./broker.ts";
import { loadOAuth2Material, OAuth2Tokens, type TokenCell } from "./oauth2.ts";
import { loadAwsKeys } from "./sigv4.ts";

/**
 * The broker, the placeholders it recognises (name to placeholder), and the
 * loaded values (`sluice run` needs them only to keep them out of the
 * command's environment).
 */
export type Brokerage = {
  broker: Broker;
  placeholders: Map<string, string>;
  secrets: ReadonlyMap<string, SecretValue>;
  /** oauth2 credentials' long-lived material (refresh tokens, client secrets, keys), AWS keys. */
  material: readonly SecretValue[];
};

/**
 * Loads every credential of the policy and builds its broker.
 *
 * @param stateDir where the placeholder key lives (created 0600 on first use);
 *   a `Uint8Array` supplies the key directly (`sluice run` uses a fresh one)
 * @param tokens the oauth2 token state, kept across reloads (lib/credentials/oauth2.ts)
 * @throws {SecretError} listing every credential that could not be loaded
 */
export async function buildBrokerage(
  compiled: CompiledPolicy,
  stateDir: string | Uint8Array,
  env: { get(name: string): string | undefined } = Deno.env,
  tokens: OAuth2Tokens = new OAuth2Tokens(),
): Promise<Brokerage> {
  const creds = compiled.credentials;
  const readFile = (p: string) => Deno.readTextFile(p);
  const directory = env.get("CREDENTIALS_DIRECTORY");
  // Both loaded, and every problem of both reported at once.
  const [secretsOr, certsOr, materialOr, awsOr] = await Promise.allSettled([
    loadSecrets(creds, env, readFile, directory),
    loadClientCerts(compiled.policy.clientCerts, env, readFile, directory),
    loadOAuth2Material(creds, env, readFile, directory),
    loadAwsKeys(creds, env, readFile, directory),
  ]);
  const problems: string[] = [];
  for (const r of [secretsOr, certsOr, materialOr, awsOr]) {
    if (r.status === "fulfilled") continue;
    if (!(r.reason instanceof SecretError)) throw r.reason;
    problems.push(...r.reason.problems);
  }
  if (problems.length) throw new SecretError(problems);
  const secrets = (secretsOr as PromiseFulfilledResult<Map<string, SecretValue>>).value;
  const clientCerts = (certsOr as PromiseFulfilledResult<ClientCerts>).value;
  const materials =
    (materialOr as PromiseFulfilledResult<Awaited<ReturnType<typeof loadOAuth2Material>>>).value;
  const aws = (awsOr as PromiseFulfilledResult<Awaited<ReturnType<typeof loadAwsKeys>>>).value;
  const cells = new Map<string, TokenCell>();
  for (const c of creds) {
    if (c.kind === "oauth2") cells.set(c.name, tokens.cell(c, materials.get(c.name)!));
  }
  const needsKey = creds.some((c) => c.placeholder === undefined);
  const key = typeof stateDir === "string"
    ? (needsKey ? await loadOrCreatePlaceholderKey(stateDir) : new Uint8Array(32))
    : stateDir;
  const placeholders = await placeholdersFor(creds, key);
  return {
    // No oauth2 credential, no token state: the broker's per-request token checks stay off.
    broker: makeBroker(
      creds,
      placeholders,
      secrets,
      clientCerts,
      cells.size ? { tokens, cells } : undefined,
      aws,
    ),
    placeholders,
    secrets,
    material: [
      ...[...cells.values()].flatMap((c) => c.scrubValues()),
      ...[...aws.values()].flatMap((k) =>
        [k.accessKeyId, k.secretAccessKey, k.sessionToken].filter((v) => v !== undefined)
      ),
    ],
  };
}
