/**
 * sluice's certificate authority: create, load or generate in memory the CA that signs the
 * per-host leaf certificates presented to intercepted clients, and mint those leaves.
 *
 * Security choices, each for a reason:
 * - The CA private key never leaves this module: {@link CertificateAuthority} carries only
 *   public data, and the key lives in a module-private map, as a `node:crypto` `KeyObject`
 *   (leaves are signed with it) and a non-extractable `CryptoKey` (for the reference mint).
 *   Neither prints key material in a log line, a JSON dump or an error.
 * - `ca.key` is created with mode 0600 from its first byte (a fresh temporary file opened with
 *   that mode, then renamed into place), never written first and restricted after.
 * - The CA may sign only leaves (pathLen 0) and its keyUsage is limited to certificate and CRL
 *   signing, so a leaked leaf key is worth one host for a few days, not a new CA.
 * - All leaves of one CA object share ONE key pair (generated in memory when the CA object is
 *   made, never stored). A leaf is only as trustworthy as the CA that signed it anyway; sharing
 *   the key spares a key generation per host, and it never touches disk.
 * - Leaves are minted from a DER template built once per CA object (./leaf_template.ts): only
 *   serial, validity, CN and SAN are encoded per host, then ONE signature. Measured
 *   with bench/leaf_cache_bench.ts (P-256 CA): median ~3 ms per leaf through @peculiar/x509,
 *   ~0.6 ms through the template, which is the one signature's cost. It covers every CA key
 *   this module accepts (P-256, P-384, RSA), so there is no fallback; the @peculiar/x509 path
 *   stays as {@link mintLeafReference}, the oracle the tests compare the template's bytes with.
 * - A CA is read with `node:crypto`'s native `X509Certificate` and ./der.ts, not
 *   `@peculiar/x509`: that library costs ~14 MiB of resident memory once loaded (./der.ts says
 *   how it was measured), so it is imported only when a CA is generated or by
 *   {@link mintLeafReference}. A `serve` that loads an existing CA never loads it.
 * - Leaf names come from attacker-influenced SNI and Host values, so they are checked to be a
 *   plain DNS name or IP literal before they go into a certificate.
 *
 * Why one file of ~770 lines: creating, loading and minting share the key and certificate
 * handling (and the 0600 rules for keys) that must not diverge.
 *
 * @module
 */
import { parseIp } from "../../policy/address.ts";
import type * as X509 from "@peculiar/x509";
import { Buffer } from "node:buffer";
import {
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  sign as nodeSign,
  X509Certificate,
} from "node:crypto";
import {
  allowsCertSign,
  type CertificateParts,
  certificateParts,
  keyIdentifier,
  subjectKeyId,
} from "./der.ts";
import {
  buildLeafTemplate,
  certificatePem,
  encodeCertificate,
  encodeLeafTbs,
  type LeafSignatureAlgorithm,
  type LeafTemplate,
} from "./leaf_template.ts";

/** Thrown for every CA problem: unreadable or mismatched files, a non-CA certificate, a bad name. */
export class CaError extends Error {
  /**
   * @param message what failed, on which file or name, and what to do
   * @param options the underlying error, if any
   */
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CaError";
  }
}

/**
 * A loaded or generated certificate authority. Only public data is visible; the private key
 * stays inside this module (see the module doc). Pass it to {@link mintLeaf} or a `LeafCache`.
 */
export interface CertificateAuthority {
  /** The CA certificate as PEM, followed by any further certificates of a user-provided file. */
  readonly certPem: string;
  /** The CA's subject as a string, e.g. "CN=sluice local CA 1a2b3c4d, O=sluice". */
  readonly subject: string;
  /** SHA-256 over the CA certificate's DER, colon-separated uppercase hex (as openssl prints). */
  readonly fingerprintSha256: string;
  /** Start of the CA certificate's validity. */
  readonly notBefore: Date;
  /** End of the CA certificate's validity; leaves never outlive it. */
  readonly notAfter: Date;
  /** The certificate file it was loaded from, or undefined for an in-memory (ephemeral) CA. */
  readonly certPath?: string;
}

/** A minted leaf: the chain to serve (leaf first, then the CA) and the shared leaf key. */
export interface MintedLeaf {
  /** PEM: the leaf certificate followed by the CA's certificate(s). */
  certPem: string;
  /** PEM (PKCS#8) private key of the leaf; the same for every leaf of one CA object. */
  keyPem: string;
  /** Start of the leaf's validity (backdated for clock skew). */
  notBefore: Date;
  /** End of the leaf's validity. */
  notAfter: Date;
}

