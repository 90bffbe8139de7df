/**
 * The DER leaf template (lib/tls/leaf_template.ts) against the @peculiar/x509 path it replaced
 * (mintLeafReference): byte for byte, for every CA key type and kind of name, plus the DER
 * details a byte comparison with one implementation cannot show (ECDSA integer framing, the
 * UTCTime/GeneralizedTime switch, long lengths). Real clients judge the leaves in
 * mint_leaf_clients_test.ts.
 */
import assert from "node:assert/strict";
import {
  CaError,
  type CertificateAuthority,
  ephemeralCa,
  loadCa,
  type MintedLeaf,
  mintLeaf,
  mintLeafReference,
} from "../../../lib/tls/ca.ts";
import {
  buildLeafTemplate,
  certificatePem,
  encodeCertificate,
  encodeLeafTbs,
  type LeafTemplate,
  LeafTemplateError,
} from "../../../lib/tls/leaf_template.ts";
import { LEAF_NAMES, opensslCa, withTempDir } from "./_leaf_fixtures.ts";

// ---------------------------------------------------------------------------------------------
// An independent DER walker (deliberately not the module's own), enough to split certificates.

type Node = { tag: number; start: number; contentStart: number; end: number };

function node(der: Uint8Array, at: number): Node {
  const tag = der[at];
  let len = der[at + 1];
  let p = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    assert.ok(n >= 1 && n <= 4, `length of length ${n} at ${at}`);
    // DER: the long form only when needed, with no leading zero byte.
    assert.notEqual(der[p], 0, `non-minimal length at ${at}`);
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[p++];
    assert.ok(len >= 0x80, `long form for a short length at ${at}`);
  }
  assert.ok(p + len <= der.length, `element at ${at} runs past the end`);
  return { tag, start: at, contentStart: p, end: p + len };
}

function children(der: Uint8Array, parent: Node): Node[] {
  const out: Node[] = [];
  for (let at = parent.contentStart; at < parent.end;) {
    const c = node(der, at);
    out.push(c);
    at = c.end;
  }
  assert.equal(out.at(-1)?.end ?? parent.contentStart, parent.end, "children fill the parent");
  return out;
}

function pemToDer(pem: string): Uint8Array {
  const b64 = pem.match(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/)![1];
  return Uint8Array.from(atob(b64.replace(/\s+/g, "")), (c) => c.charCodeAt(0));
}

/** The parts of a leaf's first certificate: TBS, its fields, the outer algorithm and signature. */
function split(leaf: MintedLeaf) {
  const der = pemToDer(leaf.certPem);
  const cert = node(der, 0);
  assert.equal(cert.end, der.length, "one certificate, nothing after it");
  const [tbs, alg, sig] = children(der, cert);
  const fields = children(der, tbs);
  return { der, tbs, fields, alg, sig };
}

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

// ---------------------------------------------------------------------------------------------
// Byte identity with the @peculiar/x509 path

/** Compare one name's leaf from both paths, minted at the same instant. */
async function assertSameAsReference(
  ca: CertificateAuthority,
  name: string,
  opts: { now?: Date; validityHours?: number } = {},
): Promise<void> {
  const now = opts.now ?? new Date();
  const mintOpts = { now, validityHours: opts.validityHours };
  const ours = await mintLeaf(ca, name, mintOpts);
  const ref = await mintLeafReference(ca, name, mintOpts);
  const a = split(ours);
  const b = split(ref);
  const label = `${ca.subject} ${name}`;
  // Field 1 is the serial: random in both, 16 bytes in both. Everything else must match.
  const serialA = a.der.slice(a.fields[1].start, a.fields[1].end);
  const serialB = b.der.slice(b.fields[1].start, b.fields[1].end);
  assert.equal(serialA.length, serialB.length, `${label}: serial length`);
  assert.notEqual(hex(serialA), hex(serialB), `${label}: serials are random`);
  const tbsA = a.der.slice(a.tbs.start, a.tbs.end);
  const tbsB = b.der.slice(b.tbs.start, b.tbs.end);
  tbsB.set(serialA, a.fields[1].start - a.tbs.start);
  assert.equal(hex(tbsA), hex(tbsB), `${label}: TBSCertificate`);
  assert.equal(
    hex(a.der.slice(a.alg.start, a.alg.end)),
    hex(b.der.slice(b.alg.start, b.alg.end)),
    `${label}: signature algorithm`,
  );
  assert.deepEqual(
    [ours.notBefore, ours.notAfter, ours.keyPem],
    [ref.notBefore, ref.notAfter, ref.keyPem],
    `${label}: returned dates and key`,
  );
  // The rest of the chain is the CA's, unchanged.
  const rest = (pem: string) => pem.slice(pem.indexOf("-----END CERTIFICATE-----"));
  assert.equal(rest(ours.certPem), rest(ref.certPem), `${label}: chain after the leaf`);
}

