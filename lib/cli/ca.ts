/**
 * `sluice ca init|show|export`: the local CA that signs interception leaves.
 *
 * @module
 */
import {
  caShow,
  type CertificateAuthority,
  ephemeralCa,
  exportCaPem,
  initCa,
  loadCa,
} from "../tls/ca.ts";
import type { Policy } from "../../policy/mod.ts";
import { resolveStateDir } from "../ops/state_dir.ts";

/** Where the state directory is, from the flag, the environment and the uid. */
export function stateDirFrom(flag: string | undefined): string {
  return resolveStateDir({ flag, env: (n) => Deno.env.get(n), uid: Deno.uid() });
}

/**
 * The CA `serve` uses: the policy's own (`tls.ca`), an in-memory one
 * (`--ephemeral-ca`), or the state directory's (created on first use).
 */
export async function obtainCa(
  policy: Policy,
  opts: { state?: string; ephemeral?: boolean },
): Promise<{ ca: CertificateAuthority; origin: string }> {
  if (policy.tls.ca) {
    return {
      ca: await loadCa(policy.tls.ca.cert, policy.tls.ca.key),
      origin: `tls.ca (${policy.tls.ca.cert})`,
    };
  }
  if (opts.ephemeral) return { ca: await ephemeralCa(), origin: "ephemeral (memory only)" };
  const dir = stateDirFrom(opts.state);
  const { ca, created } = await initCa(dir);
  return { ca, origin: `${created ? "created" : "loaded"} ${dir}/ca.crt` };
}

/** Human text for `ca show`. */
export function formatCa(ca: CertificateAuthority): string {
  const i = caShow(ca);
  return [
    `subject      ${i.subject}`,
    `sha256       ${i.fingerprintSha256}`,
    `valid from   ${i.notBefore.toISOString()}`,
    `valid until  ${i.notAfter.toISOString()}`,
    ...(i.certPath ? [`certificate  ${i.certPath}`] : []),
  ].join("\n");
}

/** `sluice ca init`: returns the text to print. */
export async function runCaInit(opts: { state?: string; force?: boolean }): Promise<string> {
  const dir = stateDirFrom(opts.state);
  const { ca, created } = await initCa(dir, { force: opts.force });
  return `${
    created ? "created" : "already present"
  }: ${dir}/ca.crt (key ${dir}/ca.key, mode 0600)\n${formatCa(ca)}\n` +
    `next: trust it in clients, e.g. sluice ca export --out sluice-ca.crt && export NODE_EXTRA_CA_CERTS=$PWD/sluice-ca.crt`;
}

/** Loads the existing CA of a state directory without creating one. */
export async function existingCa(state: string | undefined): Promise<CertificateAuthority> {
  const dir = stateDirFrom(state);
  return await loadCa(`${dir}/ca.crt`, `${dir}/ca.key`);
}

/** `sluice ca export`: the public certificate only. */
export async function runCaExport(
  opts: { state?: string; out?: string },
): Promise<string | undefined> {
  const pem = exportCaPem(await existingCa(opts.state));
  if (!opts.out) return pem.trimEnd();
  await Deno.writeTextFile(opts.out, pem, { mode: 0o644 });
  return undefined;
}