/** Options of {@link mintLeaf}. */
export interface MintLeafOptions {
  /** The current time; defaults to `new Date()`. */
  now?: Date;
  /** How long the leaf is valid from `now`; default {@link DEFAULT_LEAF_VALIDITY_HOURS}. */
  validityHours?: number;
}

/** What `sluice ca show` prints. */
export interface CaInfo {
  subject: string;
  fingerprintSha256: string;
  notBefore: Date;
  notAfter: Date;
  /** The certificate file, or undefined for an ephemeral CA. */
  certPath?: string;
}

/** A name a leaf is minted for, after {@link normalizeLeafName}. */
export type LeafName = { kind: "dns" | "ip"; value: string };

/** Default leaf validity: one week. Short, because leaves are re-minted on demand anyway. */
export const DEFAULT_LEAF_VALIDITY_HOURS = 7 * 24;
/** Leaves start this long before "now", so clients with a slow clock accept them. */
export const LEAF_BACKDATE_MS = 60 * 60 * 1000;
/** Validity of a CA created by {@link initCa} or {@link ephemeralCa}: ten years. */
export const CA_VALIDITY_DAYS = 3650;
/** The CA certificate's file name inside the state directory. */
export const CA_CERT_FILE = "ca.crt";
/** The CA private key's file name inside the state directory. */
export const CA_KEY_FILE = "ca.key";

/** What stays private to this module for each CA object. */
interface Internals {
  certDer: Uint8Array<ArrayBuffer>;
  signingKey: CryptoKey;
  /** The same key for `node:crypto`'s synchronous `sign` (see {@link mintLeafSync}). */
  signer: KeyObject;
  /** The signature's hash as `node:crypto` names it: "sha256" or "sha384". */
  signHash: string;
  signingAlgorithm: Algorithm | EcdsaParams;
  /** The key id of its leaves' authorityKeyIdentifier: the CA's own subjectKeyIdentifier. */
  authorityKeyId: Uint8Array;
  /** The shared leaf key pair and the leaf template, made with the CA object. */
  leafKey: LeafKey;
}

/** The shared leaf key of one CA object, and what is fixed in every leaf it signs. */
interface LeafKey {
  pair: CryptoKeyPair;
  pem: string;
  subjectKeyId: Uint8Array;
  template: LeafTemplate;
}

const internals = new WeakMap<CertificateAuthority, Internals>();

const P256: EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };
const ECDSA_SHA256: EcdsaParams = { name: "ECDSA", hash: "SHA-256" };

/**
 * The paths of the CA files inside a state directory.
 *
 * @param stateDir the state directory (see `resolveStateDir`)
 * @returns the certificate and key paths
 */
export function caPaths(stateDir: string): { cert: string; key: string } {
  return { cert: `${stateDir}/${CA_CERT_FILE}`, key: `${stateDir}/${CA_KEY_FILE}` };
}

/**
 * Load the CA from a state directory, or create it there if it does not exist yet. The
 * directory is created with mode 0700, `ca.key` with 0600 and `ca.crt` with 0644.
 *
 * @param stateDir the state directory
 * @param opts `force: true` replaces an existing CA with a new one
 * @returns the CA and whether it was created by this call
 * @throws {CaError} if only one of the two files exists, or they cannot be read or written, or
 *   the existing files are not a valid CA (see {@link loadCa})
 */
