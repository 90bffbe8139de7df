/**
 * The validated, normalized policy: what `validatePolicy` returns and the
 * compiler consumes. Every element keeps the location it was written at, so a
 * decision can always name `file:line`.
 *
 * @module
 */
import type { Loc } from "./errors.ts";
import type { HostPattern } from "./host.ts";
import type { Cidr, Ip } from "./address.ts";
import type { PathGlob } from "./path.ts";

/** What a network rule matches before ports, methods and paths. */
export type Target =
  | { kind: "host"; pattern: HostPattern }
  | { kind: "ip"; ip: Ip }
  | { kind: "cidr"; cidr: Cidr };

/** One entry of `network.allow` or `network.deny`, in any of its written forms. */
export type NetRule = {
  /** Position across both lists in file order; lower ids were written first. */
  id: number;
  list: "allow" | "deny";
  /** Index inside its list, for paths such as `network.allow[3]`. */
  index: number;
  /** The rule as written (the long form is rendered in the short syntax). */
  source: string;
  loc: Loc;
  target: Target;
  /** Null means any port. */
  ports: readonly number[] | null;
  /** Uppercase; null means any method. */
  methods: readonly string[] | null;
  /** Null means any path. */
  paths: readonly PathGlob[] | null;
};

/** Where a credential's real value comes from. */
export type CredentialSource =
  | { kind: "env"; name: string }
  | { kind: "file"; path: string }
  | { kind: "credential"; name: string };

/** Where in a request a placeholder is looked for and replaced. */
export type CredentialPlace = "header" | "query" | "path" | "body";

/** A host a credential may be sent to; `port` null means any port. */
export type CredentialHost = {
  pattern: HostPattern;
  port: number | null;
  source: string;
  loc: Loc;
};

/** How an `oauth2` credential's access tokens are obtained (RFC 6749 §4.4, §6; RFC 7523). */
export type OAuth2Grant = "refresh_token" | "client_credentials" | "jwt_bearer";

/**
 * The token endpoint and grant of a `kind: oauth2` credential. Sluice holds the long-lived
 * material (read from its sources like any secret) and mints the access tokens it substitutes.
 */
export type OAuth2Spec = {
  /** The token endpoint, an https URL; its host and port must be allowed by `network`. */
  tokenUrl: string;
  tokenUrlLoc: Loc;
  grant: OAuth2Grant;
  clientId?: string;
  clientSecret?: CredentialSource;
  refreshToken?: CredentialSource;
  /** jwt_bearer: a PEM RSA private key (PKCS#8), or a Google service-account JSON key file. */
  key?: CredentialSource;
  /** jwt_bearer: the assertion's `iss` (a service account's client_email when the key is JSON). */
  issuer?: string;
  /** jwt_bearer: the assertion's `sub` (the user to act for, in domain-wide delegation). */
  subject?: string;
  /** jwt_bearer: the assertion's `aud`; the token URL when absent. */
  audience?: string;
  scope?: string;
  /** How the client authenticates: HTTP Basic (RFC 6749 §2.3.1) or in the form body. */
  clientAuth: "basic" | "body";
};

/** One entry of `credentials`. Never holds the secret value itself. */
export type Credential = {
  name: string;
  loc: Loc;
  /**
   * `static`: the value comes from `from`; `oauth2`: sluice mints it (`oauth2`); `aws_sigv4`:
   * sluice re-signs requests signed with placeholder keys (`sigv4`), substituting nothing.
   */
  kind: "static" | "oauth2" | "aws_sigv4";
  /** Where a static credential's value comes from; null for oauth2. */
  from: CredentialSource | null;
  oauth2?: OAuth2Spec;
  /** The real AWS keys' sources (`kind: aws_sigv4`). */
  sigv4?: {
    accessKeyId: CredentialSource;
    secretAccessKey: CredentialSource;
    sessionToken?: CredentialSource;
  };
  hosts: readonly CredentialHost[];
  /** The fixed placeholder if the policy sets one; otherwise sluice derives it from its state. */
  placeholder?: string;
  in: readonly CredentialPlace[];
  inject?: { header: string; value: string };
  onViolation: "block" | "block_and_terminate";
};

/**
 * A `credentials` entry of `kind: client_cert`: a certificate and its private key that sluice
 * presents to the credential's hosts in its upstream TLS handshakes (mTLS). The workload holds
 * nothing: no placeholder, no substitution. Never holds the key itself.
 */
export type ClientCert = {
  name: string;
  loc: Loc;
  /** The PEM certificate chain (not secret). */
  cert: CredentialSource;
  /** The PEM private key (the secret). */
  key: CredentialSource;
  hosts: readonly CredentialHost[];
};

/** A listener address; a missing hostname means the listener's default (loopback). */
export type Endpoint = { hostname?: string; port: number; loc: Loc };

/** Per-host upstream TLS settings; the most specific `match` wins. */
export type UpstreamHostTls = {
  match: HostPattern;
  ca: readonly string[];
  verify?: boolean;
  loc: Loc;
};

/** A located host pattern, as in `tls.passthrough`. */
export type LocatedPattern = { pattern: HostPattern; source: string; loc: Loc };

/** A whole validated policy. */
export type Policy = {
  file: string;
  version: 1;
  network: {
    default: "deny" | "allow";
    defaultLoc?: Loc;
    allow: readonly NetRule[];
    deny: readonly NetRule[];
    private: "deny" | "allow";
    privateLoc?: Loc;
  };
  credentials: readonly Credential[];
  /** `credentials` entries of `kind: client_cert` (kept apart: nothing of theirs is substituted). */
  clientCerts: readonly ClientCert[];
  tls: {
    intercept: boolean;
    passthrough: readonly LocatedPattern[];
    ca?: { cert: string; key: string };
    upstream: { verify: boolean; ca: readonly string[]; hosts: readonly UpstreamHostTls[] };
  };
  listen: {
    proxy?: Endpoint;
    transparent?: { https?: Endpoint; http?: Endpoint };
    dns?: Endpoint;
    admin?: Endpoint;
  };
  enforce: {
    backend: "auto" | "nftables" | "iptables" | "none";
    subjects: {
      users: readonly (string | number)[];
      cgroups: readonly string[];
      interfaces: readonly string[];
    };
    ports: { http: readonly number[]; https: readonly number[] };
    dns: "proxy" | "allow" | "block";
    other: "drop" | "allow";
  };
  audit: { log: string };
};

/**
 * Every source a credential reads secret material from: a static credential's `from`, an
 * oauth2 credential's client secret, refresh token and key.
 */
export function credentialSourcesOf(c: Credential): CredentialSource[] {
  if (c.from) return [c.from];
  if (c.sigv4) {
    const k = c.sigv4;
    return [k.accessKeyId, k.secretAccessKey, ...(k.sessionToken ? [k.sessionToken] : [])];
  }
  const o = c.oauth2;
  return o ? [o.clientSecret, o.refreshToken, o.key].filter((s) => s !== undefined) : [];
}
