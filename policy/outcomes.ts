/**
 * Every way a request or connection can end, in one table: the policy's own
 * decisions and the data path's refusals and failures. Each code maps once to
 * the verdict, the HTTP status (or, where no HTTP can be spoken, what the
 * client gets instead), and a sentence for the docs. The audit log's `code` and
 * the `x-sluice-decision` header use these codes, and the verdict each maps to
 * is the `verdict` label of `sluice_requests_total` / `sluice_connections_total`
 * (codes are not metric labels: the audit log has them per request); docs/audit.md
 * is tested against this table (test/policy/outcomes_test.ts), and every
 * function that writes a refusal takes an {@link OutcomeCode}, so a code
 * outside the table does not type-check. Pure.
 *
 * @module
 */
import type { ReasonCode } from "./decide.ts";

/** What the client gets when sluice cannot answer with HTTP. */
export type NonHttp = "tls-alert" | "close" | "nxdomain" | "websocket-close";

/** One row of the table. */
export type Outcome = {
  verdict: "allow" | "deny";
  /** The status sluice answers with over HTTP (the upstream's own for an allowed request). */
  status: number;
  /** Where HTTP cannot be spoken (passthrough, a dead handshake, DNS, a WebSocket session). */
  otherwise?: NonHttp;
  /** Which stage decides it. */
  stage: "policy" | "data path" | "limits" | "upstream" | "credentials";
  /** What it means, for people (docs/audit.md). */
  meaning: string;
};

/** Codes decided outside the policy's rules: the data path, limits and upstream failures. */
export type DataPathCode =
  | "invalid-request"
  | "no-route"
  | "limit-per-client"
  | "limit-reserve"
  | "limit-total"
  | "resolve"
  | "upstream-connect"
  | "upstream-tls"
  | "upstream-timeout"
  | "upstream-protocol"
  | "upstream-reset"
  | "upstream-encoding"
  | "upstream-websocket"
  | "websocket-invalid"
  | "grpc-no-trailers"
  | "token-issued"
  | "credential-token"
  | "credential-signature";

/** Every code sluice writes in an audit record or an `x-sluice-decision` header. */
export type OutcomeCode = ReasonCode | DataPathCode;

