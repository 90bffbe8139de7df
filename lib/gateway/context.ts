/**
 * What every stage of the data path shares: the current policy (swapped
 * whole on reload), the audit log, the resolver, the upstream pool, limits,
 * and connection ids.
 *
 * @module
 */
import { formatHostPort } from "../../policy/address.ts";
import type { CompiledPolicy } from "../../policy/mod.ts";
import type { AuditSink } from "../ops/audit.ts";
import type { Resolver } from "../upstream/resolver.ts";
import type { TrustStore } from "../upstream/trust.ts";
import type { Metrics } from "../ops/metrics.ts";
import type { Broker } from "../credentials/broker.ts";
import type { Credential } from "../../policy/types.ts";
import type { ConnectionGuard, Limits } from "../ingress/limits.ts";

// Every limit and deadline is named, with its default, in limits.ts.
export { DEFAULT_LIMITS, type Limits } from "../ingress/limits.ts";

/** The shared state of a running proxy. */
export type ProxyContext = {
  /** The policy in force now. Read it once per decision point; reload replaces it. */
  policy(): CompiledPolicy;
  /** Upstream TLS trust for the policy in force. */
  trust(): TrustStore;
  audit: AuditSink;
  resolver: Resolver;
  limits: Limits;
  nextConnId(): number;
  /** Connections being served now (for metrics). */
  active: { count: number };
  /** Admission caps and the deadline sweep: every accepted connection's stage (limits.ts). */
  guard: ConnectionGuard;
  /** HTTP requests in flight, until their response body has been sent (for graceful drain). */
  inflight: { count: number };
  /** Aborted when the server shuts down. */
  signal: AbortSignal;
  metrics: Metrics;
  /** The credential broker for the policy in force. */
  broker(): Broker;
  /** Told when a placeholder headed to the wrong host (after the request was blocked). */
  onViolation?: (credential: Credential, host: string) => void;
};

/** Formats a Deno address as ip:port (IPv6 bracketed). */
export function formatAddr(addr: Deno.Addr): string {
  if (addr.transport !== "tcp" && addr.transport !== "udp") return addr.transport;
  return formatHostPort(addr.hostname, addr.port);
}
