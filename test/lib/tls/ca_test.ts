import assert from "node:assert/strict";
import {
  CA_VALIDITY_DAYS,
  CaError,
  caPaths,
  caShow,
  type CertificateAuthority,
  ephemeralCa,
  exportCaPem,
  initCa,
  loadCa,
  mintLeaf,
  normalizeLeafName,
} from "../../../lib/tls/ca.ts";
import { LeafCache } from "../../../lib/tls/leaf_cache.ts";

// ---------------------------------------------------------------------------------------------
// Helpers: temp dirs, and openssl as the independent judge of what we produce.

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "sluice-ca-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

type Run = { code: number; stdout: string; stderr: string };

async function run(cmd: string, args: string[], stdin?: string): Promise<Run> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function openssl(...args: string[]): Promise<string> {
  const r = await run("openssl", args);
  assert.equal(r.code, 0, `openssl ${args.join(" ")} failed: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

async function certText(dir: string, pem: string): Promise<string> {
  const f = `${dir}/show-${crypto.randomUUID()}.pem`;
  await Deno.writeTextFile(f, pem);
  return await openssl("x509", "-in", f, "-noout", "-text");
}

function countCerts(pem: string): number {
  return pem.match(/-----BEGIN CERTIFICATE-----/g)?.length ?? 0;
}

const CA_EXT_OK = [
  "basicConstraints = critical,CA:TRUE",
  "keyUsage = critical,keyCertSign,cRLSign",
  "subjectKeyIdentifier = hash",
];

/** A CA (or not) made by openssl, as a user would bring it. Returns the file paths. */
async function opensslCa(
  dir: string,
  name: string,
  opts: { key?: "ec" | "p384" | "rsa"; ext?: string[] } = {},
): Promise<{ cert: string; key: string }> {
  const cnf = `${dir}/${name}.cnf`;
  await Deno.writeTextFile(
    cnf,
    [
      "[req]",
      "distinguished_name = dn",
      "x509_extensions = ext",
      "prompt = no",
      "[dn]",
      `CN = ${name}`,
      "[ext]",
      ...(opts.ext ?? CA_EXT_OK),
    ].join("\n") + "\n",
  );
  const key = `${dir}/${name}.key`;
  const cert = `${dir}/${name}.crt`;
  const kind = opts.key ?? "ec";
  if (kind === "rsa") {
    await openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key);
  } else {
    // "EC PRIVATE KEY" (SEC1), the form `openssl ecparam -genkey` gives and many CAs use.
    await openssl(
      "ecparam",
      "-name",
      kind === "p384" ? "secp384r1" : "prime256v1",
      "-genkey",
      "-noout",
      "-out",
      key,
    );
  }
  await openssl("req", "-x509", "-new", "-key", key, "-config", cnf, "-days", "30", "-out", cert);
  return { cert, key };
}

function caError(...fragments: string[]): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof CaError, `expected a CaError, got ${e}`);
    assert.equal(e.name, "CaError");
    for (const f of fragments) {
      assert.ok(e.message.includes(f), `message ${JSON.stringify(e.message)} lacks ${f}`);
    }
    assert.ok(!e.message.includes("PRIVATE KEY-----"), "an error must not carry key material");
    return true;
  };
}

/** openssl's date format, e.g. "Nov  2 20:20:26 2026 GMT". */
function opensslDate(d: Date): string {
  const month = d.toLocaleString("en-US", { month: "short", timeZone: "UTC" });
  const day = String(d.getUTCDate()).padStart(2, " ");
  const time = d.toISOString().slice(11, 19);
  return `${month} ${day} ${time} ${d.getUTCFullYear()} GMT`;
}

function mode(path: string): number {
  return Deno.statSync(path).mode! & 0o777;
}

// ---------------------------------------------------------------------------------------------
// initCa

Deno.test("initCa() creates the directory 0700, ca.key 0600 and ca.crt 0644", async () => {
  await withTempDir(async (tmp) => {
    const dir = `${tmp}/state/nested`;
    const { ca, created } = await initCa(dir);
    const paths = caPaths(dir);
    assert.equal(created, true);
    assert.equal(mode(dir), 0o700);
    assert.equal(mode(`${tmp}/state`), 0o700);
    assert.equal(mode(paths.key), 0o600);
    // The cert's mode is subject to the umask like any file the process creates.
    const umask = Deno.umask();
    assert.equal(mode(paths.cert), 0o644 & ~umask);
    assert.equal(ca.certPath, paths.cert);
    // No temporary files are left behind.
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(names, ["ca.crt", "ca.key"]);
  });
});

Deno.test("initCa() loads the existing CA on a second call", async () => {
  await withTempDir(async (dir) => {
    const first = await initCa(dir);
    const second = await initCa(dir);
    assert.equal(second.created, false);
    assert.equal(second.ca.fingerprintSha256, first.ca.fingerprintSha256);
    assert.equal(second.ca.certPem, first.ca.certPem);
    // The reloaded CA signs with the stored key: its leaves verify against the stored cert.
    const leaf = await mintLeaf(second.ca, "reload.test");
    await Deno.writeTextFile(`${dir}/leaf.pem`, leaf.certPem);
    await openssl("verify", "-CAfile", caPaths(dir).cert, `${dir}/leaf.pem`);
  });
});

Deno.test("initCa() keeps the private key out of ca.crt, the CA object and its JSON", async () => {
  await withTempDir(async (dir) => {
    const { ca } = await initCa(dir);
    const certFile = await Deno.readTextFile(caPaths(dir).cert);
    const keyFile = await Deno.readTextFile(caPaths(dir).key);
    assert.match(keyFile, /^-----BEGIN PRIVATE KEY-----\n/);
    assert.equal(countCerts(certFile), 1);
    assert.doesNotMatch(certFile, /PRIVATE KEY/);
    assert.doesNotMatch(exportCaPem(ca), /PRIVATE KEY/);
    assert.doesNotMatch(JSON.stringify(ca), /PRIVATE KEY/);
    assert.deepEqual(Object.keys(ca).sort(), [
      "certPath",
      "certPem",
      "fingerprintSha256",
      "notAfter",
      "notBefore",
      "subject",
    ]);
    assert.ok(Object.isFrozen(ca));
  });
});

Deno.test("initCa() refuses a directory holding only one of the two CA files", async () => {
  for (const keep of ["ca.crt", "ca.key"]) {
    await withTempDir(async (dir) => {
      await initCa(dir);
      const lost = keep === "ca.crt" ? "ca.key" : "ca.crt";
      await Deno.remove(`${dir}/${lost}`);
      await assert.rejects(
        initCa(dir),
        caError(`found ${dir}/${keep} but not ${dir}/${lost}`, "--force"),
      );
    });
  }
});

Deno.test("initCa() with force replaces the CA", async () => {
  await withTempDir(async (dir) => {
    const first = await initCa(dir);
    const second = await initCa(dir, { force: true });
    assert.equal(second.created, true);
    assert.notEqual(second.ca.fingerprintSha256, first.ca.fingerprintSha256);
    assert.equal((await initCa(dir)).ca.fingerprintSha256, second.ca.fingerprintSha256);
    assert.equal(mode(caPaths(dir).key), 0o600);
  });
});

Deno.test("initCa() creates a P-256 CA limited to signing leaves, valid ten years", async () => {
  await withTempDir(async (dir) => {
    const { ca } = await initCa(dir);
    const text = await openssl("x509", "-in", caPaths(dir).cert, "-noout", "-text");
    assert.match(text, /X509v3 Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
    assert.match(text, /X509v3 Key Usage: critical\s+Certificate Sign, CRL Sign\n/);
    assert.match(text, /X509v3 Subject Key Identifier:/);
    assert.match(text, /NIST CURVE: P-256/);
    assert.match(text, /Signature Algorithm: ecdsa-with-SHA256/);
    assert.match(text, /Subject: CN = sluice local CA [0-9a-f]{8}, O = sluice\n/);
    assert.match(ca.subject, /^CN=sluice local CA [0-9a-f]{8}, O=sluice$/);
    const days = (ca.notAfter.getTime() - ca.notBefore.getTime()) / 86_400_000;
    assert.ok(Math.abs(days - CA_VALIDITY_DAYS) < 1, `validity ${days} days`);
    assert.ok(ca.notBefore.getTime() < Date.now(), "valid from now on");
  });
});

Deno.test("caShow() reports the fingerprint openssl computes", async () => {
  await withTempDir(async (dir) => {
    const { ca } = await initCa(dir);
    const out = await openssl(
      "x509",
      "-in",
      caPaths(dir).cert,
      "-noout",
      "-fingerprint",
      "-sha256",
    );
    const info = caShow(ca);
    assert.equal(out.trim(), `sha256 Fingerprint=${info.fingerprintSha256}`);
    assert.equal(info.subject, ca.subject);
    assert.equal(info.certPath, caPaths(dir).cert);
    assert.deepEqual([info.notBefore, info.notAfter], [ca.notBefore, ca.notAfter]);
  });
});

// ---------------------------------------------------------------------------------------------
// ephemeralCa

Deno.test("ephemeralCa() gives a distinct in-memory CA with no file behind it", async () => {
  const a = await ephemeralCa();
  const b = await ephemeralCa();
  assert.notEqual(a.fingerprintSha256, b.fingerprintSha256);
  assert.equal(a.certPath, undefined);
  assert.equal(caShow(a).certPath, undefined);
  assert.match(a.subject, /^CN=sluice ephemeral CA [0-9a-f]{8}, O=sluice$/);
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/ca.crt`, exportCaPem(a));
    await Deno.writeTextFile(`${dir}/leaf.pem`, (await mintLeaf(a, "eph.test")).certPem);
    await openssl("verify", "-CAfile", `${dir}/ca.crt`, `${dir}/leaf.pem`);
  });
});

