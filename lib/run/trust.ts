/**
 * The CA material a `sluice run` command trusts: sluice's CA next to the
 * host's roots, in each shape the common runtimes read (a PEM bundle, an
 * OpenSSL hashed directory, a Java PKCS#12 store). The variables pointing at
 * them are chosen in lib/run/env.ts.
 *
 * @module
 */
import type { TrustFiles } from "./env.ts";
import { trySh } from "../ops/command.ts";
import { readSystemBundle } from "../upstream/trust.ts";

/** Where the host keeps its hashed certificate directory and Java's default store (Debian). */
const SYSTEM_CERT_DIR = "/etc/ssl/certs";
const JAVA_SYSTEM_STORES = ["/etc/ssl/certs/java/cacerts"];
/** Java trust stores hold public certificates only; the password guards nothing secret. */
const JAVA_STORE_PASSWORD = "changeit";

/**
 * Writes the bundle, the hashed directory and (when `keytool` is on PATH) the
 * Java store into `dir`, all world-readable (the command may run as another
 * user), none holding anything secret.
 *
 * @param dir a fresh directory of the run
 * @param caPem sluice's CA certificate (public)
 * @returns the paths, for lib/run/env.ts `caVariables`
 */
export async function writeTrustFiles(dir: string, caPem: string): Promise<TrustFiles> {
  const system = (await readSystemBundle()) ?? "";
  const bundle = `${dir}/ca-bundle.pem`;
  const caFile = `${dir}/sluice-ca.pem`;
  await Deno.writeTextFile(bundle, `${system.trimEnd()}\n${caPem}`, { mode: 0o644 });
  await Deno.writeTextFile(caFile, caPem, { mode: 0o644 });
  const [certDir, javaTrustStore] = await Promise.all([
    hashedDir(`${dir}/certs`, caFile),
    javaStore(`${dir}/java-truststore`, caFile),
  ]);
  return { bundle, certDir, javaTrustStore };
}

/**
 * An OpenSSL-style directory: links to the host's certificates and sluice's
 * CA under `<subject hash>.0`. Needs `openssl` for the hash; without it there
 * is no directory and SSL_CERT_FILE alone carries the roots.
 */
async function hashedDir(path: string, caFile: string): Promise<string | undefined> {
  const hash = (await trySh(["openssl", "x509", "-hash", "-noout", "-in", caFile]))?.trim();
  if (!hash || !/^[0-9a-f]{8}$/.test(hash)) return undefined;
  await Deno.mkdir(path, { mode: 0o755 });
  try {
    for await (const e of Deno.readDir(SYSTEM_CERT_DIR)) {
      await Deno.symlink(`${SYSTEM_CERT_DIR}/${e.name}`, `${path}/${e.name}`).catch(() => {});
    }
  } catch { /* no system directory: sluice's CA only */ }
  // A hash collision with a host certificate takes the next free suffix, as c_rehash does.
  for (let i = 0; i < 10; i++) {
    const name = `${path}/${hash}.${i}`;
    try {
      await Deno.lstat(name);
    } catch {
      await Deno.copyFile(caFile, name);
      return path;
    }
  }
  return path;
}

/**
 * A Java trust store: a copy of the host's Java roots (Debian's
 * ca-certificates-java store, JKS or PKCS#12) with sluice's CA added by
 * `keytool` (one JVM start, ~0.5 s, made while the namespace is set up), or a
 * new PKCS#12 store with sluice's CA alone. Without keytool (no JDK on the
 * host) there is none and Java is not configured.
 */
async function javaStore(
  path: string,
  caFile: string,
): Promise<TrustFiles["javaTrustStore"]> {
  let type = "PKCS12";
  for (const src of JAVA_SYSTEM_STORES) {
    try {
      const head = (await Deno.readFile(src)).subarray(0, 4);
      await Deno.copyFile(src, path);
      // JKS files start with 0xFEEDFEED; everything else here is PKCS#12.
      if (head[0] === 0xfe && head[1] === 0xed && head[2] === 0xfe && head[3] === 0xed) {
        type = "JKS";
      }
      break;
    } catch { /* next */ }
  }
  const added = await trySh([
    "keytool",
    "-importcert",
    "-noprompt",
    "-alias",
    "sluice-run-ca",
    "-file",
    caFile,
    "-keystore",
    path,
    "-storetype",
    type,
    "-storepass",
    JAVA_STORE_PASSWORD,
  ]);
  if (added === undefined) return undefined;
  await Deno.chmod(path, 0o644);
  return { path, password: JAVA_STORE_PASSWORD, type };
}