export async function initCa(
  stateDir: string,
  opts: { force?: boolean } = {},
): Promise<{ ca: CertificateAuthority; created: boolean }> {
  const paths = caPaths(stateDir);
  try {
    await Deno.mkdir(stateDir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new CaError(
      `Cannot create state directory ${stateDir}: ${errorText(e)}; ` +
        `choose another with --state DIR or SLUICE_STATE_DIR`,
      { cause: e },
    );
  }
  if (!opts.force) {
    const [hasCert, hasKey] = await Promise.all([exists(paths.cert), exists(paths.key)]);
    if (hasCert && hasKey) return { ca: await loadCa(paths.cert, paths.key), created: false };
    if (hasCert !== hasKey) {
      const [found, lost] = hasCert ? [paths.cert, paths.key] : [paths.key, paths.cert];
      throw new CaError(
        `Incomplete CA in ${stateDir}: found ${found} but not ${lost}; restore the missing ` +
          `file, or run "sluice ca init --force" to replace the CA (clients must then trust ` +
          `the new one)`,
      );
    }
  }
  const { ca, keyPem } = await generateCa("local");
  await writeCaFiles(stateDir, ca.certPem, keyPem);
  return { ca: withPath(ca, paths.cert), created: true };
}

/**
 * Load a CA from a certificate file and a private key file, e.g. a user-provided `tls.ca`.
 * The first certificate in the file is the CA; further certificates (intermediates up to a
 * root) are served after it. Checks that the certificate is a currently valid CA certificate
 * and that the key belongs to it.
 *
 * @param certPath PEM file with the CA certificate (first) and optional chain certificates
 * @param keyPath PEM file with the CA's unencrypted private key (PKCS#8, SEC1 or PKCS#1)
 * @param opts `now` for the validity check, default the current time
 * @returns the CA
 * @throws {CaError} naming the file and the fix, when a path is missing, a file cannot be
 *   read or parsed, the certificate is not a CA or not valid now, or the key does not match
 */
export async function loadCa(
  certPath: string,
  keyPath: string,
  opts: { now?: Date } = {},
): Promise<CertificateAuthority> {
  if (!certPath || !keyPath) {
    const [given, lacking] = certPath ? ["cert", "key"] : ["key", "cert"];
    throw new CaError(
      `A user-provided CA needs both tls.ca.cert and tls.ca.key, but only tls.ca.${given} is ` +
        `set; add tls.ca.${lacking}, or remove tls.ca to use sluice's own CA`,
    );
  }
  const certText = await readText(certPath, "CA certificate", "tls.ca.cert");
  const keyText = await readText(keyPath, "CA private key", "tls.ca.key");

  const blocks = pemBlocks(certText, "CERTIFICATE");
  if (blocks.length === 0) {
    throw new CaError(
      `No PEM certificate in ${certPath}: expected a "-----BEGIN CERTIFICATE-----" block; ` +
        `point tls.ca.cert at the CA certificate in PEM form`,
    );
  }
  let certs: X509Certificate[];
  let parts: CertificateParts;
  try {
    certs = blocks.map((b) => new X509Certificate(b));
    parts = certificateParts(new Uint8Array(certs[0].raw));
  } catch (e) {
    throw new CaError(`Cannot parse certificate in ${certPath}: ${errorText(e)}`, { cause: e });
  }
  const cert = certs[0];
  checkIsCa(cert, parts, certPath, opts.now ?? new Date());

  let key: KeyObject;
  try {
    key = createPrivateKey(keyText);
  } catch (e) {
    // The parser's message never contains key material, only what it expected.
    throw new CaError(
      `Cannot read the private key in ${keyPath}: ${errorText(e)}; expected an unencrypted ` +
        `PEM key ("PRIVATE KEY", "EC PRIVATE KEY" or "RSA PRIVATE KEY"); decrypt an encrypted ` +
        `one with "openssl pkey -in KEY -out KEY.plain"`,
      { cause: e },
    );
  }
  if (key.type !== "private") {
    throw new CaError(
      `${keyPath} holds a public key, not a private key; point tls.ca.key at the CA's private key`,
    );
  }
  const keySpki = new Uint8Array(createPublicKey(key).export({ type: "spki", format: "der" }));
  if (!bytesEqual(keySpki, parts.spki)) {
    throw new CaError(
      `The key in ${keyPath} does not belong to the certificate in ${certPath} (their public ` +
        `keys differ); point tls.ca.key at the key the CA certificate was issued for`,
    );
  }
  const { importAlg, signingAlgorithm } = signingParams(key, keyPath);
  const pkcs8 = new Uint8Array(key.export({ type: "pkcs8", format: "der" }));
  // Not extractable: once imported, nothing in the process can read the key back out.
  const signingKey = await crypto.subtle.importKey("pkcs8", pkcs8, importAlg, false, ["sign"]);
  pkcs8.fill(0);

  // Leaves must name the CA's key the way the CA names itself, or chain builders that match
  // AKI to SKI will not find it.
  let authorityKeyId: Uint8Array;
  try {
    authorityKeyId = subjectKeyId(parts) ?? await keyIdentifier(parts.spki);
  } catch (e) {
    throw new CaError(`Cannot parse certificate in ${certPath}: ${errorText(e)}`, { cause: e });
  }
  const chainPem = certs.map((c) => certificatePem(new Uint8Array(c.raw))).join("");
  return await makeCa(
    cert,
    chainPem,
    { signingKey, signer: key },
    signingAlgorithm,
    authorityKeyId,
    certPath,
  );
}

/**
 * Generate a CA in memory only (`--ephemeral-ca`): nothing is written to disk, and it is gone
 * when the process exits. Clients must be given its certificate (see {@link exportCaPem}).
 *
 * @returns the CA
 */
export async function ephemeralCa(): Promise<CertificateAuthority> {
  return (await generateCa("ephemeral")).ca;
}

/**
 * Mint a leaf certificate for one host name or IP literal, signed by `ca`. ECDSA P-256 with the
 * CA object's shared leaf key; SAN = the name (DNS or IP), CN = the name when it fits the 64
 * characters X.520 allows; serverAuth only; a random positive 128-bit serial; valid from one
 * hour before `now` for `validityHours`, never beyond the CA's own end. Encoded from the CA
 * object's DER template (./leaf_template.ts) and signed once: no key generation, no ASN.1
 * object model, so it costs about one signature (~0.6 ms for P-256).
 *
 * Synchronous on purpose: `node:crypto`'s `sign`, not WebCrypto's. Deno 2.9.6 loses a TLS
 * resolver's answer for a handshake of the same name that looks it up after the answer was sent
 * but before Deno stored it (ext/tls/tls_key.rs resubscribes it to a spent broadcast): it ends
 * with a close_notify. An answer that arrives from WebCrypto's thread lands at a moment Deno's
 * tasks choose; a synchronous one lets the resolver choose (ingress/direct.ts, `onTimerTurn`;
 * the hop closes the race in ingress/terminator.ts); test/e2e/first_wave_test.ts sends such
 * bursts. The price: the signature blocks the event loop, once per name per leaf validity. Measured with
 * `node:crypto` `sign` on the 2-core VM: ~0.6 ms for P-256, 2.0 ms for RSA-2048, 15.2 ms for
 * RSA-4096 (a user's `tls.ca`), which docs/data-path.md passes on.
 *
 * @param ca the signing CA
 * @param name a DNS name (case and one trailing dot ignored) or an IPv4/IPv6 literal
 *   (brackets allowed)
 * @param opts the current time and validity
 * @returns the chain PEM (leaf, then CA), the leaf key PEM and the validity
 * @throws {CaError} if the name is not a plain DNS name or IP literal, the validity is not a
 *   positive number, or the CA has expired
 */
export function mintLeafSync(
  ca: CertificateAuthority,
  name: string,
  opts: MintLeafOptions = {},
): MintedLeaf {
  const plan = leafPlan(ca, name, opts);
  const { leafKey } = plan.inner;
  const { template } = leafKey;
  const tbs = encodeLeafTbs(template, {
    serial: randomSerialBytes(),
    notBefore: plan.notBefore,
    notAfter: plan.notAfter,
    name: plan.name,
  });
  // IEEE P1363 (raw r||s) for ECDSA, as WebCrypto gives it and the template frames it; RSA
  // ignores the option (PKCS#1 v1.5).
  const signature = new Uint8Array(
    nodeSign(plan.inner.signHash, tbs, { key: plan.inner.signer, dsaEncoding: "ieee-p1363" }),
  );
  return {
    certPem: certificatePem(encodeCertificate(template, tbs, signature)) + ca.certPem,
    keyPem: leafKey.pem,
    notBefore: plan.notBefore,
    notAfter: plan.notAfter,
  };
}

/**
 * {@link mintLeafSync} for callers that await: the same leaf.
 *
 * @param ca the signing CA
 * @param name as for {@link mintLeafSync}
 * @param opts as for {@link mintLeafSync}
 * @returns as {@link mintLeafSync} does
 * @throws {CaError} (as a rejection) as {@link mintLeafSync} does
 */
export function mintLeaf(
  ca: CertificateAuthority,
  name: string,
  opts: MintLeafOptions = {},
): Promise<MintedLeaf> {
  // Not `async` with no await (the linter's rule): a throw still becomes a rejection.
  try {
    return Promise.resolve(mintLeafSync(ca, name, opts));
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * {@link mintLeaf} as it was before the DER template: the same leaf, built through
 * `@peculiar/x509` (~5 times slower). Not used on the data path; kept as the independent
 * reference the template's output is compared with, byte for byte apart from the serial and
 * signature (test/lib/tls/leaf_template_test.ts), and for bench/leaf_cache_bench.ts.
 *
 * @param ca the signing CA
 * @param name as for {@link mintLeaf}
 * @param opts as for {@link mintLeaf}
 * @returns as {@link mintLeaf} does
 * @throws {CaError} as {@link mintLeaf} does
 */
export async function mintLeafReference(
  ca: CertificateAuthority,
  name: string,
  opts: MintLeafOptions = {},
): Promise<MintedLeaf> {
  const plan = leafPlan(ca, name, opts);
  const { inner, name: leafName } = plan;
  const { leafKey } = inner;
  const fitsCn = leafName.value.length <= 64;
  const x509 = await peculiarX509();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: hex(randomSerialBytes()),
    // RFC 5280 4.2.1.6: with an empty subject the SAN extension must be critical.
    subject: fitsCn ? [{ CN: [leafName.value] }] : [],
    issuer: new x509.X509Certificate(inner.certDer).subjectName,
    notBefore: plan.notBefore,
    notAfter: plan.notAfter,
    publicKey: leafKey.pair.publicKey,
    signingKey: inner.signingKey,
    signingAlgorithm: inner.signingAlgorithm,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(
        [{ type: leafName.kind, value: leafName.value }],
        !fitsCn,
      ),
      new x509.AuthorityKeyIdentifierExtension(hex(inner.authorityKeyId)),
      new x509.SubjectKeyIdentifierExtension(hex(leafKey.subjectKeyId)),
    ],
  });
  return {
    certPem: certificatePem(new Uint8Array(cert.rawData)) + ca.certPem,
    keyPem: leafKey.pem,
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
  };
}

