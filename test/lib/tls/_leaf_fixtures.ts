/**
 * Shared by leaf_template_test.ts and mint_leaf_clients_test.ts: the names leaves are minted
 * for, temp dirs, openssl, and openssl-made CAs as users bring them.
 */
import assert from "node:assert/strict";

const LONGEST = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");

/** Every kind of name a leaf is minted for, each as a client would send it. */
export const LEAF_NAMES: readonly string[] = [
  "example.test",
  "API.Example.TEST.", // case and a trailing dot are normalized away
  "localhost",
  "a.b.c.d.e.example.test",
  "_acme-challenge.example.test", // "_" is no PrintableString character: a UTF8String CN
  "xn--bcher-kva.example.test", // an IDN in its ASCII form
  "wildcard.example.test", // looks like one in words only: "*" is refused
  "9.example.test",
  "1.2.3.4.example.test", // dotted digits that are not an IPv4 literal
  "c".repeat(60) + ".test", // 65 characters: just past the CN limit, so SAN only
  "c".repeat(59) + ".test", // 64 characters: still has a CN
  "a".repeat(63) + ".test", // the longest label
  LONGEST, // 253 characters, the longest name
  "127.0.0.1",
  "10.255.0.1",
  "0.0.0.0",
  "255.255.255.255",
  "::1",
  "[2001:db8::5]",
  "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
  "fe80::1",
  "::ffff:1.2.3.4",
  "::",
];

if (LONGEST.length !== 253) throw new Error("fixture: LONGEST must be 253 characters");

/**
 * Run `fn` with a fresh temporary directory, removed afterwards.
 *
 * @param fn the test body
 */
export async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "sluice-leaf-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** An openssl run's outcome. */
export type Run = { code: number; stdout: string; stderr: string };

/**
 * Run openssl.
 *
 * @param args its arguments
 * @returns exit code and output
 */
export async function runOpenssl(...args: string[]): Promise<Run> {
  const out = await new Deno.Command("openssl", { args, stdout: "piped", stderr: "piped" })
    .output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/**
 * Run openssl and insist it succeeds.
 *
 * @param args its arguments
 * @returns its stdout
 */
export async function openssl(...args: string[]): Promise<string> {
  const r = await runOpenssl(...args);
  assert.equal(r.code, 0, `openssl ${args.join(" ")} failed: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/**
 * A CA made by openssl, as a user would bring it.
 *
 * @param dir where to write it
 * @param name file name stem (and CN unless `subject` is given)
 * @param opts key type, subject (openssl `-subj` form), validity in days, and the extensions
 *   (openssl `-addext` values; default a CA limited to signing leaves)
 * @returns the certificate and key paths
 */
export async function opensslCa(
  dir: string,
  name: string,
  opts: { key?: "ec" | "p384" | "rsa"; subject?: string; days?: number; exts?: string[] } = {},
): Promise<{ cert: string; key: string }> {
  const key = `${dir}/${name}.key`;
  const cert = `${dir}/${name}.crt`;
  const keyArgs = {
    ec: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    p384: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    rsa: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
  }[opts.key ?? "ec"];
  await openssl("genpkey", ...keyArgs, "-out", key);
  await openssl(
    "req",
    "-x509",
    "-new",
    "-key",
    key,
    "-subj",
    opts.subject ?? `/CN=${name}`,
    ...(opts.exts ??
      ["basicConstraints=critical,CA:TRUE,pathlen:0", "keyUsage=critical,keyCertSign,cRLSign"])
      .flatMap((e) => ["-addext", e]),
    "-days",
    String(opts.days ?? 30),
    "-out",
    cert,
  );
  return { cert, key };
}
