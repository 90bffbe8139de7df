/**
 * lib/tls/der.ts, the hand-written certificate reader, against @peculiar/x509 (the library it
 * replaced on the start-up path) on certificates openssl makes as users bring them, and
 * against malformed DER. Then the reader's consequence end to end: a CA without a
 * subjectKeyIdentifier still gets leaves whose authorityKeyIdentifier openssl chains to it.
 */
import assert from "node:assert/strict";
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import {
  allowsCertSign,
  certificateParts,
  DerError,
  keyIdentifier,
  readTlv,
  subjectKeyId,
} from "../../../lib/tls/der.ts";
import { loadCa, mintLeaf } from "../../../lib/tls/ca.ts";
import { X509Certificate } from "node:crypto";
import { openssl, opensslCa, withTempDir } from "./_leaf_fixtures.ts";

x509.cryptoProvider.set(crypto);

/** An openssl certificate with exactly the given extensions; returns its DER and file paths. */
async function made(
  dir: string,
  name: string,
  key: "ec" | "p384" | "rsa",
  exts: string[],
  subject?: string,
): Promise<{ der: Uint8Array<ArrayBuffer>; cert: string; key: string }> {
  const files = await opensslCa(dir, name, { key, exts, subject, days: 3 });
  const der = new Uint8Array(new X509Certificate(await Deno.readTextFile(files.cert)).raw);
  return { der, ...files };
}

const CASES: {
  name: string;
  key: "ec" | "p384" | "rsa";
  exts: string[];
  subject?: string;
  ski: boolean;
  certSign: boolean | undefined;
}[] = [
  {
    name: "a P-256 CA as sluice ca init makes it",
    key: "ec",
    exts: ["basicConstraints=critical,CA:TRUE,pathlen:0", "keyUsage=critical,keyCertSign,cRLSign"],
    ski: true,
    certSign: true,
  },
  {
    name: "a P-384 CA with a multi-attribute subject",
    key: "p384",
    exts: ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign"],
    subject: "/C=DE/O=Corp, Inc./OU=Platform/CN=Corp Root Ü",
    ski: true,
    certSign: true,
  },
  {
    name: "an RSA CA (a long SPKI: two-byte lengths)",
    key: "rsa",
    exts: ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"],
    ski: true,
    certSign: true,
  },
  {
    name: "a CA without subjectKeyIdentifier",
    key: "ec",
    exts: ["basicConstraints=critical,CA:TRUE", "subjectKeyIdentifier=none"],
    ski: false,
    certSign: undefined,
  },
  {
    name: "keyUsage without keyCertSign",
    key: "ec",
    exts: ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,digitalSignature"],
    ski: true,
    certSign: false,
  },
  {
    name: "keyUsage with cRLSign only (the bit next to keyCertSign)",
    key: "ec",
    exts: ["basicConstraints=critical,CA:TRUE", "keyUsage=cRLSign"],
    ski: true,
    certSign: false,
  },
  {
    name: "keyUsage with decipherOnly (a second content byte)",
    key: "rsa",
    exts: ["basicConstraints=critical,CA:TRUE", "keyUsage=keyCertSign,keyAgreement,decipherOnly"],
    ski: true,
    certSign: true,
  },
];

for (const c of CASES) {
  Deno.test(`certificateParts() agrees with @peculiar/x509: ${c.name}`, async () => {
    await withTempDir(async (dir) => {
      const { der } = await made(dir, "c", c.key, c.exts, c.subject);
      const parts = certificateParts(der);
      const ref = new x509.X509Certificate(der);

      assert.deepEqual(parts.subject, new Uint8Array(ref.subjectName.toArrayBuffer()), "subject");
      assert.deepEqual(parts.spki, new Uint8Array(ref.publicKey.rawData), "spki");

      const refSki = ref.getExtension(x509.SubjectKeyIdentifierExtension);
      assert.equal(refSki !== null, c.ski, "the fixture has the SKI it claims");
      const ski = subjectKeyId(parts);
      assert.equal(ski === undefined ? undefined : hex(ski), refSki?.keyId, "subjectKeyIdentifier");

      const refKu = ref.getExtension(x509.KeyUsagesExtension);
      const refCertSign = refKu === null
        ? undefined
        : (refKu.usages & x509.KeyUsageFlags.keyCertSign) !== 0;
      assert.equal(refCertSign, c.certSign, "the fixture has the keyUsage it claims");
      assert.equal(allowsCertSign(parts), c.certSign, "keyCertSign");

      const refId = await x509.SubjectKeyIdentifierExtension.create(ref.publicKey);
      assert.equal(hex(await keyIdentifier(parts.spki)), refId.keyId, "SHA-1 key identifier");
      if (c.ski) assert.equal(hex(ski!), refId.keyId, "openssl's hash SKI is the same method");

      assert.equal(parts.extensions.get("2.5.29.19")?.critical, true, "basicConstraints critical");
    });
  });
}