/** What both minting paths check and compute before encoding. */
function leafPlan(
  ca: CertificateAuthority,
  name: string,
  opts: MintLeafOptions,
): {
  inner: Internals;
  name: LeafName;
  notBefore: Date;
  notAfter: Date;
} {
  const inner = internalsOf(ca);
  const leafName = normalizeLeafName(name);
  const now = opts.now ?? new Date();
  const hours = opts.validityHours ?? DEFAULT_LEAF_VALIDITY_HOURS;
  if (!(hours > 0) || !Number.isFinite(hours)) {
    throw new CaError(`Leaf validity must be a positive number of hours, got ${hours}`);
  }
  if (now.getTime() >= ca.notAfter.getTime()) {
    throw new CaError(
      `The CA "${ca.subject}" expired on ${ca.notAfter.toISOString()}; create a new one with ` +
        `"sluice ca init --force" (or replace tls.ca) and have clients trust it`,
    );
  }
  // X.509 time has whole seconds: return the dates the certificate will actually carry.
  const notBefore = wholeSeconds(now.getTime() - LEAF_BACKDATE_MS);
  const notAfter = wholeSeconds(Math.min(now.getTime() + hours * 3_600_000, ca.notAfter.getTime()));
  return { inner, name: leafName, notBefore, notAfter };
}