// ---------------------------------------------------------------------------------------------
// mintLeaf

Deno.test("mintLeaf() makes a DNS leaf that openssl verifies for TLS servers", async () => {
  await withTempDir(async (dir) => {
    const { ca } = await initCa(dir);
    const now = new Date();
    const leaf = await mintLeaf(ca, "API.Example.TEST.", { now });
    await Deno.writeTextFile(`${dir}/leaf.pem`, leaf.certPem);
    const verify = await openssl(
      "verify",
      "-CAfile",
      caPaths(dir).cert,
      "-purpose",
      "sslserver",
      "-verify_hostname",
      "api.example.test",
      `${dir}/leaf.pem`,
    );
    assert.match(verify, /leaf\.pem: OK/);

    const text = await certText(dir, leaf.certPem);
    assert.match(text, /Subject: CN = api\.example\.test\n/);
    assert.match(text, /Subject Alternative Name: \n\s+DNS:api\.example\.test\n/);
    assert.match(text, /Extended Key Usage: \n\s+TLS Web Server Authentication\n/);
    assert.match(text, /X509v3 Key Usage: critical\s+Digital Signature\n/);
    assert.match(text, /X509v3 Basic Constraints: critical\s+CA:FALSE/);
    assert.match(text, /NIST CURVE: P-256/);
    // The leaf names its issuer's key exactly as the CA names itself.
    const caText = await openssl("x509", "-in", caPaths(dir).cert, "-noout", "-text");
    const ski = caText.match(/Subject Key Identifier: \n\s+([0-9A-F:]+)/)![1];
    assert.match(text, new RegExp(`Authority Key Identifier: \\n\\s+(keyid:)?${ski}\\n`));

    // Served chain: leaf, then the CA.
    assert.equal(countCerts(leaf.certPem), 2);
    assert.ok(leaf.certPem.endsWith(ca.certPem));
    // Backdated one hour, valid seven days (X.509 times have whole seconds).
    const sec = Math.floor(now.getTime() / 1000) * 1000;
    assert.equal(leaf.notBefore.getTime(), sec - 3_600_000);
    assert.equal(leaf.notAfter.getTime(), sec + 7 * 86_400_000);
    const dates = await openssl(
      "x509",
      "-in",
      `${dir}/leaf.pem`,
      "-noout",
      "-startdate",
      "-enddate",
    );
    assert.equal(
      dates,
      `notBefore=${opensslDate(leaf.notBefore)}\nnotAfter=${opensslDate(leaf.notAfter)}\n`,
    );
  });
});

