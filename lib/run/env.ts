/**
 * The environment a `sluice run` command gets. It is BUILT, not inherited:
 * the workload must never hold a real secret, and sluice's own environment
 * is where secrets usually arrive (a CI runner exports them for the step).
 *
 * The rule (docs/enforcement.md, "The command's environment"), in order:
 *   1. start from sluice's environment, or with `--clear-env` from only the
 *      {@link BASE_VARIABLES} plus each `--pass-env NAME`;
 *   2. remove every variable a credential is read from (`from: env:NAME`),
 *      whatever it is called;
 *   3. remove every variable whose value contains a loaded secret value, in
 *      any form the response scrubber looks for (`scrubForms`: raw,
 *      percent-encoded, JSON-escaped, base64 / base64url at any offset): a
 *      `Bearer …` header, a URL with the token in it, a Basic `user:secret`;
 *   4. remove variables that belong to sluice, not the command
 *      ({@link SLUICE_OWN_VARIABLES}: the systemd sockets and credential
 *      directory, the trust-store choice sluice made for itself);
 *   5. set each credential's placeholder under the credential's name, and
 *      the CA variables ({@link caVariables}) to sluice's bundle;
 *   6. with `--weak` only: the proxy variables.
 *
 * Pure (no I/O): tested by a table of named cases.
 *
 * @module
 */
import { scrubForms } from "../credentials/scrub.ts";
import { credentialSourcesOf, type Policy } from "../../policy/types.ts";

/** Variables kept by `--clear-env`: what a shell and common tools need to work at all. */
export const BASE_VARIABLES: readonly string[] = [
  "PATH",
  "HOME",
  "USER",
  "LOGNAME",
  "SHELL",
  "TERM",
  "LANG",
  "LANGUAGE",
  "TZ",
  "TMPDIR",
];

/** Variables that are sluice's own and never the command's. */
export const SLUICE_OWN_VARIABLES: readonly string[] = [
  // systemd: the command must not notify or take over sluice's sockets or credentials.
  "NOTIFY_SOCKET",
  "LISTEN_FDS",
  "LISTEN_PID",
  "LISTEN_FDNAMES",
  "CREDENTIALS_DIRECTORY",
  "WATCHDOG_PID",
  "WATCHDOG_USEC",
];

/** Where the CA material for the command is (written by lib/run/trust.ts). */
export type TrustFiles = {
  /** PEM bundle: the system roots plus sluice's CA. */
  bundle: string;
  /** A directory with the system certificates and sluice's CA under its OpenSSL hash name. */
  certDir?: string;
  /** A trust store for Java (system roots plus sluice's CA), when keytool was found. */
  javaTrustStore?: { path: string; password: string; type: string };
};

/**
 * Every variable through which a common runtime or tool reads its CA roots,
 * set to sluice's material. Variables that tools read in preference to their
 * config files are chosen where a tool has both (npm's `cafile` in an npmrc
 * overrides NODE_EXTRA_CA_CERTS, so NPM_CONFIG_CAFILE is set too).
 *
 * @param trust the files sluice wrote
 * @param javaToolOptions the JAVA_TOOL_OPTIONS already in the environment, kept after ours
 * @returns variable name to value
 */
export function caVariables(trust: TrustFiles, javaToolOptions?: string): Record<string, string> {
  const b = trust.bundle;
  const vars: Record<string, string> = {
    SSL_CERT_FILE: b, // OpenSSL, Go, Ruby, Python's ssl, httpx
    REQUESTS_CA_BUNDLE: b, // Python requests
    CURL_CA_BUNDLE: b, // curl
    NODE_EXTRA_CA_CERTS: b, // Node.js (added to its roots)
    NPM_CONFIG_CAFILE: b, // npm: env beats any npmrc's cafile
    GIT_SSL_CAINFO: b, // git
    DENO_CERT: b, // Deno
    AWS_CA_BUNDLE: b, // AWS CLI and SDKs
    PIP_CERT: b, // pip
    CARGO_HTTP_CAINFO: b, // Cargo
    GRPC_DEFAULT_SSL_ROOTS_FILE_PATH: b, // gRPC C core (Python, Ruby, PHP gRPC)
  };
  if (trust.certDir) vars.SSL_CERT_DIR = trust.certDir; // OpenSSL's hashed lookup, Go
  if (trust.javaTrustStore) {
    const { path, password, type } = trust.javaTrustStore;
    const ours = `-Djavax.net.ssl.trustStore=${path} -Djavax.net.ssl.trustStoreType=${type} ` +
      `-Djavax.net.ssl.trustStorePassword=${password}`;
    // The JVM reads JAVA_TOOL_OPTIONS left to right and the last -D wins: ours go last.
    vars.JAVA_TOOL_OPTIONS = javaToolOptions ? `${javaToolOptions} ${ours}` : ours;
  }
  return vars;
}