function wholeSeconds(ms: number): Date {
  return new Date(Math.floor(ms / 1000) * 1000);
}

/**
 * Check and canonicalize a name a leaf is to be minted for. Use the result's `value` as a cache
 * key, so "A.test", "a.test." and "a.test" share one leaf.
 *
 * @param name a DNS name or an IPv4/IPv6 literal (IPv6 optionally in brackets)
 * @returns the kind and the canonical text: lowercase DNS without a trailing dot, dotted-quad
 *   IPv4, or RFC 5952 IPv6
 * @throws {CaError} for an empty name, a wildcard, an IPv6 zone, or characters a DNS name
 *   cannot have
 */
export function normalizeLeafName(name: string): LeafName {
  let n = name;
  if (n.startsWith("[") && n.endsWith("]")) n = n.slice(1, -1);
  if (n.includes(":")) {
    const ip = n.includes("%") ? undefined : parseIp(n);
    if (!ip || ip.family !== 6) {
      throw new CaError(
        `Cannot mint a certificate for ${JSON.stringify(name)}: not a valid IPv6 address` +
          (n.includes("%") ? " (a zone identifier has no place in a certificate)" : ""),
      );
    }
    return { kind: "ip", value: ip.text };
  }
  n = n.toLowerCase();
  if (n.endsWith(".")) n = n.slice(0, -1);
  // The cheap shape test first; policy/address.ts is the one IP parser sluice has.
  if (/^\d{1,3}(?:\.\d{1,3}){3}$/.test(n)) {
    const ip = parseIp(n);
    if (!ip || ip.family !== 4) {
      throw new CaError(
        `Cannot mint a certificate for ${JSON.stringify(name)}: not a valid IPv4 address`,
      );
    }
    return { kind: "ip", value: ip.text };
  }
  const labels = n.split(".");
  // Underscores are not hostname characters but do occur in real names, and TLS clients
  // accept them; anything else outside [a-z0-9-] (spaces, "*", "/", NUL, non-ASCII) is refused.
  const valid = n.length > 0 && n.length <= 253 &&
    labels.every((l) => /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/.test(l));
  if (!valid) {
    const why = name === ""
      ? "the client sent no server name"
      : "expected labels of a-z, 0-9, '-' or '_', at most 63 characters each, 253 in all";
    throw new CaError(
      `Cannot mint a certificate for ${JSON.stringify(name)}: not a DNS name or IP address ` +
        `(${why})`,
    );
  }
  return { kind: "dns", value: n };
}