/** The table. Order: the policy's decisions, then the data path, limits, upstream. */
export const OUTCOMES: Readonly<Record<OutcomeCode, Outcome>> = {
  "allow-rule": {
    verdict: "allow",
    status: 200,
    stage: "policy",
    meaning: "an allow rule matched (the status is the upstream's)",
  },
  "deny-rule": {
    verdict: "deny",
    status: 403,
    otherwise: "tls-alert",
    stage: "policy",
    meaning: "a deny rule matched",
  },
  "default": {
    verdict: "deny",
    status: 403,
    otherwise: "tls-alert",
    stage: "policy",
    meaning: "no rule matched and the default is deny",
  },
  "needs-inspection": {
    verdict: "allow",
    status: 200,
    stage: "policy",
    meaning: "a connection allowed only by HTTP rules: TLS is intercepted and each request " +
      "is decided on its own",
  },
  "passthrough-uninspectable": {
    verdict: "deny",
    status: 403,
    otherwise: "tls-alert",
    stage: "policy",
    meaning: "the host is passed through, so its HTTP rules cannot apply",
  },
  "private-address": {
    verdict: "deny",
    status: 403,
    otherwise: "tls-alert",
    stage: "policy",
    meaning: "the address is private, loopback, link-local, CGNAT, ULA or metadata",
  },
  "invalid-path": {
    verdict: "deny",
    status: 403,
    stage: "policy",
    meaning: "the path cannot be normalized (an invalid escape)",
  },
  "invalid-host": {
    verdict: "deny",
    status: 400,
    otherwise: "close",
    stage: "data path",
    meaning: "the host does not parse",
  },
  "host-mismatch": {
    verdict: "deny",
    status: 403,
    stage: "data path",
    meaning: "a Host header or the request's authority names another host than the " +
      "one decided (domain fronting)",
  },
  "credential-violation": {
    verdict: "deny",
    status: 403,
    otherwise: "tls-alert",
    stage: "data path",
    meaning: "a credential's placeholder was headed outside its hosts, or was in a name",
  },
  "missing-sni": {
    verdict: "deny",
    status: 403,
    otherwise: "tls-alert",
    stage: "data path",
    meaning: "a TLS client sent no server name, so no certificate can be chosen",
  },
  "not-tls": {
    verdict: "deny",
    status: 400,
    otherwise: "close",
    stage: "data path",
    meaning: "the bytes on a TLS port were not a TLS ClientHello",
  },
  "timeout": {
    verdict: "deny",
    status: 408,
    otherwise: "close",
    stage: "limits",
    meaning: "a stage's deadline passed (ClientHello, handshake, head, idle)",
  },
  "invalid-request": {
    verdict: "deny",
    status: 400,
    stage: "data path",
    meaning: "the request's head or body framing is malformed (also 414, 431, 501, 505)",
  },
  "no-route": {
    verdict: "deny",
    status: 421,
    stage: "data path",
    meaning: "a connection reached an internal listener without coming through sluice",
  },
  "limit-per-client": {
    verdict: "deny",
    status: 503,
    otherwise: "close",
    stage: "limits",
    meaning: "the client address holds its maximum of connections",
  },
  "limit-reserve": {
    verdict: "deny",
    status: 503,
    otherwise: "close",
    stage: "limits",
    meaning: "the connection cap's reserve is kept for clients holding few connections",
  },
  "limit-total": {
    verdict: "deny",
    status: 503,
    otherwise: "close",
    stage: "limits",
    meaning: "sluice holds its maximum of connections",
  },
  "resolve": {
    verdict: "allow",
    status: 502,
    otherwise: "tls-alert",
    stage: "upstream",
    meaning: "the host's name did not resolve",
  },
  "upstream-connect": {
    verdict: "allow",
    status: 502,
    otherwise: "tls-alert",
    stage: "upstream",
    meaning: "the upstream refused or dropped the connection",
  },
  "upstream-tls": {
    verdict: "allow",
    status: 502,
    stage: "upstream",
    meaning: "the upstream's TLS handshake or certificate verification failed",
  },
  "upstream-timeout": {
    verdict: "allow",
    status: 504,
    otherwise: "tls-alert",
    stage: "upstream",
    meaning: "the upstream did not connect or answer in time",
  },
  "upstream-protocol": {
    verdict: "allow",
    status: 502,
    stage: "upstream",
    meaning: "the upstream's response was not valid HTTP/1.1",
  },
  "upstream-reset": {
    verdict: "allow",
    status: 502,
    stage: "upstream",
    meaning: "the upstream closed the connection mid-exchange",
  },
  "upstream-encoding": {
    verdict: "allow",
    status: 502,
    stage: "upstream",
    meaning: "a content coding sluice cannot decode to scrub (with credentials in the policy)",
  },
  "websocket-invalid": {
    verdict: "deny",
    status: 400,
    stage: "data path",
    meaning: "the client's WebSocket upgrade request is malformed (RFC 6455)",
  },
  "grpc-no-trailers": {
    verdict: "deny",
    status: 503,
    stage: "data path",
    meaning: "a gRPC call came where sluice cannot send the trailers gRPC needs: over " +
      "HTTP/1.1, or the direct data path's HTTP/2 (serve with --data-path hop)",
  },
  "token-issued": {
    verdict: "allow",
    status: 200,
    stage: "credentials",
    meaning: "sluice obtained an access token for an oauth2 credential (a `token` record)",
  },
  "credential-token": {
    verdict: "allow",
    status: 502,
    stage: "credentials",
    meaning: "an oauth2 credential's token endpoint gave no access token: the request that " +
      "needed it is answered 502 naming the credential",
  },
  "credential-signature": {
    verdict: "deny",
    status: 403,
    stage: "credentials",
    meaning: "a request carries an aws_sigv4 credential's placeholder keys but its signature " +
      "does not verify with them (forged or altered), or cannot be re-signed",
  },
  "upstream-websocket": {
    verdict: "allow",
    status: 502,
    otherwise: "websocket-close",
    stage: "upstream",
    meaning: "the upstream's WebSocket handshake or frames broke the protocol",
  },
};

/** Whether a string is a code of the table (for parsing what other tools wrote). */
export function isOutcomeCode(code: string): code is OutcomeCode {
  return Object.hasOwn(OUTCOMES, code);
}
