/**
 * What every stage of the data path shares: the current policy (swapped
 * whole on reload), the audit log, the resolver, the upstream pool, limits,
 * and connection ids.
 *
 * @module
 */
import type { CompiledPolicy } from "../policy/mod.ts";
import type { AuditSink } from "./audit.ts";
import type { Resolver } from "./resolver.ts";
import type { TrustStore } from "./trust.ts";
import type { Metrics } from "./metrics.ts";
import type { Broker } from "./substitute.ts";
import type { Credential } from "../policy/types.ts";

/** Timeouts and bounds; every one has a safe default (see `DEFAULT_LIMITS`). */
export type Limits = {
  /** Time allowed for a client to send its ClientHello or request head (slowloris guard). */
  handshakeTimeoutMs: number;
  /** Largest request head accepted from a client. */
  maxHeaderBytes: number;
  /** Connections served at once; more are refused immediately. */
  maxConnections: number;
  /** Time to establish an upstream TCP connection. */
  connectTimeoutMs: number;
  /** Time for an upstream to send its response head. */
  upstreamHeaderTimeoutMs: number;
  /** A tunnel (passthrough, or a client connection behind the TLS terminator) with no bytes either way for this long is closed. */
  idleTimeoutMs: number;
};

/** Defaults chosen to be generous to real clients and short for stuck ones. */
export const DEFAULT_LIMITS: Limits = {
  handshakeTimeoutMs: 10_000,
  maxHeaderBytes: 32 * 1024,
  maxConnections: 4096,
  connectTimeoutMs: 10_000,
  upstreamHeaderTimeoutMs: 60_000,
  idleTimeoutMs: 300_000,
};

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
  /** Connections being served now (for maxConnections and metrics). */
  active: { count: number };
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
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}