/**
 * The data `sluice ca show` prints.
 *
 * @param ca the CA
 * @returns subject, SHA-256 fingerprint, validity and the certificate path if any
 */
export function caShow(ca: CertificateAuthority): CaInfo {
  const info: CaInfo = {
    subject: ca.subject,
    fingerprintSha256: ca.fingerprintSha256,
    notBefore: ca.notBefore,
    notAfter: ca.notAfter,
  };
  if (ca.certPath !== undefined) info.certPath = ca.certPath;
  return info;
}

/**
 * The CA's public certificate(s) as PEM, for `sluice ca export` and for clients' trust stores.
 * Never contains a private key.
 *
 * @param ca the CA
 * @returns PEM text ending in a newline
 */
export function exportCaPem(ca: CertificateAuthority): string {
  return ca.certPem;
}

// ---------------------------------------------------------------------------------------------

async function generateCa(
  kind: "local" | "ephemeral",
): Promise<{ ca: CertificateAuthority; keyPem: string }> {
  const x509 = await peculiarX509();
  const keys = await crypto.subtle.generateKey(P256, true, ["sign", "verify"]);
  const id = hex(crypto.getRandomValues(new Uint8Array(4)));
  const now = Date.now();
  const created = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    // O=sluice plus a random id: distinct from every leaf subject, and two installations' CAs
    // are told apart in a trust store listing.
    name: [{ CN: [`sluice ${kind} CA ${id}`] }, { O: ["sluice"] }],
    keys,
    signingAlgorithm: ECDSA_SHA256,
    notBefore: new Date(now - LEAF_BACKDATE_MS),
    notAfter: new Date(now + CA_VALIDITY_DAYS * 86_400_000),
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  // Extractable only so the local CA can be written once; the signing copy below is not.
  const keyPem = kind === "local" ? await pkcs8Pem(keys.privateKey) : "";
  const signingKey = await reimportNonExtractable(keys.privateKey);
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", keys.privateKey));
  const signer = createPrivateKey({ key: Buffer.from(pkcs8), format: "der", type: "pkcs8" });
  pkcs8.fill(0);
  // Read back as a loaded CA is: one description of a CA, whichever way it came.
  const cert = new X509Certificate(new Uint8Array(created.rawData));
  const authorityKeyId = await keyIdentifier(
    new Uint8Array(await crypto.subtle.exportKey("spki", keys.publicKey)),
  );
  const chainPem = certificatePem(new Uint8Array(cert.raw));
  const ca = await makeCa(
    cert,
    chainPem,
    { signingKey, signer },
    ECDSA_SHA256,
    authorityKeyId,
    undefined,
  );
  return { ca, keyPem };
}

async function reimportNonExtractable(key: CryptoKey): Promise<CryptoKey> {
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", key));
  const out = await crypto.subtle.importKey("pkcs8", pkcs8, P256, false, ["sign"]);
  pkcs8.fill(0);
  return out;
}

