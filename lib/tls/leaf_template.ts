/**
 * A DER template of sluice's leaf certificates, built once per CA: minting a leaf then only
 * encodes the per-host fields (serial, validity, subject CN, subjectAltName) around fixed
 * bytes, and the caller makes ONE signature over the result.
 *
 * Why by hand: `@peculiar/x509` builds every leaf through its ASN.1 schema objects and DI
 * container. Measured on a 2-core AMD EPYC (bench/leaf_cache_bench.ts, and medians of 1000
 * interleaved mints), P-256 CA, shared leaf key: @peculiar/x509 2.9-3.4 ms per leaf (median),
 * this template 0.5-0.6 ms, of which the WebCrypto ECDSA signature alone is 0.5-0.6 ms and the
 * encoding plus PEM ~45 µs. So the signature is now the whole cost; a faster signer would be the
 * next step, not more work here (./ca.ts now signs with `node:crypto`, which measured the same).
 *
 * What it produces is pinned byte for byte against the @peculiar/x509 path it replaced (see
 * `mintLeafReference` in ./ca.ts and test/lib/tls/leaf_template_test.ts): same field order,
 * string types (PrintableString when the name allows it, else UTF8String), UTCTime up to 2049
 * and GeneralizedTime after, extension order and criticality. Only the issuer differs in
 * principle: it is copied from the CA certificate's own DER (the bytes chain builders compare),
 * where @peculiar/x509 re-encodes the parsed name.
 *
 * Covers every CA key ./ca.ts accepts (ECDSA P-256 and P-384, RSA with SHA-256): the caller
 * signs, and only the framing is done here (ECDSA's raw r||s, as WebCrypto and `node:crypto`'s
 * `dsaEncoding: "ieee-p1363"` give it, becomes a DER `Ecdsa-Sig-Value`). Pure: no I/O, no clock, no randomness; ./ca.ts supplies those.
 *
 * @module
 */
import { concatBytes } from "../bytes.ts";
import { certificateParts, DerError } from "./der.ts";
import { Buffer } from "node:buffer";
import { parseIp } from "../../policy/address.ts";

/** The CA signature algorithms a template can frame, as ./ca.ts signs with them. */
export type LeafSignatureAlgorithm = "ecdsa-sha256" | "ecdsa-sha384" | "rsa-sha256";

/** What is fixed for every leaf of one CA, for {@link buildLeafTemplate}. */
export interface LeafTemplateParts {
  /** The CA certificate's DER; its subject becomes every leaf's issuer, byte for byte. */
  caCertDer: Uint8Array;
  /** The shared leaf key's SubjectPublicKeyInfo DER. */
  leafSpkiDer: Uint8Array;
  /** The CA key's identifier for the authorityKeyIdentifier (the CA's own SKI when it has one). */
  authorityKeyId: Uint8Array;
  /** The leaf key's identifier for the subjectKeyIdentifier. */
  subjectKeyId: Uint8Array;
  /** How the CA signs. */
  signature: LeafSignatureAlgorithm;
}

/** The per-host fields of one leaf, for {@link encodeLeafTbs}. */
export interface LeafFields {
  /** The serial's INTEGER content: non-empty, positive (top bit clear), no redundant 0 byte. */
  serial: Uint8Array;
  /** Start of validity; milliseconds are dropped (X.509 time has whole seconds). */
  notBefore: Date;
  /** End of validity; milliseconds are dropped. */
  notAfter: Date;
  /** A name as `normalizeLeafName` in ./ca.ts returns it: canonical DNS name or IP text. */
  name: { kind: "dns" | "ip"; value: string };
}