Deno.test("mintLeaf() encodes the same TBSCertificate as mintLeafReference() for every kind of name", async () => {
  const ca = await ephemeralCa();
  for (const name of LEAF_NAMES) await assertSameAsReference(ca, name);
});

Deno.test("mintLeaf() matches mintLeafReference() for openssl-made P-256, P-384 and RSA CAs", async () => {
  await withTempDir(async (dir) => {
    for (const key of ["ec", "p384", "rsa"] as const) {
      // A multi-RDN subject with a UTF8String value (openssl's default), as corporate CAs have.
      const files = await opensslCa(dir, `corp-${key}`, { key, subject: "/O=Corp Ltd/CN=corp" });
      const ca = await loadCa(files.cert, files.key);
      for (const name of ["intranet.corp.test", "10.1.2.3", "2001:db8::7", LEAF_NAMES.at(-1)!]) {
        await assertSameAsReference(ca, name);
      }
    }
  });
});

Deno.test("mintLeaf() matches mintLeafReference() across the UTCTime / GeneralizedTime switch", async () => {
  await withTempDir(async (dir) => {
    // Valid into the 2060s, so a leaf can end after 2049 and must use GeneralizedTime.
    const files = await opensslCa(dir, "long", { days: 40 * 365 });
    const ca = await loadCa(files.cert, files.key);
    const hours = (Date.UTC(2050, 0, 1) - Date.now()) / 3_600_000;
    for (const h of [hours - 1, hours, hours + 1, 30 * 365 * 24]) {
      await assertSameAsReference(ca, "far.test", { validityHours: h });
    }
    const leaf = await mintLeaf(ca, "far.test", { validityHours: 30 * 365 * 24 });
    const { der, fields } = split(leaf);
    const [nb, na] = children(der, fields[4]);
    assert.equal(nb.tag, 0x17, "notBefore (now) is UTCTime");
    assert.equal(na.tag, 0x18, "notAfter (2056) is GeneralizedTime");
    assert.equal(new TextDecoder().decode(der.slice(na.contentStart, na.end)).length, 15);
  });
});

Deno.test("mintLeaf() returns the whole-second dates the certificate carries", async () => {
  const ca = await ephemeralCa();
  const now = new Date(Date.UTC(2027, 5, 30, 23, 59, 59, 999));
  const leaf = await mintLeaf(ca, "dates.test", { now, validityHours: 1.5 });
  assert.equal(leaf.notBefore.toISOString(), "2027-06-30T22:59:59.000Z");
  assert.equal(leaf.notAfter.toISOString(), "2027-07-01T01:29:59.000Z");
  const { der, fields } = split(leaf);
  const text = children(der, fields[4]).map((t) =>
    new TextDecoder().decode(der.slice(t.contentStart, t.end))
  );
  assert.deepEqual(text, ["270630225959Z", "270701012959Z"]);
});

Deno.test("mintLeaf() refuses wildcards and non-names before anything is encoded", async () => {
  const ca = await ephemeralCa();
  for (const name of ["*.example.test", "*", "a.*.test", "a b.test", "bücher.test", ""]) {
    await assert.rejects(mintLeaf(ca, name), (e) => e instanceof CaError, name);
  }
});

// ---------------------------------------------------------------------------------------------
// The template's own encoders

/** A template over a real CA certificate, for the pure encoders. */
async function template(signature: "ecdsa-sha256" | "ecdsa-sha384" | "rsa-sha256") {
  const ca = await ephemeralCa();
  const keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
  ]);
  return buildLeafTemplate({
    caCertDer: pemToDer(ca.certPem),
    leafSpkiDer: new Uint8Array(await crypto.subtle.exportKey("spki", keys.publicKey)),
    authorityKeyId: new Uint8Array(20).fill(0xaa),
    subjectKeyId: new Uint8Array(20).fill(0xbb),
    signature,
  });
}

