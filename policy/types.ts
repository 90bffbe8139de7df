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

/** One entry of `credentials`. Never holds the secret value itself. */
export type Credential = {
  name: string;
  loc: Loc;
  from: CredentialSource;
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