/** Fixed bytes of one CA's leaves. Opaque: build with {@link buildLeafTemplate}. */
export interface LeafTemplate {
  /** `[0] { INTEGER 2 }`: the version, before the serial. */
  readonly version: Uint8Array;
  /** signature AlgorithmIdentifier + issuer Name, between the serial and the validity. */
  readonly algorithmAndIssuer: Uint8Array;
  /** The leaf SubjectPublicKeyInfo. */
  readonly spki: Uint8Array;
  /** basicConstraints, keyUsage, extKeyUsage: the extensions before the SAN. */
  readonly extensionsBeforeSan: Uint8Array;
  /** authorityKeyIdentifier, subjectKeyIdentifier: the extensions after the SAN. */
  readonly extensionsAfterSan: Uint8Array;
  /** The signature AlgorithmIdentifier again, for the outer Certificate. */
  readonly algorithm: Uint8Array;
  readonly signature: LeafSignatureAlgorithm;
}

/** Thrown when template input is malformed (a bug in the caller, not a user error). */
export class LeafTemplateError extends Error {
  /**
   * @param message what was malformed
   */
  constructor(message: string) {
    super(message);
    this.name = "LeafTemplateError";
  }
}

/** The most characters X.520 allows in a commonName; longer names go in the SAN only. */
export const MAX_CN_LENGTH = 64;

// OIDs as full DER TLVs.
const OID_CN = hexBytes("0603550403");
const OID_BASIC_CONSTRAINTS = hexBytes("0603551d13");
const OID_KEY_USAGE = hexBytes("0603551d0f");
const OID_EXT_KEY_USAGE = hexBytes("0603551d25");
const OID_SAN = hexBytes("0603551d11");
const OID_AKI = hexBytes("0603551d23");
const OID_SKI = hexBytes("0603551d0e");
const OID_SERVER_AUTH = hexBytes("06082b06010505070301");
const CRITICAL = hexBytes("0101ff");

const ALGORITHMS: Record<LeafSignatureAlgorithm, Uint8Array> = {
  // ecdsa-with-SHA256 / -SHA384: parameters absent (RFC 5758 3.2).
  "ecdsa-sha256": hexBytes("300a06082a8648ce3d040302"),
  "ecdsa-sha384": hexBytes("300a06082a8648ce3d040303"),
  // sha256WithRSAEncryption: parameters NULL (RFC 4055 5).
  "rsa-sha256": hexBytes("300d06092a864886f70d01010b0500"),
};

const TAG_INTEGER = 0x02;
const TAG_BIT_STRING = 0x03;
const TAG_OCTET_STRING = 0x04;
const TAG_UTF8_STRING = 0x0c;
const TAG_PRINTABLE_STRING = 0x13;
const TAG_UTC_TIME = 0x17;
const TAG_GENERALIZED_TIME = 0x18;
const TAG_SEQUENCE = 0x30;
const TAG_SET = 0x31;
const TAG_EXTENSIONS = 0xa3; // [3] EXPLICIT, constructed
const TAG_DNS_NAME = 0x82; // GeneralName [2] IA5String, implicit
const TAG_IP_ADDRESS = 0x87; // GeneralName [7] OCTET STRING, implicit
const TAG_KEY_ID = 0x80; // AuthorityKeyIdentifier keyIdentifier [0], implicit

/**
 * Prepare the fixed parts of every leaf one CA signs.
 *
 * @param parts the CA certificate, the shared leaf key, the key identifiers and the algorithm
 * @returns the template for {@link encodeLeafTbs} and {@link encodeCertificate}
 * @throws {LeafTemplateError} if the CA certificate's DER cannot be walked to its subject, or a
 *   key identifier is empty
 */
