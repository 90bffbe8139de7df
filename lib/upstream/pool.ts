/**
 * The keep-alive pool: which connections may be reused for which target ({@link poolKey}), the
 * idle ones kept per key and in all (least recently used closed first), and the counters.
 * It only keeps connections; opening them (connection.ts) and using them (client.ts) are not
 * its business.
 *
 * Idle connections keep a read pending, so one the server closes while idle leaves the pool at
 * once and most stale connections are never tried. An idle connection does not keep the
 * process alive.
 *
 * @module
 */

import { Connection, type Io } from "./connection.ts";
import type { Deadlines } from "./deadlines.ts";
import type { UpstreamTarget } from "./types.ts";

/** Pool counters. */
export type UpstreamPoolStats = {
  /** Connections waiting in the pool. */
  idle: number;
  /** Connections in use by a request or a response body. */
  active: number;
  /** Connections opened since the pool was made. */
  created: number;
  /** Requests that were sent on a pooled connection. */
  reused: number;
};

// The pool key must separate different trust settings, so it covers the CA
// contents; but the system bundle alone is ~220 KB, and joining it per request
// cost a third of sluice's CPU (profiled, docs/performance.md). So each CA
// array's contents are turned into a short id once (cached by the array
// object; lib/upstream/trust.ts hands out the same array per host), and equal contents
// share an id.
const caIdsByArray = new WeakMap<readonly string[], number>();
const caIdsByContent = new Map<string, number>();

function caKey(ca: readonly string[] | undefined): string {
  if (ca === undefined) return "default";
  let id = caIdsByArray.get(ca);
  if (id === undefined) {
    const content = ca.join("\n");
    id = caIdsByContent.get(content);
    if (id === undefined) {
      id = caIdsByContent.size + 1;
      caIdsByContent.set(content, id);
    }
    caIdsByArray.set(ca, id);
  }
  return `ca${id}`;
}

/**
 * The pool key of a target: different address, scheme or trust settings never share a
 * connection.
 *
 * @param t the target
 * @returns its key
 */
export function poolKey(t: UpstreamTarget): string {
  return `${t.host}|${t.port}|${t.address}|${t.tls ? 1 : 0}|${t.verify ? 1 : 0}|${
    caKey(t.caCerts)
  }|${t.clientCert?.id ?? ""}`;
}

/** Limits of a {@link ConnectionPool}. */
export type ConnectionPoolLimits = {
  /** Idle connections kept per key. */
  maxIdlePerHost: number;
  /** Idle connections kept in all. */
  maxIdleTotal: number;
  /** Idle connections are closed after this long. */
  idleTimeoutMs: number;
  /** The sweep that enforces the idle timeout (shared with the client's header deadlines). */
  deadlines: Deadlines;
};

/** The connections of one client.ts `UpstreamPool`: idle ones by key, and those in use. */
export class ConnectionPool {
  readonly #maxIdle: number;
  readonly #maxIdleTotal: number;
  /** Every idle connection, least recently released first. */
  readonly #idleOrder = new Set<Connection>();
  readonly #idleMs: number;
  readonly #idle = new Map<string, Connection[]>();
  readonly #active = new Set<Connection>();
  readonly #deadlines: Deadlines;
  #created = 0;
  #reused = 0;
  #closed = false;

  /** @param limits how many idle connections to keep, and for how long */
  constructor(limits: ConnectionPoolLimits) {
    this.#maxIdle = limits.maxIdlePerHost;
    this.#maxIdleTotal = limits.maxIdleTotal;
    this.#idleMs = limits.idleTimeoutMs;
    this.#deadlines = limits.deadlines;
  }

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * An idle connection for `key`, now in use (and counted as reused), if there is one.
   *
   * @param key the target's {@link poolKey}
   * @returns the connection, or undefined
   */
  take(key: string): Connection | undefined {
    const list = this.#idle.get(key);
    if (list === undefined) return undefined;
    // Most recently used first: it is the least likely to have been closed by the server.
    const conn = list.pop();
    if (list.length === 0) this.#idle.delete(key);
    if (conn === undefined) return undefined;
    this.#idleOrder.delete(conn);
    this.#deadlines.disarm(conn);
    conn.state = "active";
    conn.io.ref?.();
    this.#reused++;
    this.#active.add(conn);
    return conn;
  }

  /**
   * A newly opened connection, counted and in use; already destroyed when the pool is closed.
   *
   * @param io the open connection
   * @param key the target's {@link poolKey}
   * @returns the connection (check `closed`)
   */
  adopt(io: Io, key: string): Connection {
    this.#created++;
    const conn = new Connection(io, key);
    conn.deadlines = this.#deadlines;
    // Its way out of the pool (idle timeout, or the server closed it), made once, not per idle spell.
    conn.evict = () => this.#evict(conn);
    if (this.#closed) {
      conn.destroy();
      return conn;
    }
    this.#active.add(conn);
    return conn;
  }

  /**
   * A connection no longer counted as in use, now owned by its caller (a 101) or closed.
   *
   * @param conn the connection
   */
  forget(conn: Connection): void {
    this.#active.delete(conn);
  }

  /**
   * A connection's exchange is over: keep it idle if `reusable`, else close it.
   *
   * @param conn the connection
   * @param reusable whether both sides allowed keep-alive and the exchange ended cleanly
   */
  release(conn: Connection, reusable: boolean): void {
    this.#active.delete(conn);
    if (!reusable || this.#closed || conn.closed || conn.start !== conn.end) {
      conn.destroy();
      return;
    }
    conn.state = "idle";
    let list = this.#idle.get(conn.key);
    if (list === undefined) this.#idle.set(conn.key, list = []);
    list.push(conn);
    this.#idleOrder.add(conn);
    if (list.length > this.#maxIdle) this.#evict(list[0]);
    for (const oldest of this.#idleOrder) {
      if (this.#idleOrder.size <= this.#maxIdleTotal) break;
      this.#evict(oldest);
    }
    this.#deadlines.arm(conn, this.#idleMs, conn.evict!);
    conn.watch(conn.evict!);
    // An idle connection must not keep the process alive.
    conn.io.unref?.();
  }

  /** Remove an idle connection from the pool and close it. */
  #evict(conn: Connection): void {
    this.#idleOrder.delete(conn);
    const l = this.#idle.get(conn.key);
    const i = l?.indexOf(conn) ?? -1;
    if (l !== undefined && i >= 0) {
      l.splice(i, 1);
      if (l.length === 0) this.#idle.delete(conn.key);
    }
    conn.destroy();
  }

  /** Close idle connections now; connections in use close when their response ends. */
  close(): void {
    this.#closed = true;
    for (const list of this.#idle.values()) for (const c of list) c.destroy();
    this.#idle.clear();
    this.#idleOrder.clear();
  }

  /** @returns pool counters */
  stats(): UpstreamPoolStats {
    let idle = 0;
    for (const list of this.#idle.values()) idle += list.length;
    return { idle, active: this.#active.size, created: this.#created, reused: this.#reused };
  }
}