Deno.test("mintLeaf() puts IP literals in an IP SAN", async () => {
  const ca = await ephemeralCa();
  const cases: [string, RegExp][] = [
    ["127.0.0.1", /IP Address:127\.0\.0\.1\n/],
    ["::1", /IP Address:0:0:0:0:0:0:0:1\n/],
    ["[2001:db8::5]", /IP Address:2001:DB8:0:0:0:0:0:5\n/],
  ];
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/ca.crt`, ca.certPem);
    for (const [name, san] of cases) {
      const leaf = await mintLeaf(ca, name);
      const text = await certText(dir, leaf.certPem);
      assert.match(text, san, name);
      assert.doesNotMatch(text, /DNS:/, name);
      await Deno.writeTextFile(`${dir}/leaf.pem`, leaf.certPem);
      const ip = normalizeLeafName(name).value;
      await openssl("verify", "-CAfile", `${dir}/ca.crt`, "-verify_ip", ip, `${dir}/leaf.pem`);
    }
  });
});

Deno.test("mintLeaf() gives every leaf a fresh positive 16-byte serial and the shared key", async () => {
  const ca = await ephemeralCa();
  const a = await mintLeaf(ca, "a.test");
  const b = await mintLeaf(ca, "b.test");
  const a2 = await mintLeaf(ca, "a.test");
  assert.equal(a.keyPem, b.keyPem);
  await withTempDir(async (dir) => {
    const serials = [];
    for (const leaf of [a, b, a2]) {
      const f = `${dir}/${crypto.randomUUID()}.pem`;
      await Deno.writeTextFile(f, leaf.certPem);
      const s = (await openssl("x509", "-in", f, "-noout", "-serial")).trim().split("=")[1];
      assert.equal(s.length, 32, `16 bytes, no sign pad byte: ${s}`);
      assert.ok(parseInt(s[0], 16) < 8, "top bit clear: positive");
      serials.push(s);
    }
    assert.equal(new Set(serials).size, 3);
  });
  // A different CA object has its own leaf key.
  assert.notEqual((await mintLeaf(await ephemeralCa(), "a.test")).keyPem, a.keyPem);
});

Deno.test("mintLeaf() omits a CN too long for X.520 and makes the SAN critical", async () => {
  const ca = await ephemeralCa();
  const name = `${"a".repeat(63)}.${"b".repeat(20)}.test`;
  await withTempDir(async (dir) => {
    const text = await certText(dir, (await mintLeaf(ca, name)).certPem);
    assert.match(text, /Subject: \n/);
    assert.match(text, new RegExp(`Subject Alternative Name: critical\\n\\s+DNS:${name}\\n`));
  });
});

Deno.test("mintLeaf() never lets a leaf outlive its CA, and refuses once the CA expired", async () => {
  const ca = await ephemeralCa();
  const late = new Date(ca.notAfter.getTime() - 3_600_000);
  const leaf = await mintLeaf(ca, "late.test", { now: late });
  assert.equal(leaf.notAfter.getTime(), ca.notAfter.getTime());
  await assert.rejects(
    mintLeaf(ca, "late.test", { now: ca.notAfter }),
    caError("expired", "sluice ca init --force"),
  );
});

Deno.test("mintLeaf() honours validityHours and rejects a non-positive one", async () => {
  const ca = await ephemeralCa();
  const now = new Date(Math.floor(Date.now() / 1000) * 1000);
  const leaf = await mintLeaf(ca, "short.test", { now, validityHours: 2 });
  assert.equal(leaf.notAfter.getTime(), now.getTime() + 2 * 3_600_000);
  for (const h of [0, -1, NaN, Infinity]) {
    await assert.rejects(mintLeaf(ca, "x.test", { validityHours: h }), caError("positive"));
  }
});

Deno.test("mintLeaf() rejects a CA object not made by lib/tls/ca.ts", async () => {
  const real = await ephemeralCa();
  const forged: CertificateAuthority = { ...real };
  await assert.rejects(mintLeaf(forged, "a.test"), caError("initCa, loadCa or ephemeralCa"));
});

// ---------------------------------------------------------------------------------------------
// normalizeLeafName

Deno.test("normalizeLeafName() canonicalizes names and IP literals", () => {
  const cases: [string, string, "dns" | "ip"][] = [
    ["Example.COM", "example.com", "dns"],
    ["example.com.", "example.com", "dns"],
    ["_dmarc.x-y.example", "_dmarc.x-y.example", "dns"],
    ["localhost", "localhost", "dns"],
    ["10.0.0.1", "10.0.0.1", "ip"],
    ["10.0.0.1.", "10.0.0.1", "ip"],
    ["::1", "::1", "ip"],
    ["[::1]", "::1", "ip"],
    ["2001:DB8:0:0:0:0:0:1", "2001:db8::1", "ip"],
    ["::ffff:1.2.3.4", "::ffff:102:304", "ip"],
    ["a".repeat(63) + ".test", "a".repeat(63) + ".test", "dns"],
  ];
  for (const [input, value, kind] of cases) {
    assert.deepEqual(normalizeLeafName(input), { kind, value }, input);
  }
});

Deno.test("normalizeLeafName() refuses what must not go into a certificate", () => {
  const cases: [string, string][] = [
    ["", "the client sent no server name"],
    [".", "not a DNS name"],
    ["*.example.com", "not a DNS name"],
    ["a..b", "not a DNS name"],
    ["-a.test", "not a DNS name"],
    ["a-.test", "not a DNS name"],
    ["a b.test", "not a DNS name"],
    ["a/b", "not a DNS name"],
    ["a\u0000b.test", "not a DNS name"],
    ["bücher.test", "not a DNS name"],
    ["a".repeat(64) + ".test", "not a DNS name"],
    [("a".repeat(60) + ".").repeat(5) + "test", "not a DNS name"],
    ["256.1.1.1", "not a valid IPv4"],
    ["01.2.3.4", "not a valid IPv4"],
    ["fe80::1%eth0", "not a valid IPv6"],
    ["1:2:3", "not a valid IPv6"],
    ["example.com:443", "not a valid IPv6"],
  ];
  for (const [input, why] of cases) {
    assert.throws(() => normalizeLeafName(input), caError(why), JSON.stringify(input));
  }
});

// ---------------------------------------------------------------------------------------------
// loadCa: user-provided CAs

Deno.test("loadCa() accepts openssl-made EC P-256, P-384 and RSA CAs and mints verifiable leaves", async () => {
  await withTempDir(async (dir) => {
    for (const key of ["ec", "p384", "rsa"] as const) {
      const files = await opensslCa(dir, `corp-${key}`, { key });
      const ca = await loadCa(files.cert, files.key);
      assert.equal(ca.subject, `CN=corp-${key}`);
      assert.equal(ca.certPath, files.cert);
      assert.equal(ca.certPem, await Deno.readTextFile(files.cert));
      const leaf = await mintLeaf(ca, "intranet.corp.test");
      await Deno.writeTextFile(`${dir}/leaf.pem`, leaf.certPem);
      const out = await openssl(
        "verify",
        "-CAfile",
        files.cert,
        "-purpose",
        "sslserver",
        "-verify_hostname",
        "intranet.corp.test",
        `${dir}/leaf.pem`,
      );
      assert.match(out, /OK/, key);
      assert.match(await certText(dir, leaf.certPem), /NIST CURVE: P-256/, "leaves stay P-256");
    }
  });
});

Deno.test("loadCa() serves the extra certificates of the CA file after the CA", async () => {
  await withTempDir(async (dir) => {
    const sub = await opensslCa(dir, "sub");
    const other = await opensslCa(dir, "other");
    const bundle = `${dir}/bundle.crt`;
    await Deno.writeTextFile(
      bundle,
      (await Deno.readTextFile(sub.cert)) + (await Deno.readTextFile(other.cert)),
    );
    const ca = await loadCa(bundle, sub.key);
    assert.equal(ca.subject, "CN=sub");
    assert.equal(countCerts(ca.certPem), 2);
    const leaf = await mintLeaf(ca, "x.test");
    assert.equal(countCerts(leaf.certPem), 3);
  });
});

Deno.test("loadCa() rejects a half-configured or unusable user CA with a clear error", async () => {
  await withTempDir(async (dir) => {
    const good = await opensslCa(dir, "good");
    const other = await opensslCa(dir, "other");
    const leafOnly = await opensslCa(dir, "leafonly", {
      ext: ["basicConstraints = critical,CA:FALSE", "keyUsage = critical,digitalSignature"],
    });
    const noBc = await opensslCa(dir, "nobc", { ext: ["keyUsage = critical,digitalSignature"] });
    const noSign = await opensslCa(dir, "nosign", {
      ext: ["basicConstraints = critical,CA:TRUE", "keyUsage = critical,digitalSignature"],
    });
    const encrypted = `${dir}/enc.key`;
    await openssl("pkey", "-in", good.key, "-aes256", "-passout", "pass:x", "-out", encrypted);
    const pub = `${dir}/pub.pem`;
    await openssl("pkey", "-in", good.key, "-pubout", "-out", pub);
    const garbage = `${dir}/garbage.txt`;
    await Deno.writeTextFile(garbage, "not a certificate\n");

    const cases: { name: string; cert: string; key: string; want: string[] }[] = [
      {
        name: "only the cert",
        cert: good.cert,
        key: "",
        want: ["needs both tls.ca.cert and tls.ca.key", "only tls.ca.cert", "add tls.ca.key"],
      },
      {
        name: "only the key",
        cert: "",
        key: good.key,
        want: ["only tls.ca.key", "add tls.ca.cert"],
      },
      {
        name: "missing cert file",
        cert: `${dir}/nope.crt`,
        key: good.key,
        want: [`${dir}/nope.crt: no such file`, "tls.ca.cert"],
      },
      {
        name: "missing key file",
        cert: good.cert,
        key: `${dir}/nope.key`,
        want: [`${dir}/nope.key: no such file`, "tls.ca.key"],
      },
      {
        name: "mismatched key",
        cert: good.cert,
        key: other.key,
        want: [`key in ${other.key} does not belong to the certificate in ${good.cert}`],
      },
      {
        name: "a leaf certificate",
        cert: leafOnly.cert,
        key: leafOnly.key,
        want: [leafOnly.cert, "not a CA certificate", "CA:TRUE"],
      },
      {
        name: "a certificate without basicConstraints",
        cert: noBc.cert,
        key: noBc.key,
        want: [noBc.cert, "not a CA certificate"],
      },
      {
        name: "a CA without keyCertSign",
        cert: noSign.cert,
        key: noSign.key,
        want: [noSign.cert, "keyCertSign"],
      },
      {
        name: "an encrypted key",
        cert: good.cert,
        key: encrypted,
        want: [encrypted, "unencrypted", "openssl pkey"],
      },
      {
        name: "a public key as the key",
        cert: good.cert,
        key: pub,
        want: [pub],
      },
      {
        name: "the key given as the cert",
        cert: good.key,
        key: good.key,
        want: [`No PEM certificate in ${good.key}`],
      },
      {
        name: "a file that is not PEM",
        cert: garbage,
        key: good.key,
        want: [`No PEM certificate in ${garbage}`],
      },
    ];
    for (const c of cases) {
      await assert.rejects(loadCa(c.cert, c.key), caError(...c.want), c.name);
    }
  });
});

Deno.test("loadCa() rejects a CA outside its validity", async () => {
  await withTempDir(async (dir) => {
    const files = await opensslCa(dir, "dated");
    const inYears = new Date(Date.now() + 5 * 365 * 86_400_000);
    await assert.rejects(loadCa(files.cert, files.key, { now: inYears }), caError("expired"));
    const before = new Date(Date.now() - 86_400_000);
    await assert.rejects(
      loadCa(files.cert, files.key, { now: before }),
      caError("not valid before", "clock"),
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Real TLS: leaves served per SNI by Deno.listenTls, checked by real clients.

/** A TLS server picking certificates through `resolve`, answering one HTTP/1.1 request. */
function serveTls(
  resolve: (sni: string) => Promise<{ cert: string; key: string }>,
): { port: number; close: () => Promise<void> } {
  const options = {
    hostname: "127.0.0.1",
    port: 0,
    [Symbol.for("unstableSniResolver")]: resolve,
  };
  // With a resolver Deno needs no default cert/key; the public type still asks for them.
  const listener = Deno.listenTls(
    options as unknown as Deno.ListenTlsOptions & Deno.TlsCertifiedKeyPem,
  );
  const conns = new Set<Promise<void>>();
  const loop = (async () => {
    for await (const conn of listener) {
      const p = (async () => {
        try {
          const buf = new Uint8Array(4096);
          // Reading runs the handshake; a client that only handshakes then closes reads null.
          const n = await conn.read(buf);
          if (n !== null) {
            await conn.write(
              new TextEncoder().encode(
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
              ),
            );
          }
        } catch {
          // A client aborting the handshake (as s_client does) is not this test's subject.
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
    port: (listener.addr as Deno.NetAddr).port,
    close: async () => {
      listener.close();
      await loop.catch(() => {});
      await Promise.all([...conns]);
    },
  };
}

Deno.test("LeafCache.get() as listenTls resolver: curl and openssl get a CA-verified leaf per SNI", async () => {
  await withTempDir(async (dir) => {
    const { ca } = await initCa(dir);
    const cache = new LeafCache(ca);
    const seen: string[] = [];
    const server = serveTls((sni) => {
      seen.push(sni);
      return cache.get(sni);
    });
    try {
      const caFile = caPaths(dir).cert;
      const leafOf = async (name: string): Promise<string> => {
        const r = await run("openssl", [
          "s_client",
          "-connect",
          `127.0.0.1:${server.port}`,
          "-servername",
          name,
          "-CAfile",
          caFile,
          "-verify_return_error",
          "-verify_hostname",
          name,
          "-showcerts",
        ], "");
        assert.equal(r.code, 0, `s_client ${name}: ${r.stderr}`);
        assert.match(r.stdout, /Verify return code: 0 \(ok\)/);
        assert.match(r.stdout, new RegExp(`0 s:CN = ${name.replaceAll(".", "\\.")}\\n`));
        // Leaf and CA are both on the wire.
        assert.match(r.stdout, /1 s:CN = sluice local CA/);
        return r.stdout.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/)![0];
      };
      const a = await leafOf("a.test");
      const b = await leafOf("b.test");
      assert.notEqual(a, b);
      assert.equal(await leafOf("a.test"), a, "the same name gets the same leaf again");

      const curl = await run("curl", [
        "-sS",
        "--cacert",
        caFile,
        "--resolve",
        `c.test:${server.port}:127.0.0.1`,
        `https://c.test:${server.port}/`,
      ]);
      assert.equal(curl.code, 0, curl.stderr);
      assert.equal(curl.stdout, "ok\n");

      // Without the CA, a client refuses the leaf: trust really comes from the CA.
      const untrusted = await run("curl", [
        "-sS",
        "--resolve",
        `c.test:${server.port}:127.0.0.1`,
        `https://c.test:${server.port}/`,
      ]);
      assert.notEqual(untrusted.code, 0);

      // Deno 2.9.6 calls the resolver once per name for the listener's lifetime and caches the
      // answer itself (a failure too), so repeat handshakes never reach the LeafCache. LeafCache
      // renewal therefore reaches clients only through a new listener. If this starts failing,
      // Deno changed that cache: re-read lib/tls/leaf_cache.ts's module doc.
      assert.deepEqual(seen, ["a.test", "b.test", "c.test"]);
      assert.deepEqual(cache.stats(), { hits: 0, misses: 3, mints: 3, size: 3 });
    } finally {
      await server.close();
    }
  });
});