export function buildLeafTemplate(parts: LeafTemplateParts): LeafTemplate {
  if (parts.authorityKeyId.length === 0 || parts.subjectKeyId.length === 0) {
    throw new LeafTemplateError("A leaf template needs both key identifiers");
  }
  let issuer: Uint8Array;
  try {
    issuer = certificateParts(parts.caCertDer).subject;
  } catch (e) {
    if (!(e instanceof DerError)) throw e;
    throw new LeafTemplateError(`The CA certificate's DER: ${e.message}`);
  }
  const algorithm = ALGORITHMS[parts.signature];
  return Object.freeze({
    version: hexBytes("a003020102"),
    algorithmAndIssuer: concatBytes([algorithm, issuer]),
    spki: parts.leafSpkiDer.slice(),
    extensionsBeforeSan: concatBytes([
      // A leaf, and says so (critical, CA:FALSE is the empty SEQUENCE).
      extension(OID_BASIC_CONSTRAINTS, true, hexBytes("3000")),
      // digitalSignature only: ECDHE key exchange signs with the leaf key, nothing else.
      extension(OID_KEY_USAGE, true, hexBytes("03020780")),
      extension(OID_EXT_KEY_USAGE, false, tlv(TAG_SEQUENCE, OID_SERVER_AUTH)),
    ]),
    extensionsAfterSan: concatBytes([
      extension(OID_AKI, false, tlv(TAG_SEQUENCE, tlv(TAG_KEY_ID, parts.authorityKeyId))),
      extension(OID_SKI, false, tlv(TAG_OCTET_STRING, parts.subjectKeyId)),
    ]),
    algorithm,
    signature: parts.signature,
  });
}

/**
 * The DER TBSCertificate of one leaf: the bytes to sign.
 *
 * @param t the CA's template
 * @param f serial, validity and name
 * @returns the TBSCertificate DER
 * @throws {LeafTemplateError} for a serial that is not a minimal positive INTEGER, or an IP
 *   name that does not parse
 */
export function encodeLeafTbs(t: LeafTemplate, f: LeafFields): Uint8Array<ArrayBuffer> {
  const s = f.serial;
  if (s.length === 0 || s[0] >= 0x80 || (s[0] === 0 && s.length > 1 && s[1] < 0x80)) {
    throw new LeafTemplateError("A leaf serial must be a minimal positive INTEGER");
  }
  const fitsCn = f.name.value.length <= MAX_CN_LENGTH;
  // RFC 5280 4.2.1.6: with an empty subject the SAN extension must be critical.
  const subject = fitsCn
    ? tlv(
      TAG_SEQUENCE,
      tlv(TAG_SET, tlv(TAG_SEQUENCE, concatBytes([OID_CN, cnString(f.name.value)]))),
    )
    : hexBytes("3000");
  const san = extension(OID_SAN, !fitsCn, tlv(TAG_SEQUENCE, generalName(f.name)));
  return tlv(
    TAG_SEQUENCE,
    concatBytes([
      t.version,
      tlv(TAG_INTEGER, s),
      t.algorithmAndIssuer,
      tlv(TAG_SEQUENCE, concatBytes([time(f.notBefore), time(f.notAfter)])),
      subject,
      t.spki,
      tlv(
        TAG_EXTENSIONS,
        tlv(TAG_SEQUENCE, concatBytes([t.extensionsBeforeSan, san, t.extensionsAfterSan])),
      ),
    ]),
  );
}

/**
 * The DER Certificate: the TBSCertificate, the algorithm and the CA's signature over it.
 *
 * @param t the CA's template
 * @param tbs what {@link encodeLeafTbs} returned, unchanged since it was signed
 * @param signature the signature over `tbs`: raw r||s (IEEE P1363) for ECDSA, as is for RSA
 * @returns the Certificate DER
 * @throws {LeafTemplateError} for an ECDSA signature of odd or zero length
 */
export function encodeCertificate(
  t: LeafTemplate,
  tbs: Uint8Array,
  signature: Uint8Array,
): Uint8Array<ArrayBuffer> {
  const value = t.signature === "rsa-sha256" ? signature : ecdsaSigValue(signature);
  const bits = new Uint8Array(value.length + 1); // leading 0: no unused bits
  bits.set(value, 1);
  return tlv(TAG_SEQUENCE, concatBytes([tbs, t.algorithm, tlv(TAG_BIT_STRING, bits)]));
}

/**
 * A certificate's DER as a PEM block ending in a newline, 64 base64 characters a line.
 *
 * @param der the Certificate DER
 * @returns the PEM text
 */
