/**
 * Client certificates (`kind: client_cert` credentials): loaded once per policy load, chosen
 * per upstream connection by host and port, presented by sluice in the upstream TLS handshake
 * (mTLS). The workload holds nothing and does nothing: no placeholder, no environment variable.
 * The private key stays inside a {@link SecretValue} and is revealed only to the TLS client
 * (lib/upstream/connection.ts).
 *
 * @module
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { credentialAllowedFor } from "../../policy/decide.ts";
import type { ClientCert } from "../../policy/types.ts";
import {
  type EnvReader,
  formatSource,
  readSource,
  SecretError,
  SecretValue,
  type TextFileReader,
} from "./secrets.ts";

/** A certificate to present: the credential's name, the PEM chain, the key, a pool id. */
export type Presented = {
  name: string;
  cert: string;
  key: SecretValue;
  /** Distinguishes upstream connections made with this certificate in the pool. */
  id: string;
};

/** The loaded client certificates of a policy. */
export class ClientCerts {
  readonly #list: readonly { spec: ClientCert; presented: Presented }[];

  /** @param list each credential with what it presents */
  constructor(list: readonly { spec: ClientCert; presented: Presented }[]) {
    this.#list = list;
  }

  /** Number of client certificates. */
  get size(): number {
    return this.#list.length;
  }

  /**
   * Every private key, for `sluice run` to keep any variable holding one out of the command's
   * environment. Compare only; never print.
   */
  revealKeys(): string[] {
    return this.#list.map((c) => c.presented.key.reveal());
  }

  /**
   * The certificate to present to `host:port`: the first `client_cert` credential (in policy
   * order) whose hosts include it.
   *
   * @param host the upstream's name (or IP literal), as decided
   * @param port its port
   * @returns what to present, or undefined for none
   */
  forHost(host: string, port: number): Presented | undefined {
    if (this.#list.length === 0) return undefined;
    return this.#list.find((c) => credentialAllowedFor(c.spec, host, port))?.presented;
  }
}

/** No client certificates. */
export const NO_CLIENT_CERTS: ClientCerts = new ClientCerts([]);

/**
 * Reads every client certificate and its key, and checks that each is PEM and that the key
 * belongs to the certificate.
 *
 * @param specs the policy's `client_cert` credentials
 * @param env sluice's environment
 * @param readFile reads a file as text
 * @param credentialsDirectory `$CREDENTIALS_DIRECTORY`, or undefined when unset
 * @returns the loaded certificates
 * @throws {SecretError} listing every one that could not be loaded (names and sources only)
 */
export async function loadClientCerts(
  specs: readonly ClientCert[],
  env: EnvReader,
  readFile: TextFileReader,
  credentialsDirectory: string | undefined,
): Promise<ClientCerts> {
  if (specs.length === 0) return NO_CLIENT_CERTS;
  const problems: string[] = [];
  const list: { spec: ClientCert; presented: Presented }[] = [];
  for (const spec of specs) {
    const [cert, key] = await Promise.all([
      readSource(spec.name, spec.cert, env, readFile, credentialsDirectory),
      readSource(spec.name, spec.key, env, readFile, credentialsDirectory),
    ]);
    if (typeof cert === "object") problems.push(cert.problem);
    if (typeof key === "object") problems.push(key.problem);
    if (typeof cert === "object" || typeof key === "object") continue;
    const certAt = `credential ${spec.name}: ${formatSource(spec.cert)}`;
    const keyAt = `credential ${spec.name}: ${formatSource(spec.key)}`;
    let x509: X509Certificate;
    try {
      x509 = new X509Certificate(cert);
    } catch {
      problems.push(`${certAt} is not a PEM certificate (-----BEGIN CERTIFICATE-----)`);
      continue;
    }
    let matches: boolean;
    try {
      matches = x509.checkPrivateKey(createPrivateKey(key));
    } catch {
      // Not the parser's message: it could quote the key.
      problems.push(`${keyAt} is not a PEM private key (-----BEGIN ... PRIVATE KEY-----)`);
      continue;
    }
    if (!matches) {
      problems.push(`${keyAt} is not the private key of ${formatSource(spec.cert)}`);
      continue;
    }
    list.push({
      spec,
      presented: {
        name: spec.name,
        cert,
        key: new SecretValue(spec.name, key),
        id: `${spec.name}:${x509.fingerprint256}`,
      },
    });
  }
  if (problems.length) throw new SecretError(problems);
  return new ClientCerts(list);
}