const FIELDS = {
  serial: Uint8Array.of(0x01, 0x02),
  notBefore: new Date(Date.UTC(2030, 0, 1)),
  notAfter: new Date(Date.UTC(2030, 0, 8)),
  name: { kind: "dns" as const, value: "t.test" },
};

function ecdsaIntegers(t: LeafTemplate, raw: Uint8Array): string[] {
  const der = encodeCertificate(t, Uint8Array.of(0x30, 0x00), raw);
  const cert = node(der, 0);
  const bits = children(der, cert)[2];
  assert.equal(bits.tag, 0x03);
  assert.equal(der[bits.contentStart], 0, "no unused bits");
  const sigDer = der.slice(bits.contentStart + 1, bits.end);
  const seq = node(sigDer, 0);
  assert.equal(seq.end, sigDer.length);
  return children(sigDer, seq).map((i) => {
    assert.equal(i.tag, 0x02);
    const v = sigDer.slice(i.contentStart, i.end);
    // Minimal: no 0x00 unless the next byte's top bit needs it.
    if (v.length > 1) assert.ok(!(v[0] === 0 && v[1] < 0x80), `non-minimal ${hex(v)}`);
    assert.ok(v[0] < 0x80, `negative ${hex(v)}`);
    return hex(v);
  });
}

Deno.test("encodeCertificate() frames ECDSA r||s as minimal positive DER INTEGERs", async () => {
  const t = await template("ecdsa-sha256");
  const r = new Uint8Array(32);
  const s = new Uint8Array(32);
  const cases: [string, () => void, string[]][] = [
    ["plain", () => {
      r.fill(0x11);
      s.fill(0x22);
    }, ["11".repeat(32), "22".repeat(32)]],
    ["top bits set: a 0x00 pad", () => {
      r.fill(0x80);
      s.fill(0xff);
    }, ["00" + "80".repeat(32), "00" + "ff".repeat(32)]],
    ["leading zero bytes dropped", () => {
      r.fill(0);
      r[2] = 0x7f;
      s.fill(0);
      s[1] = 0x80;
    }, ["7f" + "00".repeat(29), "0080" + "00".repeat(30)]],
    ["zero", () => {
      r.fill(0);
      s.fill(0);
      s[31] = 1;
    }, ["00", "01"]],
  ];
  for (const [label, set, want] of cases) {
    set();
    const raw = new Uint8Array(64);
    raw.set(r);
    raw.set(s, 32);
    assert.deepEqual(ecdsaIntegers(t, raw), want, label);
  }
  assert.throws(() => encodeCertificate(t, Uint8Array.of(0x30, 0), new Uint8Array(63)), {
    name: "LeafTemplateError",
  });
});

Deno.test("encodeCertificate() puts an RSA signature into the BIT STRING as it is", async () => {
  const t = await template("rsa-sha256");
  const sig = new Uint8Array(256).fill(0x80);
  const der = encodeCertificate(t, Uint8Array.of(0x30, 0x00), sig);
  const [tbs, alg, bits] = children(der, node(der, 0));
  assert.equal(hex(der.slice(tbs.start, tbs.end)), "3000");
  assert.equal(hex(der.slice(alg.start, alg.end)), "300d06092a864886f70d01010b0500");
  assert.equal(hex(der.slice(bits.start, bits.contentStart)), "03820101", "long-form length");
  assert.equal(hex(der.slice(bits.contentStart, bits.end)), "00" + "80".repeat(256));
});

Deno.test("encodeLeafTbs() uses long-form lengths for a 253-character name", async () => {
  const t = await template("ecdsa-sha384");
  const name = LEAF_NAMES.find((n) => n.length === 253)!;
  const der = encodeLeafTbs(t, { ...FIELDS, name: { kind: "dns", value: name } });
  const tbs = node(der, 0);
  assert.equal(tbs.end, der.length);
  const fields = children(der, tbs);
  assert.equal(hex(der.slice(fields[2].start, fields[2].end)), "300a06082a8648ce3d040303");
  assert.equal(hex(der.slice(fields[5].start, fields[5].end)), "3000", "empty subject");
  const exts = children(der, children(der, fields[7])[0]);
  const san = exts[3];
  const [oid, critical, value] = children(der, san);
  assert.equal(hex(der.slice(oid.start, oid.end)), "0603551d11");
  assert.equal(hex(der.slice(critical.start, critical.end)), "0101ff");
  const names = children(der, node(der, value.contentStart));
  assert.equal(names.length, 1);
  assert.equal(der[names[0].start], 0x82, "dNSName");
  assert.equal(new TextDecoder().decode(der.slice(names[0].contentStart, names[0].end)), name);
});