export function certificatePem(der: Uint8Array): string {
  const b64 = base64(der);
  let out = "-----BEGIN CERTIFICATE-----\n";
  for (let i = 0; i < b64.length; i += 64) out += b64.slice(i, i + 64) + "\n";
  return out + "-----END CERTIFICATE-----\n";
}

// ---------------------------------------------------------------------------------------------

function extension(oid: Uint8Array, critical: boolean, value: Uint8Array): Uint8Array {
  return tlv(
    TAG_SEQUENCE,
    critical
      ? concatBytes([oid, CRITICAL, tlv(TAG_OCTET_STRING, value)])
      : concatBytes([oid, tlv(TAG_OCTET_STRING, value)]),
  );
}

function generalName(name: LeafFields["name"]): Uint8Array {
  if (name.kind === "ip") {
    const ip = parseIp(name.value);
    if (!ip) throw new LeafTemplateError(`Not an IP address: ${JSON.stringify(name.value)}`);
    return tlv(TAG_IP_ADDRESS, ip.bytes);
  }
  return tlv(TAG_DNS_NAME, ascii(name.value));
}

/** PrintableString when every character is allowed in one (as @peculiar/x509 chose), else UTF-8. */
function cnString(value: string): Uint8Array {
  const printable = /^[A-Za-z0-9 '()+,\-./:=?]*$/.test(value);
  return tlv(
    printable ? TAG_PRINTABLE_STRING : TAG_UTF8_STRING,
    printable ? ascii(value) : new TextEncoder().encode(value),
  );
}

/** RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050 (and before 1950). */
function time(d: Date): Uint8Array {
  const y = d.getUTCFullYear();
  const rest = pad2(d.getUTCMonth() + 1) + pad2(d.getUTCDate()) + pad2(d.getUTCHours()) +
    pad2(d.getUTCMinutes()) + pad2(d.getUTCSeconds()) + "Z";
  if (y >= 1950 && y <= 2049) return tlv(TAG_UTC_TIME, ascii(pad2(y % 100) + rest));
  return tlv(TAG_GENERALIZED_TIME, ascii(String(y).padStart(4, "0") + rest));
}

/** An IEEE P1363 r||s as the DER `SEQUENCE { r INTEGER, s INTEGER }` X.509 wants. */
function ecdsaSigValue(raw: Uint8Array): Uint8Array {
  if (raw.length === 0 || raw.length % 2 !== 0) {
    throw new LeafTemplateError(`An ECDSA signature of ${raw.length} bytes is not r||s`);
  }
  const half = raw.length / 2;
  return tlv(
    TAG_SEQUENCE,
    concatBytes([unsignedInteger(raw.subarray(0, half)), unsignedInteger(raw.subarray(half))]),
  );
}

/** A big-endian unsigned number as a minimal DER INTEGER. */
function unsignedInteger(bytes: Uint8Array): Uint8Array {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const v = bytes.subarray(i);
  if (v[0] < 0x80) return tlv(TAG_INTEGER, v);
  const padded = new Uint8Array(v.length + 1);
  padded.set(v, 1);
  return tlv(TAG_INTEGER, padded);
}

function tlv(tag: number, content: Uint8Array): Uint8Array<ArrayBuffer> {
  const n = content.length;
  const head = n < 0x80 ? 2 : n < 0x100 ? 3 : n < 0x10000 ? 4 : 5;
  const out = new Uint8Array(head + n);
  out[0] = tag;
  if (head === 2) {
    out[1] = n;
  } else {
    out[1] = 0x80 | (head - 2);
    for (let i = head - 1, v = n; i >= 2; i--, v >>>= 8) out[i] = v & 0xff;
  }
  out.set(content, head);
  return out;
}

/** Printable ASCII as bytes. Names reaching here are (normalizeLeafName refuses the rest). */
function ascii(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c > 0x7e) {
      throw new LeafTemplateError(`Not printable ASCII: ${JSON.stringify(s)}`);
    }
    out[i] = c;
  }
  return out;
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

function hexBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("base64");
}