async function makeCa(
  cert: X509Certificate,
  chainPem: string,
  keys: { signingKey: CryptoKey; signer: KeyObject },
  signingAlgorithm: Algorithm | EcdsaParams,
  authorityKeyId: Uint8Array,
  certPath: string | undefined,
): Promise<CertificateAuthority> {
  const certDer = new Uint8Array(cert.raw);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", certDer));
  const { notBefore, notAfter } = validity(cert);
  const ca: CertificateAuthority = Object.freeze({
    certPem: chainPem,
    subject: subjectText(cert),
    fingerprintSha256: colonHex(digest),
    notBefore,
    notAfter,
    ...(certPath === undefined ? {} : { certPath }),
  });
  // Made now (~1 ms, once per CA object) rather than at the first mint: the first handshake for
  // a new name then pays one signature like every other, and nothing runs in the background.
  const leafKey = await newLeafKey(certDer, signingAlgorithm, authorityKeyId);
  const hash = "hash" in signingAlgorithm ? String(signingAlgorithm.hash) : "SHA-256";
  internals.set(ca, {
    certDer,
    signingKey: keys.signingKey,
    signer: keys.signer,
    signHash: hash.replace("-", "").toLowerCase(),
    signingAlgorithm,
    authorityKeyId,
    leafKey,
  });
  return ca;
}

/**
 * `@peculiar/x509`, loaded on first use: only generating a CA and {@link mintLeafReference}
 * need it (see the module doc for why it is not loaded up front).
 */
async function peculiarX509(): Promise<typeof X509> {
  // Its dependency injection (tsyringe) needs the Reflect metadata polyfill loaded first.
  await import("reflect-metadata");
  const x509 = await import("@peculiar/x509");
  x509.cryptoProvider.set(crypto);
  return x509;
}

/** The subject as "CN=..., O=...", the form sluice has always printed (node:crypto joins with newlines). */
function subjectText(cert: X509Certificate): string {
  return cert.subject.split("\n").join(", ");
}

function validity(cert: X509Certificate): { notBefore: Date; notAfter: Date } {
  return { notBefore: new Date(cert.validFrom), notAfter: new Date(cert.validTo) };
}

function withPath(ca: CertificateAuthority, certPath: string): CertificateAuthority {
  const inner = internalsOf(ca);
  const out = Object.freeze({ ...ca, certPath });
  internals.set(out, inner);
  return out;
}

function internalsOf(ca: CertificateAuthority): Internals {
  const inner = internals.get(ca);
  if (inner === undefined) {
    throw new CaError(
      "Not a CA object from lib/tls/ca.ts: obtain one with initCa, loadCa or ephemeralCa",
    );
  }
  return inner;
}

async function newLeafKey(
  caCertDer: Uint8Array,
  signingAlgorithm: Algorithm | EcdsaParams,
  authorityKeyId: Uint8Array,
): Promise<LeafKey> {
  const pair = await crypto.subtle.generateKey(P256, true, ["sign", "verify"]);
  const leafSpkiDer = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  const subjectKeyId = await keyIdentifier(leafSpkiDer);
  const template = buildLeafTemplate({
    caCertDer,
    leafSpkiDer,
    authorityKeyId,
    subjectKeyId,
    signature: templateSignature(signingAlgorithm),
  });
  return { pair, pem: await pkcs8Pem(pair.privateKey), subjectKeyId, template };
}

/** The template's name for how the CA signs (see signingParams for what can occur). */
function templateSignature(alg: Algorithm | EcdsaParams): LeafSignatureAlgorithm {
  const hash = "hash" in alg ? alg.hash : undefined;
  if (alg.name === "ECDSA" && hash === "SHA-256") return "ecdsa-sha256";
  if (alg.name === "ECDSA" && hash === "SHA-384") return "ecdsa-sha384";
  if (alg.name === "RSASSA-PKCS1-v1_5" && hash === "SHA-256") return "rsa-sha256";
  throw new CaError(`No leaf template for CA signature algorithm ${JSON.stringify(alg)}`);
}

/** Write the pair so that `ca.key` is 0600 from creation and both appear only when complete. */
async function writeCaFiles(dir: string, certPem: string, keyPem: string): Promise<void> {
  const paths = caPaths(dir);
  const tag = hex(crypto.getRandomValues(new Uint8Array(8)));
  const tmpKey = `${dir}/.${CA_KEY_FILE}.${tag}.tmp`;
  const tmpCert = `${dir}/.${CA_CERT_FILE}.${tag}.tmp`;
  try {
    // createNew: a file (or symlink) already at the temporary name is an error, never followed.
    await Deno.writeTextFile(tmpKey, keyPem, { mode: 0o600, createNew: true });
    await Deno.writeTextFile(tmpCert, certPem, { mode: 0o644, createNew: true });
    // The key first: a crash in between leaves a key without a certificate, which initCa
    // reports, rather than a certificate whose key is lost.
    await Deno.rename(tmpKey, paths.key);
    await Deno.rename(tmpCert, paths.cert);
  } catch (e) {
    await Deno.remove(tmpKey).catch(() => {});
    await Deno.remove(tmpCert).catch(() => {});
    throw new CaError(
      `Cannot write the CA into ${dir}: ${errorText(e)}; check that the directory is writable ` +
        `by this user, or choose another with --state DIR`,
      { cause: e },
    );
  }
}

