/**
 * What sluice reads out of a certificate's DER by hand: the subject Name's bytes, the
 * SubjectPublicKeyInfo, and the extensions ./ca.ts checks or copies (basicConstraints,
 * keyUsage, subjectKeyIdentifier). Everything else about a certificate (parsing it at all,
 * validity, the subject as text, the public key object) comes from `node:crypto`'s
 * `X509Certificate`, which is native in Deno.
 *
 * Why by hand and not an ASN.1 library: the only one sluice had was `@peculiar/x509`, and
 * loading it costs ~14 MiB of resident memory for the life of the process (measured: a Deno
 * server importing it beside `node:crypto` sat at 58.4 MiB against 44.4 without;
 * `asn1js` alone 53.7), all to read three extensions of one certificate at start. The walk
 * below is a TLV reader and a loop; `@peculiar/x509` is now loaded only to generate a new CA
 * and for `mintLeafReference` (see ./ca.ts), and by the tests that compare this module's
 * answers with its.
 *
 * Pure: no I/O, no clock, no randomness.
 *
 * @module
 */

/** Thrown for DER this module cannot walk: truncated, or not shaped like a certificate. */
export class DerError extends Error {
  /**
   * @param message what was malformed
   */
  constructor(message: string) {
    super(message);
    this.name = "DerError";
  }
}

/** One extension as the certificate carries it. */
export interface DerExtension {
  critical: boolean;
  /** The extnValue OCTET STRING's content: the extension's own DER. */
  value: Uint8Array;
}

/** The parts of a certificate sluice reads by hand. */
export interface CertificateParts {
  /** The subject Name, tag and length included: the bytes a leaf's issuer must repeat. */
  subject: Uint8Array;
  /** The SubjectPublicKeyInfo, tag and length included. */
  spki: Uint8Array;
  /** The extensions by OID in dotted form, e.g. "2.5.29.14". */
  extensions: Map<string, DerExtension>;
}

const TAG_BOOLEAN = 0x01;
const TAG_BIT_STRING = 0x03;
const TAG_OCTET_STRING = 0x04;
const TAG_OID = 0x06;
const TAG_SEQUENCE = 0x30;
const TAG_VERSION = 0xa0; // [0] EXPLICIT
const TAG_EXTENSIONS = 0xa3; // [3] EXPLICIT

/** The OIDs of the extensions ./ca.ts reads. */
export const OID = {
  basicConstraints: "2.5.29.19",
  keyUsage: "2.5.29.15",
  subjectKeyIdentifier: "2.5.29.14",
} as const;

/** keyUsage bit 5 (RFC 5280 4.2.1.3), as it sits in the BIT STRING's first content byte. */
const KEY_CERT_SIGN = 0x04;

/**
 * Walk a Certificate to its subject, public key and extensions:
 * Certificate > TBSCertificate > [version] serial signature issuer validity subject spki
 * [issuerUID] [subjectUID] [3] extensions.
 *
 * @param der the Certificate DER
 * @returns the subject and SPKI bytes and the extensions
 * @throws {DerError} if the DER is truncated or not shaped like a certificate
 */
export function certificateParts(der: Uint8Array): CertificateParts {
  const cert = readTlv(der, 0);
  if (cert.tag !== TAG_SEQUENCE || cert.end !== der.length) {
    throw new DerError("The certificate is not one DER SEQUENCE");
  }
  const tbs = readTlv(der, cert.contentStart);
  if (tbs.tag !== TAG_SEQUENCE) throw new DerError("The TBSCertificate is missing");
  let at = tbs.contentStart;
  if (readTlv(der, at).tag === TAG_VERSION) at = readTlv(der, at).end;
  for (const what of ["serialNumber", "signature", "issuer", "validity"]) {
    at = within(readTlv(der, at), tbs.end, what).end;
  }
  const subject = within(readTlv(der, at), tbs.end, "subject");
  if (subject.tag !== TAG_SEQUENCE) throw new DerError("The subject is not a SEQUENCE");
  const spki = within(readTlv(der, subject.end), tbs.end, "subjectPublicKeyInfo");
  if (spki.tag !== TAG_SEQUENCE) throw new DerError("The subjectPublicKeyInfo is not a SEQUENCE");
  const extensions = new Map<string, DerExtension>();
  for (at = spki.end; at < tbs.end;) {
    const field = within(readTlv(der, at), tbs.end, "optional field");
    if (field.tag === TAG_EXTENSIONS) readExtensions(der, field.contentStart, extensions);
    at = field.end;
  }
  return {
    subject: der.slice(subject.start, subject.end),
    spki: der.slice(spki.start, spki.end),
    extensions,
  };
}

/**
 * The subjectKeyIdentifier's key id, if the certificate has one.
 *
 * @param parts what {@link certificateParts} returned
 * @returns the key identifier bytes, or undefined
 * @throws {DerError} if the extension is not an OCTET STRING
 */
export function subjectKeyId(parts: CertificateParts): Uint8Array | undefined {
  const ext = parts.extensions.get(OID.subjectKeyIdentifier);
  if (ext === undefined) return undefined;
  const id = readTlv(ext.value, 0);
  if (id.tag !== TAG_OCTET_STRING) {
    throw new DerError("subjectKeyIdentifier is not an OCTET STRING");
  }
  return ext.value.slice(id.contentStart, id.end);
}

