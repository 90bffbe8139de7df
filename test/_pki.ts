/**
 * A throwaway CA and one leaf made with the openssl CLI, for tests that must not trust sluice's
 * own certificate code to make their TLS fixtures (a bug shared with lib/tls/ca.ts could hide).
 */

/** PEM text of the CA, the leaf and its key; `dir` holds the files until the caller removes it. */
export type OpensslPki = { dir: string; ca: string; cert: string; key: string };

/**
 * A P-256 CA and a leaf for `name` (SAN DNS:name, serverAuth), valid two days.
 *
 * @param name the leaf's DNS name
 * @returns the PEMs and the directory they were written to; remove it when done
 * @throws {Error} with openssl's stderr when a step fails
 */
export async function opensslPki(name: string): Promise<OpensslPki> {
  const dir = await Deno.makeTempDir({ prefix: "sluice-pki-" });
  const run = async (args: string[]): Promise<void> => {
    const out = await new Deno.Command("openssl", { args, cwd: dir, stderr: "piped" }).output();
    if (!out.success) {
      throw new Error(`openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
    }
  };
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await run([
    "req",
    "-x509",
    ...ec,
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=sluice test CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign",
  ]);
  await run(["req", ...ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", `/CN=${name}`]);
  await Deno.writeTextFile(
    `${dir}/ext.cnf`,
    `subjectAltName=DNS:${name}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`,
  );
  await run([
    "x509",
    "-req",
    "-in",
    "leaf.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "leaf.pem",
    "-days",
    "2",
    "-extfile",
    "ext.cnf",
  ]);
  const read = (f: string): Promise<string> => Deno.readTextFile(`${dir}/${f}`);
  return {
    dir,
    ca: await read("ca.pem"),
    cert: await read("leaf.pem"),
    key: await read("leaf.key"),
  };
}

/**
 * A client certificate (clientAuth) for `cn`, signed by the CA of `pki`, written to
 * `pki.dir` as `<cn>.pem` and `<cn>.key`.
 *
 * @param pki a CA made by {@link opensslPki}
 * @param cn the certificate's common name
 * @returns the paths of the certificate and key files
 * @throws {Error} with openssl's stderr when a step fails
 */
export async function opensslClientCert(
  pki: OpensslPki,
  cn: string,
): Promise<{ certPath: string; keyPath: string }> {
  const run = async (args: string[]): Promise<void> => {
    const out = await new Deno.Command("openssl", { args, cwd: pki.dir, stderr: "piped" })
      .output();
    if (!out.success) {
      throw new Error(`openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
    }
  };
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await run(["req", ...ec, "-keyout", `${cn}.key`, "-out", `${cn}.csr`, "-subj", `/CN=${cn}`]);
  await Deno.writeTextFile(
    `${pki.dir}/${cn}.cnf`,
    "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
  );
  await run([
    "x509",
    "-req",
    "-in",
    `${cn}.csr`,
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    `${cn}.pem`,
    "-days",
    "2",
    "-extfile",
    `${cn}.cnf`,
  ]);
  return { certPath: `${pki.dir}/${cn}.pem`, keyPath: `${pki.dir}/${cn}.key` };
}