Deno.test("LeafCache.get() as resolver: Deno.connectTls verifies an IP leaf against the CA", async () => {
  const ca = await ephemeralCa();
  const cache = new LeafCache(ca);
  // Clients send no SNI for an IP address, so the server maps "" to its own address.
  const server = serveTls((sni) => cache.get(sni === "" ? "127.0.0.1" : sni));
  try {
    const conn = await Deno.connectTls({
      hostname: "127.0.0.1",
      port: server.port,
      caCerts: [ca.certPem],
    });
    try {
      await conn.write(new TextEncoder().encode("GET / HTTP/1.1\r\nhost: x\r\n\r\n"));
      const buf = new Uint8Array(256);
      const n = await conn.read(buf);
      assert.match(new TextDecoder().decode(buf.subarray(0, n ?? 0)), /^HTTP\/1\.1 200 OK/);
    } finally {
      conn.close();
    }
    // And a different CA's client trust does not accept it.
    const stranger = await ephemeralCa();
    await assert.rejects(
      Deno.connectTls({ hostname: "127.0.0.1", port: server.port, caCerts: [stranger.certPem] })
        .then(async (c) => {
          try {
            await c.handshake();
          } finally {
            c.close();
          }
        }),
      /UnknownIssuer/,
    );
  } finally {
    await server.close();
  }
});