/**
 * The placeholders as the command's variables: each credential's under its name, except that the
 * first aws_sigv4 credential's keys go where the AWS CLI and SDKs read them (its key id in
 * AWS_ACCESS_KEY_ID, its `NAME#secret_access_key` and `NAME#session_token` placeholders in
 * AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN). Later aws_sigv4 credentials keep only their key
 * id, under their name.
 *
 * @returns variable name to placeholder
 */
export function childPlaceholders(
  policy: Policy,
  placeholders: ReadonlyMap<string, string>,
): Map<string, string> {
  const first = policy.credentials.find((c) => c.kind === "aws_sigv4")?.name;
  const aws: Record<string, string> = first
    ? {
      [first]: "AWS_ACCESS_KEY_ID",
      [`${first}#secret_access_key`]: "AWS_SECRET_ACCESS_KEY",
      [`${first}#session_token`]: "AWS_SESSION_TOKEN",
    }
    : {};
  const out = new Map<string, string>();
  for (const [name, ph] of placeholders) {
    const variable = aws[name] ?? (name.includes("#") ? undefined : name);
    if (variable) out.set(variable, ph);
  }
  return out;
}

/** What {@link buildChildEnv} needs to know. */
export type ChildEnvInputs = {
  /** sluice's own environment. */
  base: Readonly<Record<string, string>>;
  /** Names of the variables credentials are read from (`from: env:NAME`). */
  sourceVariables: readonly string[];
  /** Every loaded secret value (raw). Used only to compare, never returned. */
  secretValues: readonly string[];
  /** Variable name to placeholder ({@link childPlaceholders}). */
  placeholders: ReadonlyMap<string, string>;
  /** CA variables, from {@link caVariables}. */
  ca: Readonly<Record<string, string>>;
  /** `--clear-env`: start from {@link BASE_VARIABLES} only. */
  clear?: boolean;
  /** `--pass-env NAME`: kept with `--clear-env` (never when it is a secret). */
  pass?: readonly string[];
  /** `--weak`: the proxy URL for HTTP(S)_PROXY. */
  proxy?: string;
  /** Variables sluice set for itself (e.g. DENO_TLS_CA_STORE), removed unless the user set them. */
  ownSettings?: readonly string[];
};

/** The environment, and the names removed because they held (or were the source of) a secret. */
export type ChildEnv = { env: Record<string, string>; withheld: string[] };

/**
 * Builds the command's environment by the rule in this module's header.
 *
 * @returns the environment and the withheld variable NAMES (safe to print)
 */
export function buildChildEnv(inputs: ChildEnvInputs): ChildEnv {
  const keep = inputs.clear ? new Set([...BASE_VARIABLES, ...(inputs.pass ?? [])]) : undefined;
  const sources = new Set(inputs.sourceVariables);
  // The forms the response scrubber searches for (lib/credentials/scrub.ts), plus the value as
  // a JS string (scrubForms gives byte strings, which differ for non-ASCII values).
  const forms = [...inputs.secretValues, ...inputs.secretValues.flatMap(scrubForms)];
  const own = new Set([...SLUICE_OWN_VARIABLES, ...(inputs.ownSettings ?? [])]);
  const env: Record<string, string> = {};
  const withheld: string[] = [];
  for (const [name, value] of Object.entries(inputs.base)) {
    if (keep && !keep.has(name)) continue;
    if (own.has(name)) continue;
    if (sources.has(name) || forms.some((f) => value.includes(f))) {
      withheld.push(name);
      continue;
    }
    env[name] = value;
  }
  for (const [name, ph] of inputs.placeholders) env[name] = ph;
  Object.assign(env, inputs.ca);
  if (inputs.proxy) {
    for (const v of ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]) {
      env[v] = inputs.proxy;
    }
    delete env.NO_PROXY;
    delete env.no_proxy;
  }
  return { env, withheld: withheld.sort() };
}

/**
 * The environment variables (or files) every credential reads from: static credentials' `from`,
 * oauth2 credentials' client secret, refresh token and key, client certificates' `cert` and `key`. The command gets none of them.
 *
 * @param policy the policy
 * @param kind which sources: variable names, or file paths
 * @returns the names or paths
 */
export function credentialSources(policy: Policy, kind: "env" | "file"): string[] {
  const sources = [
    ...policy.credentials.flatMap(credentialSourcesOf),
    ...policy.clientCerts.flatMap((c) => [c.cert, c.key]),
  ];
  return sources.flatMap((s) =>
    s.kind === "env" && kind === "env"
      ? [s.name]
      : s.kind === "file" && kind === "file"
      ? [s.path]
      : []
  );
}