/**
 * Whether keyUsage allows signing certificates: true or false when the extension is present,
 * undefined when it is absent (RFC 5280: then the key's use is not restricted by it).
 *
 * @param parts what {@link certificateParts} returned
 * @returns whether keyCertSign is set, or undefined without a keyUsage extension
 * @throws {DerError} if the extension is not a BIT STRING
 */
export function allowsCertSign(parts: CertificateParts): boolean | undefined {
  const ext = parts.extensions.get(OID.keyUsage);
  if (ext === undefined) return undefined;
  const bits = readTlv(ext.value, 0);
  if (bits.tag !== TAG_BIT_STRING) throw new DerError("keyUsage is not a BIT STRING");
  // Content: one byte of unused-bit count, then the bits, bit 0 the top bit of the next byte.
  const first = bits.end - bits.contentStart >= 2 ? ext.value[bits.contentStart + 1] : 0;
  return (first & KEY_CERT_SIGN) !== 0;
}

/**
 * The RFC 5280 4.2.1.2 method (1) key identifier: SHA-1 of the subjectPublicKey BIT STRING's
 * bits, as `@peculiar/x509` and OpenSSL's `subjectKeyIdentifier = hash` compute it.
 *
 * @param spki a SubjectPublicKeyInfo DER
 * @returns the 20-byte identifier
 * @throws {DerError} if the SPKI is not SEQUENCE { AlgorithmIdentifier, BIT STRING }
 */
export async function keyIdentifier(spki: Uint8Array): Promise<Uint8Array> {
  const seq = readTlv(spki, 0);
  if (seq.tag !== TAG_SEQUENCE) throw new DerError("The SubjectPublicKeyInfo is not a SEQUENCE");
  const key = readTlv(spki, readTlv(spki, seq.contentStart).end);
  if (key.tag !== TAG_BIT_STRING || key.end > seq.end || key.end - key.contentStart < 1) {
    throw new DerError("The SubjectPublicKeyInfo has no subjectPublicKey BIT STRING");
  }
  // Skip the unused-bits byte: the identifier covers the key's bits only.
  const bits = spki.slice(key.contentStart + 1, key.end);
  return new Uint8Array(await crypto.subtle.digest("SHA-1", bits));
}

/** One DER TLV at `at`: its tag, where it starts, where its content starts and where it ends. */
export function readTlv(
  der: Uint8Array,
  at: number,
): { tag: number; start: number; contentStart: number; end: number } {
  if (at + 2 > der.length) throw new DerError("Truncated DER");
  const tag = der[at];
  let len = der[at + 1];
  let p = at + 2;
  if (len >= 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 3 || p + n > der.length) throw new DerError("Unsupported DER length");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[p++];
  }
  if (p + len > der.length) throw new DerError("Truncated DER");
  return { tag, start: at, contentStart: p, end: p + len };
}

// ---------------------------------------------------------------------------------------------

function within<T extends { end: number }>(field: T, end: number, what: string): T {
  if (field.end > end) throw new DerError(`The ${what} runs past the TBSCertificate`);
  return field;
}

/** `[3] { SEQUENCE OF SEQUENCE { OID, BOOLEAN DEFAULT FALSE, OCTET STRING } }` into `out`. */
function readExtensions(der: Uint8Array, at: number, out: Map<string, DerExtension>): void {
  const list = readTlv(der, at);
  if (list.tag !== TAG_SEQUENCE) throw new DerError("The extensions are not a SEQUENCE");
  for (let p = list.contentStart; p < list.end;) {
    const ext = readTlv(der, p);
    if (ext.tag !== TAG_SEQUENCE || ext.end > list.end) {
      throw new DerError("An extension is not a SEQUENCE inside the extensions");
    }
    const oid = readTlv(der, ext.contentStart);
    if (oid.tag !== TAG_OID) throw new DerError("An extension does not start with its OID");
    let q = oid.end;
    let critical = false;
    if (q < ext.end && der[q] === TAG_BOOLEAN) {
      const flag = readTlv(der, q);
      critical = flag.end > flag.contentStart && der[flag.contentStart] !== 0;
      q = flag.end;
    }
    const value = readTlv(der, q);
    if (value.tag !== TAG_OCTET_STRING || value.end !== ext.end) {
      throw new DerError("An extension's value is not its last field, an OCTET STRING");
    }
    out.set(oidText(der.subarray(oid.contentStart, oid.end)), {
      critical,
      value: der.slice(value.contentStart, value.end),
    });
    p = ext.end;
  }
}

/** An OBJECT IDENTIFIER's content in dotted form. */
function oidText(c: Uint8Array): string {
  if (c.length === 0) throw new DerError("An empty OBJECT IDENTIFIER");
  const arcs: number[] = [];
  let v = 0;
  for (const b of c) {
    v = v * 128 + (b & 0x7f);
    if ((b & 0x80) === 0) {
      arcs.push(v);
      v = 0;
    }
  }
  const first = arcs[0] < 80 ? Math.floor(arcs[0] / 40) : 2;
  return [first, arcs[0] - first * 40, ...arcs.slice(1)].join(".");
}