function checkIsCa(
  cert: X509Certificate,
  parts: CertificateParts,
  path: string,
  now: Date,
): void {
  const subject = subjectText(cert);
  const { notBefore, notAfter } = validity(cert);
  if (!cert.ca) {
    throw new CaError(
      `The certificate in ${path} ("${subject}") is not a CA certificate (basicConstraints ` +
        `CA:TRUE is missing); tls.ca.cert must be a CA that may sign certificates, e.g. one ` +
        `created by "sluice ca init"`,
    );
  }
  if (allowsCertSign(parts) === false) {
    throw new CaError(
      `The CA certificate in ${path} ("${subject}") may not sign certificates (its ` +
        `keyUsage lacks keyCertSign); use a CA certificate issued for certificate signing`,
    );
  }
  if (now.getTime() >= notAfter.getTime()) {
    throw new CaError(
      `The CA certificate in ${path} expired on ${notAfter.toISOString()}; renew it, ` +
        `or run "sluice ca init --force" for a new local CA`,
    );
  }
  if (now.getTime() < notBefore.getTime()) {
    throw new CaError(
      `The CA certificate in ${path} is not valid before ${notBefore.toISOString()}; ` +
        `check the system clock`,
    );
  }
}

function signingParams(
  key: KeyObject,
  keyPath: string,
): { importAlg: EcKeyImportParams | RsaHashedImportParams; signingAlgorithm: Algorithm } {
  if (key.asymmetricKeyType === "ec") {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    const table: Record<string, [string, string]> = {
      prime256v1: ["P-256", "SHA-256"],
      "P-256": ["P-256", "SHA-256"],
      secp384r1: ["P-384", "SHA-384"],
      "P-384": ["P-384", "SHA-384"],
    };
    const entry = curve === undefined ? undefined : table[curve];
    if (entry !== undefined) {
      return {
        importAlg: { name: "ECDSA", namedCurve: entry[0] },
        signingAlgorithm: { name: "ECDSA", hash: entry[1] } as EcdsaParams,
      };
    }
  }
  if (key.asymmetricKeyType === "rsa") {
    return {
      importAlg: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
      signingAlgorithm: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" } as Algorithm,
    };
  }
  const what = key.asymmetricKeyType === "ec"
    ? `EC curve ${key.asymmetricKeyDetails?.namedCurve}`
    : `${key.asymmetricKeyType} key`;
  throw new CaError(
    `The CA key in ${keyPath} is an unsupported ${what}; use an ECDSA P-256 or P-384 key or an ` +
      `RSA key`,
  );
}

async function readText(path: string, what: string, setting: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    const reason = e instanceof Deno.errors.NotFound
      ? "no such file"
      : e instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : errorText(e);
    throw new CaError(
      `Cannot read the ${what} ${path}: ${reason}; fix ${setting}, or run "sluice ca init" ` +
        `to create a local CA`,
      { cause: e },
    );
  }
}

function pemBlocks(text: string, label: string): string[] {
  const re = new RegExp(`-----BEGIN ${label}-----[\\s\\S]*?-----END ${label}-----`, "g");
  return text.match(re) ?? [];
}

async function pkcs8Pem(key: CryptoKey): Promise<string> {
  const der = new Uint8Array(await crypto.subtle.exportKey("pkcs8", key));
  const b64 = Buffer.from(der).toString("base64");
  der.fill(0);
  return `-----BEGIN PRIVATE KEY-----\n${b64.match(/.{1,64}/g)!.join("\n")}\n` +
    `-----END PRIVATE KEY-----\n`;
}

/** 16 random bytes, top bit clear so the INTEGER is positive without a pad byte, never 0-led. */
function randomSerialBytes(): Uint8Array {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[0] = (b[0] & 0x7f) | 0x01;
  return b;
}

function randomSerial(): string {
  return hex(randomSerialBytes());
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw new CaError(`Cannot inspect ${path}: ${errorText(e)}`, { cause: e });
  }
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function colonHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0").toUpperCase()).join(":");
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
