/**
 * Upstream TLS trust: which roots verify which upstream, from `tls.upstream`.
 * Files are read once per policy load (a reload re-reads them), never per
 * request.
 *
 * "Verify against the system roots" means the host's store, not Deno's
 * bundled Mozilla list (PLATFORM.md): the system bundle is read and passed
 * explicitly, plus any `ca` files the policy adds.
 *
 * @module
 */
import { type CompiledPolicy, upstreamTlsFor } from "../policy/mod.ts";

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

/**
 * Reads every CA file the policy names and the system bundle.
 *
 * @param systemBundles candidates for the system roots; the first readable one is used
 * @throws {TrustError} naming the unreadable file
 */
export async function loadTrust(
  compiled: CompiledPolicy,
  systemBundles: readonly string[] = SYSTEM_BUNDLES,
): Promise<TrustStore> {
  let system: string | undefined;
  for (const path of systemBundles) {
    system = await Deno.readTextFile(path).catch(() => undefined);
    if (system) break;
  }
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
