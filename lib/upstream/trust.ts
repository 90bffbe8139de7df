/**
 * Upstream TLS trust: which roots verify which upstream, from `tls.upstream`.
 * Files are read once per policy load (a reload re-reads them), never per
 * request.
 *
 * "Verify against the system roots" means the host's store, not Deno's
 * bundled Mozilla list (PLATFORM.md). sluice makes the host's store Deno's
 * default store for the process (`DENO_TLS_CA_STORE=system`, set before the
 * first TLS connection), so an upstream connection passes only the policy's
 * extra `ca` files. Passing the ~220 KB system bundle as `caCerts` instead
 * made Deno parse it again for every upstream connection: ~1.7 ms of CPU and
 * ~80 KB of memory each (docs/performance.md). When the user chose another
 * default store, the bundle is read and passed explicitly, as before.
 *
 * @module
 */
import { type CompiledPolicy, upstreamTlsFor } from "../../policy/mod.ts";

/** Where Debian, Ubuntu, Alpine and Arch keep the system bundle; then Fedora/RHEL. */
export const SYSTEM_BUNDLES = [
  "/etc/ssl/certs/ca-certificates.crt",
  "/etc/pki/tls/certs/ca-bundle.crt",
];

/** Upstream trust for one host: whether to verify, and the PEM roots to verify against. */
export type UpstreamTrust = { verify: boolean; caCerts: string[] };

/** Trust decisions for a loaded policy. */
export type TrustStore = { forHost(name: string): UpstreamTrust };

/** Raised when a CA file named by the policy cannot be read. */
export class TrustError extends Error {
  override name = "TrustError";
}

/** Whether {@link useSystemRootsByDefault} set DENO_TLS_CA_STORE (rather than the user). */
let storeSetHere = false;

/**
 * Makes the host's trust store Deno's default one for this process, unless the user chose
 * a store with `DENO_TLS_CA_STORE`. Deno reads the variable when it first builds its store,
 * so call this before the process makes its first TLS connection.
 *
 * @returns true when the default store now includes the system roots
 */
export function useSystemRootsByDefault(): boolean {
  const chosen = Deno.env.get("DENO_TLS_CA_STORE");
  if (chosen === undefined || chosen.trim() === "") {
    Deno.env.set("DENO_TLS_CA_STORE", "system");
    storeSetHere = true;
    return true;
  }
  return chosen.split(",").some((s) => s.trim() === "system");
}

/** Variables sluice set in its own environment for itself (to keep out of a command's). */
export function ownTrustSettings(): string[] {
  return storeSetHere ? ["DENO_TLS_CA_STORE"] : [];
}

/**
 * The environment for a program sluice starts (`sluice run`): without the trust store choice
 * sluice made for itself, so the program sees the variables its user gave it.
 *
 * @param env an environment, e.g. `Deno.env.toObject()`
 * @returns `env` without DENO_TLS_CA_STORE if sluice set it, else `env` unchanged
 */
export function withoutOwnTrustSetting(env: Record<string, string>): Record<string, string> {
  if (!storeSetHere) return env;
  const { DENO_TLS_CA_STORE: _ours, ...rest } = env;
  return rest;
}

/** Options of {@link loadTrust}. */
export type LoadTrustOptions = {
  /** Candidates for the system bundle, when it must be passed explicitly; first readable wins. */
  systemBundles?: readonly string[];
  /** The system roots are in Deno's default store: do not read or pass the bundle. */
  systemInDefaultStore?: boolean;
};

/**
 * The first of the host's CA bundles that can be read (Debian, Fedora, Alpine… paths), or
 * undefined when there is none.
 */
export async function readSystemBundle(
  paths: readonly string[] = SYSTEM_BUNDLES,
): Promise<string | undefined> {
  for (const path of paths) {
    const text = await Deno.readTextFile(path).catch(() => undefined);
    if (text) return text;
  }
  return undefined;
}

/**
 * Reads every CA file the policy names and, unless the default store has them, the system
 * bundle.
 *
 * @param opts where the system roots come from
 * @throws {TrustError} naming the unreadable file
 */
export async function loadTrust(
  compiled: CompiledPolicy,
  opts: LoadTrustOptions = {},
): Promise<TrustStore> {
  const system = opts.systemInDefaultStore ? undefined : await readSystemBundle(opts.systemBundles);
  const files = new Map<string, string>();
  const up = compiled.policy.tls.upstream;
  const paths = [...up.ca, ...up.hosts.flatMap((h) => h.ca)];
  for (const path of paths) {
    if (files.has(path)) continue;
    try {
      const pem = await Deno.readTextFile(path);
      if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
        throw new TrustError(`tls.upstream CA file ${path} holds no PEM certificate`);
      }
      files.set(path, pem);
    } catch (e) {
      if (e instanceof TrustError) throw e;
      throw new TrustError(`cannot read tls.upstream CA file ${path}: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }
  const cache = new Map<string, UpstreamTrust>();
  return {
    forHost(name: string): UpstreamTrust {
      const hit = cache.get(name);
      if (hit) return hit;
      const t = upstreamTlsFor(compiled, name);
      const caCerts = [...(system ? [system] : []), ...t.ca.map((p) => files.get(p)!)];
      const trust = { verify: t.verify, caCerts };
      // Bounded: a client choosing endless names must not grow this without limit.
      if (cache.size > 10_000) cache.clear();
      cache.set(name, trust);
      return trust;
    },
  };
}