Deno.test("certificateParts() refuses malformed DER with a DerError, never a wrong answer", async () => {
  await withTempDir(async (dir) => {
    const { der } = await made(dir, "m", "ec", ["basicConstraints=critical,CA:TRUE"]);
    const cert = readTlv(der, 0);
    const tbs = readTlv(der, cert.contentStart);
    const patched = (at: number, byte: number) => {
      const out = der.slice();
      out[at] = byte;
      return out;
    };
    const cases: { name: string; der: Uint8Array }[] = [
      { name: "empty", der: new Uint8Array() },
      { name: "truncated by one byte", der: der.subarray(0, der.length - 1) },
      { name: "truncated to its TBS header", der: der.subarray(0, tbs.contentStart) },
      { name: "a trailing byte", der: Uint8Array.from([...der, 0]) },
      { name: "not a SEQUENCE", der: patched(0, 0x31) },
      { name: "a TBS that is not a SEQUENCE", der: patched(tbs.start, 0x04) },
      { name: "a length of length 0", der: Uint8Array.from([0x30, 0x80, 0, 0]) },
      { name: "a length of length 5", der: Uint8Array.from([0x30, 0x85, 0, 0, 0, 0, 1, 0]) },
    ];
    for (const c of cases) {
      assert.throws(() => certificateParts(c.der), DerError, c.name);
    }
    await assert.rejects(keyIdentifier(Uint8Array.from([0x30, 0x03, 0x02, 0x01, 0x00])), DerError);
  });
});

Deno.test("loadCa() of a CA without subjectKeyIdentifier: leaves name its key by SHA-1, and openssl chains them", async () => {
  await withTempDir(async (dir) => {
    const ca = await made(dir, "noski", "ec", [
      "basicConstraints=critical,CA:TRUE",
      "keyUsage=critical,keyCertSign",
      "subjectKeyIdentifier=none",
    ]);
    const loaded = await loadCa(ca.cert, ca.key);
    const leaf = await mintLeaf(loaded, "noski.test");
    const leafFile = `${dir}/leaf.pem`;
    await Deno.writeTextFile(leafFile, leaf.certPem);
    const verified = await openssl(
      "verify",
      "-CAfile",
      ca.cert,
      "-purpose",
      "sslserver",
      "-verify_hostname",
      "noski.test",
      leafFile,
    );
    assert.match(verified, /OK/);
    const leafCert = new x509.X509Certificate(
      leaf.certPem.split(/(?<=-----END CERTIFICATE-----\n)/)[0],
    );
    const aki = leafCert.getExtension(x509.AuthorityKeyIdentifierExtension);
    const expected = await x509.SubjectKeyIdentifierExtension.create(
      new x509.X509Certificate(ca.der).publicKey,
    );
    assert.equal(aki?.keyId, expected.keyId);
  });
});

function hex(b: Uint8Array): string {
  return Array.from(b, (v) => v.toString(16).padStart(2, "0")).join("");
}

Deno.test("serve's start-up path (lib/cli/serve.ts imported, an existing CA loaded, a leaf minted) never loads @peculiar/x509", async () => {
  await withTempDir(async (dir) => {
    const ca = await made(dir, "startup", "ec", [
      "basicConstraints=critical,CA:TRUE",
      "keyUsage=critical,keyCertSign",
    ]);
    // reflect-metadata is imported only together with @peculiar/x509 (lib/tls/ca.ts
    // peculiarX509()), and it defines Reflect.getMetadata: its absence shows neither ran.
    const script = `
      await import(${JSON.stringify(new URL("../../../lib/cli/serve.ts", import.meta.url).href)});
      const { loadCa, mintLeaf } = await import(
        ${JSON.stringify(new URL("../../../lib/tls/ca.ts", import.meta.url).href)});
      const ca = await loadCa(${JSON.stringify(ca.cert)}, ${JSON.stringify(ca.key)});
      await mintLeaf(ca, "x.test");
      console.log(typeof (Reflect as unknown as Record<string, unknown>).getMetadata);
    `;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--ext=ts", script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout).trim();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.equal(text, "undefined", "reflect-metadata (and so @peculiar/x509) was loaded");
  });
});
