/**
 * Leaves from mintLeaf (the DER template path) judged by real clients: openssl verify, node's
 * X509Certificate, and a rustls handshake through Deno.connectTls / Deno.startTls against a
 * Deno.listenTls serving the leaf. Every kind of name, every CA key type.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import {
  type CertificateAuthority,
  ephemeralCa,
  loadCa,
  type MintedLeaf,
  mintLeaf,
  mintLeafReference,
  normalizeLeafName,
} from "../../../lib/tls/ca.ts";
import { LEAF_NAMES, openssl, opensslCa, runOpenssl, withTempDir } from "./_leaf_fixtures.ts";

/** A different DNS name of the same shape: the first character changed. */
function otherDns(value: string): string {
  return (value[0] === "z" ? "y" : "z") + value.slice(1);
}

function leafOnly(leaf: MintedLeaf): string {
  const end = "-----END CERTIFICATE-----";
  return leaf.certPem.slice(0, leaf.certPem.indexOf(end) + end.length) + "\n";
}

/**
 * The CAs leaves are minted by: sluice's own, and openssl-made P-256, P-384 and RSA ones; each
 * with a stranger CA of the same key type, that must not be able to vouch for its leaves.
 */
async function allCas(
  dir: string,
): Promise<{ label: string; ca: CertificateAuthority; stranger: CertificateAuthority }[]> {
  const out = [{
    label: "ephemeral P-256",
    ca: await ephemeralCa(),
    stranger: await ephemeralCa(),
  }];
  for (const key of ["ec", "p384", "rsa"] as const) {
    const load = async (name: string) => {
      const files = await opensslCa(dir, name, { key });
      return await loadCa(files.cert, files.key);
    };
    out.push({
      label: `openssl ${key}`,
      ca: await load(`ca-${key}`),
      stranger: await load(`stranger-${key}`),
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// openssl

Deno.test("mintLeaf() leaves pass openssl verify -x509_strict for their name, for every CA type", async () => {
  await withTempDir(async (dir) => {
    for (const { label, ca } of await allCas(dir)) {
      const caFile = `${dir}/${crypto.randomUUID()}.crt`;
      await Deno.writeTextFile(caFile, ca.certPem);
      for (const name of LEAF_NAMES) {
        const canonical = normalizeLeafName(name);
        const leaf = await mintLeaf(ca, name);
        const f = `${dir}/leaf.pem`;
        await Deno.writeTextFile(f, leafOnly(leaf));
        const check = canonical.kind === "ip"
          ? ["-verify_ip", canonical.value]
          : ["-verify_hostname", canonical.value];
        const out = await openssl(
          "verify",
          "-x509_strict",
          "-purpose",
          "sslserver",
          "-CAfile",
          caFile,
          ...check,
          f,
        );
        assert.match(out, /leaf\.pem: OK/, `${label} ${name}`);
        // And not for some other name: the SAN is what binds it.
        const other = canonical.kind === "ip"
          ? ["-verify_ip", canonical.value === "192.0.2.99" ? "192.0.2.98" : "192.0.2.99"]
          : ["-verify_hostname", otherDns(canonical.value)];
        const wrong = await runOpenssl(
          "verify",
          "-purpose",
          "sslserver",
          "-CAfile",
          caFile,
          ...other,
          f,
        );
        assert.notEqual(wrong.code, 0, `${label} ${name} must not verify for ${other[1]}`);
      }
    }
  });
});

Deno.test("mintLeaf() leaves show the same fields as mintLeafReference() in openssl x509 -text", async () => {
  await withTempDir(async (dir) => {
    const ca = await ephemeralCa();
    const now = new Date();
    const text = async (leaf: MintedLeaf) => {
      const f = `${dir}/${crypto.randomUUID()}.pem`;
      await Deno.writeTextFile(f, leafOnly(leaf));
      const t = await openssl("x509", "-in", f, "-noout", "-text");
      // Serial and signature are random; everything else must read the same.
      return t.replace(/Serial Number:\s*\n?\s*[0-9a-f:]+/, "Serial Number: X")
        .replace(/Signature Value:\n[\s0-9a-f:]+/, "Signature Value: X");
    };
    for (const name of ["example.test", "10.0.0.1", "2001:db8::5", LEAF_NAMES[12]]) {
      const ours = await text(await mintLeaf(ca, name, { now }));
      const ref = await text(await mintLeafReference(ca, name, { now }));
      assert.equal(ours, ref, name);
      assert.match(ours, /X509v3 Key Usage: critical\n\s+Digital Signature\n/);
      assert.match(ours, /X509v3 Extended Key Usage: \n\s+TLS Web Server Authentication\n/);
      assert.match(ours, /X509v3 Basic Constraints: critical\n\s+CA:FALSE\n/);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// node:crypto X509Certificate

Deno.test("mintLeaf() leaves satisfy node's X509Certificate checkHost/checkIP/verify like the old path", async () => {
  await withTempDir(async (dir) => {
    for (const { label, ca, stranger: other } of await allCas(dir)) {
      const caCert = new X509Certificate(ca.certPem);
      const stranger = new X509Certificate(other.certPem);
      const now = new Date();
      for (const name of LEAF_NAMES) {
        const { kind, value } = normalizeLeafName(name);
        const what = `${label} ${name}`;
        const leaf = new X509Certificate(leafOnly(await mintLeaf(ca, name, { now })));
        const ref = new X509Certificate(leafOnly(await mintLeafReference(ca, name, { now })));
        assert.ok(leaf.verify(caCert.publicKey), `${what}: signed by the CA`);
        assert.ok(!leaf.verify(stranger.publicKey), `${what}: not by another CA`);
        assert.ok(leaf.checkIssued(caCert), `${what}: issuer and AKI name the CA`);
        assert.equal(leaf.ca, false, what);
        if (kind === "ip") {
          assert.equal(leaf.checkIP(value), value, what);
          // Deno's checkHost falls back to the CN, which holds the IP text: as the old path's.
          assert.equal(leaf.checkHost(value), ref.checkHost(value), what);
          assert.equal(leaf.checkIP(value === "192.0.2.7" ? "192.0.2.8" : "192.0.2.7"), undefined);
        } else {
          assert.equal(leaf.checkHost(value), value, what);
          // No wildcard semantics: neither a subdomain nor a sibling matches.
          if (value.length < 250) assert.equal(leaf.checkHost(`x.${value}`), undefined, what);
          assert.equal(leaf.checkHost(otherDns(value)), undefined, what);
        }
        // The fields a client looks at, the same as the @peculiar/x509 path gave.
        for (
          const field of [
            "subject",
            "issuer",
            "subjectAltName",
            "keyUsage",
            "validFrom",
            "validTo",
            "ca",
          ] as const
        ) {
          assert.deepEqual(leaf[field], ref[field], `${what}: ${field}`);
        }
        assert.ok(
          leaf.publicKey.equals(ref.publicKey),
          `${what}: the shared leaf key in both`,
        );
        assert.notEqual(leaf.serialNumber, ref.serialNumber);
      }
    }
  });
});

Deno.test("mintLeaf() gives 512 leaves distinct positive 16-byte serials, each verifying", async () => {
  // 512 ECDSA signatures make an r or s with a leading zero byte (p = 1/256 each) and one
  // with its top bit set all but certain: both need care in the DER INTEGER framing.
  const ca = await ephemeralCa();
  const caCert = new X509Certificate(ca.certPem);
  const serials = new Set<string>();
  for (let i = 0; i < 512; i++) {
    const leaf = new X509Certificate(leafOnly(await mintLeaf(ca, `s${i}.test`)));
    assert.ok(leaf.verify(caCert.publicKey), `leaf ${i}`);
    // node prints the serial without leading zero nibbles.
    const serial = leaf.serialNumber.padStart(32, "0");
    assert.match(serial, /^[0-7][0-9A-F]{31}$/, `leaf ${i} serial ${serial}: positive, 16 bytes`);
    assert.notEqual(serial.slice(0, 2), "00", `leaf ${i} serial ${serial}: no pad byte`);
    serials.add(serial);
  }
  assert.equal(serials.size, 512);
});

Deno.test("mintLeaf() keeps the validity window: backdated an hour, capped at the CA's end", async () => {
  const ca = await ephemeralCa();
  const now = new Date(Math.floor(Date.now() / 1000) * 1000);
  const leaf = await mintLeaf(ca, "window.test", { now });
  const x = new X509Certificate(leafOnly(leaf));
  assert.equal(new Date(x.validFrom).getTime(), now.getTime() - 3_600_000);
  assert.equal(new Date(x.validTo).getTime(), now.getTime() + 7 * 86_400_000);
  assert.deepEqual([leaf.notBefore, leaf.notAfter], [new Date(x.validFrom), new Date(x.validTo)]);
  const late = await mintLeaf(ca, "late.test", { now: new Date(ca.notAfter.getTime() - 1000) });
  const lateCert = new X509Certificate(leafOnly(late));
  assert.equal(new Date(lateCert.validTo).getTime(), ca.notAfter.getTime());
  assert.equal(late.notAfter.getTime(), ca.notAfter.getTime());
});

// ---------------------------------------------------------------------------------------------
// rustls: a real handshake against Deno.listenTls serving the leaf

/** Serve one leaf on loopback; every connection handshakes, reads a line and answers "ok". */
function serveLeaf(
  leaf: MintedLeaf,
  hostname = "127.0.0.1",
): { port: number; close: () => Promise<void> } {
  const listener = Deno.listenTls({ hostname, port: 0, cert: leaf.certPem, key: leaf.keyPem });
  const conns = new Set<Promise<void>>();
  const loop = (async () => {
    for await (const conn of listener) {
      const p = (async () => {
        try {
          const n = await conn.read(new Uint8Array(64));
          if (n !== null) await conn.write(new TextEncoder().encode("ok\n"));
        } catch {
          // A client refusing the certificate aborts the handshake: that is the negative case.
        } finally {
          try {
            conn.close();
          } catch {
            // Already closed.
          }
        }
      })();
      conns.add(p);
      p.finally(() => conns.delete(p));
    }
  })();
  return {
    port: listener.addr.port,
    close: async () => {
      listener.close();
      await loop.catch(() => {});
      await Promise.all([...conns]);
    },
  };
}

/** Exchange a line over an established client connection. */
async function ping(conn: Deno.TlsConn): Promise<string> {
  try {
    await conn.handshake();
    await conn.write(new TextEncoder().encode("hi\n"));
    const buf = new Uint8Array(16);
    const n = await conn.read(buf);
    return new TextDecoder().decode(buf.subarray(0, n ?? 0));
  } finally {
    conn.close();
  }
}

/** Handshake to 127.0.0.1 while verifying the certificate for `name` (no DNS involved). */
async function startTlsAs(port: number, name: string, caCerts: string[]): Promise<string> {
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port });
  return await ping(await Deno.startTls(tcp, { hostname: name, caCerts }));
}

Deno.test("mintLeaf() leaves complete a rustls handshake for their name, for every CA type", async () => {
  await withTempDir(async (dir) => {
    for (const { label, ca, stranger } of await allCas(dir)) {
      for (const name of LEAF_NAMES) {
        const { value } = normalizeLeafName(name);
        const server = serveLeaf(await mintLeaf(ca, name));
        try {
          assert.equal(
            await startTlsAs(server.port, value, [ca.certPem]),
            "ok\n",
            `${label} ${name}`,
          );
          await assert.rejects(
            startTlsAs(server.port, value, [stranger.certPem]),
            /UnknownIssuer/,
            `${label} ${name}: another CA's trust`,
          );
          const other = normalizeLeafName(name).kind === "ip" ? "192.0.2.99" : otherDns(value);
          await assert.rejects(
            startTlsAs(server.port, other, [ca.certPem]),
            /NotValidForName|certificate/i,
            `${label} ${name}: not valid for ${other}`,
          );
        } finally {
          await server.close();
        }
      }
    }
  });
});

Deno.test("mintLeaf() leaves verify through Deno.connectTls for localhost, 127.0.0.1 and ::1", async () => {
  const ca = await ephemeralCa();
  const cases: [string, string][] = [
    ["localhost", "127.0.0.1"],
    ["127.0.0.1", "127.0.0.1"],
    ["::1", "::1"],
  ];
  for (const [name, listenOn] of cases) {
    const server = serveLeaf(await mintLeaf(ca, name), listenOn);
    try {
      const conn = await Deno.connectTls({
        hostname: name,
        port: server.port,
        caCerts: [ca.certPem],
      });
      assert.equal(await ping(conn), "ok\n", name);
    } finally {
      await server.close();
    }
  }
});