Deno.test("encodeLeafTbs() writes IPv4 and IPv6 names as 4 and 16 address bytes", async () => {
  const t = await template("ecdsa-sha256");
  const cases: [string, string][] = [
    ["192.0.2.1", "c0000201"],
    ["::1", "00".repeat(15) + "01"],
    ["::ffff:102:304", "00".repeat(10) + "ffff01020304"],
  ];
  for (const [ip, want] of cases) {
    const der = encodeLeafTbs(t, { ...FIELDS, name: { kind: "ip", value: ip } });
    const fields = children(der, node(der, 0));
    const san = children(der, children(der, fields[7])[0])[3];
    const value = children(der, san).at(-1)!;
    const gn = children(der, node(der, value.contentStart))[0];
    assert.equal(der[gn.start], 0x87, ip);
    assert.equal(hex(der.slice(gn.contentStart, gn.end)), want, ip);
  }
});

Deno.test("encodeLeafTbs() refuses a serial that is not a minimal positive INTEGER", async () => {
  const t = await template("ecdsa-sha256");
  for (const serial of [[], [0x80], [0x00, 0x01], [0xff, 0x01]]) {
    assert.throws(
      () => encodeLeafTbs(t, { ...FIELDS, serial: Uint8Array.from(serial) }),
      LeafTemplateError,
      JSON.stringify(serial),
    );
  }
  // 0x00 before a byte with its top bit set is the one allowed leading zero.
  encodeLeafTbs(t, { ...FIELDS, serial: Uint8Array.of(0x00, 0x80) });
  assert.throws(
    () => encodeLeafTbs(t, { ...FIELDS, name: { kind: "ip", value: "1.2.3" } }),
    LeafTemplateError,
  );
  assert.throws(
    () => encodeLeafTbs(t, { ...FIELDS, name: { kind: "dns", value: "bücher.test" } }),
    LeafTemplateError,
  );
});

Deno.test("buildLeafTemplate() refuses a CA certificate it cannot walk, and empty key ids", async () => {
  const ca = await ephemeralCa();
  const der = pemToDer(ca.certPem);
  const good = {
    caCertDer: der,
    leafSpkiDer: Uint8Array.of(0x30, 0x00),
    authorityKeyId: Uint8Array.of(1),
    subjectKeyId: Uint8Array.of(2),
    signature: "ecdsa-sha256" as const,
  };
  buildLeafTemplate(good);
  const broken: [string, Partial<typeof good>][] = [
    ["truncated", { caCertDer: der.slice(0, der.length - 1) }],
    ["trailing bytes", { caCertDer: Uint8Array.of(...der, 0) }],
    ["not a SEQUENCE", { caCertDer: Uint8Array.of(0x04, 0x00) }],
    ["empty", { caCertDer: new Uint8Array(0) }],
    ["no AKI", { authorityKeyId: new Uint8Array(0) }],
    ["no SKI", { subjectKeyId: new Uint8Array(0) }],
  ];
  for (const [label, patch] of broken) {
    assert.throws(() => buildLeafTemplate({ ...good, ...patch }), LeafTemplateError, label);
  }
});

Deno.test("certificatePem() wraps at 64 characters and round-trips", () => {
  for (const n of [1, 47, 48, 49, 300]) {
    const der = Uint8Array.from({ length: n }, (_, i) => (i * 7) & 0xff);
    const pem = certificatePem(der);
    const lines = pem.trimEnd().split("\n");
    assert.equal(lines[0], "-----BEGIN CERTIFICATE-----");
    assert.equal(lines.at(-1), "-----END CERTIFICATE-----");
    assert.ok(lines.slice(1, -1).every((l, i, a) => l.length === 64 || i === a.length - 1));
    assert.ok(pem.endsWith("-----\n"));
    assert.deepEqual(pemToDer(pem), der);
  }
});
