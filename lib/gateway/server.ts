/**
 * `sluice serve`: assembles the data path from a loaded policy and runs its
 * listeners until asked to stop.
 *
 * @module
 */
import type { OAuth2Tokens } from "../credentials/oauth2.ts";
import { tokenFetch } from "../upstream/token_fetch.ts";
import type { CompiledPolicy } from "../../policy/mod.ts";
import { type AuditSink } from "../ops/audit.ts";
import type { CertificateAuthority } from "../tls/ca.ts";
import { DEFAULT_LIMITS, type Limits, type ProxyContext } from "./context.ts";
import { checkLimits, ConnectionGuard, type Mode } from "../ingress/limits.ts";
import { handleExplicit } from "../ingress/explicit.ts";
import { makeRequestHandler } from "../exchange/forward.ts";
import { streamRefusalResponder } from "../ingress/request_stream.ts";
import { LeafCache } from "../tls/leaf_cache.ts";
import type { Resolver } from "../upstream/resolver.ts";
import { Terminator } from "../ingress/terminator.ts";
import { DirectListener } from "../ingress/direct.ts";
import { DirectWatch, kernelSource } from "../ingress/direct_watch.ts";
import { SocketWatch } from "../tls/socket_watch.ts";
import { needsClientHello } from "../../policy/mod.ts";
import { handleTransparentHttp, handleTransparentTls } from "../ingress/transparent.ts";
import { loadTrust, type TrustStore, useSystemRootsByDefault } from "../upstream/trust.ts";
import { UpstreamPool } from "../upstream/client.ts";
import { Metrics } from "../ops/metrics.ts";
import { startAdmin } from "../ops/admin.ts";
import { exportCaPem } from "../tls/ca.ts";
import type { Broker } from "../credentials/broker.ts";
import type { Credential } from "../../policy/types.ts";

/**
 * How the transparent HTTPS listener serves intercepted connections:
 * - `hop`: sluice reads the ClientHello itself, decides, and hands the connection to the
 *   terminator over a loopback hop (needed for passthrough hosts);
 * - `direct`: the listener is a resolver-backed TLS listener served by Deno's HTTP server with
 *   no hop; the SNI is decided in the resolver and each request on its authority;
 * - `auto` (default): `direct` while the policy has no passthrough host, else `hop`.
 */
export type DataPath = "auto" | "hop" | "direct";

/** Parses `--data-path` (or `SLUICE_DATA_PATH`): `auto`, `hop` or `direct`; unset is `auto`. */
export function parseDataPath(text: string | undefined): DataPath {
  if (text === undefined || text === "") return "auto";
  if (text === "auto" || text === "hop" || text === "direct") return text;
  throw new Error(
    `--data-path (or SLUICE_DATA_PATH) "${text}" is not one of auto, hop, direct`,
  );
}

/**
 * Whether transparent HTTPS is served on the direct path: the one decision, for the server and
 * for the main thread of workers (workers.ts), at start and on every reload.
 *
 * @param kernel whether the kernel's view of sockets is available (socket_watch.ts): `auto`
 *   needs it to bound the direct path's connections
 * @throws {Error} for `direct` with a policy that passes TLS through
 */
export function servesDirect(dataPath: DataPath, c: CompiledPolicy, kernel: boolean): boolean {
  if (dataPath === "hop") return false;
  if (!needsClientHello(c)) return kernel || dataPath === "direct";
  if (dataPath === "direct") {
    throw new Error(
      "--data-path direct cannot serve this policy: it passes TLS through " +
        "(tls.passthrough, or tls.intercept: false), which needs the raw ClientHello; " +
        "use --data-path auto (the default) or hop",
    );
  }
  return false;
}

/** A listen address. */
export type ListenAddr = { hostname: string; port: number };

/** Everything `startServer` needs; the CLI fills it from flags and the policy. */
export type ServerOptions = {
  compiled: CompiledPolicy;
  /** The credential broker for `compiled` (lib/credentials/brokerage.ts). */
  broker: Broker;
  /** The oauth2 token state; its token requests go out through this server's upstream client. */
  tokens?: OAuth2Tokens;
  /** Told after a request carrying a placeholder to the wrong host was blocked. */
  onViolation?: (credential: Credential, host: string) => void;
  ca: CertificateAuthority;
  audit: AuditSink;
  resolver: Resolver;
  proxy?: ListenAddr;
  transparentHttps?: ListenAddr;
  transparentHttp?: ListenAddr;
  admin?: ListenAddr;
  /** Called by `POST /reload` on the admin listener: re-read the policy, return an error message or nothing. */
  onReloadRequest?: () => Promise<string | undefined>;
  limits?: Partial<Limits>;
  /**
   * Set SO_REUSEPORT on the data-path listeners, so several workers (or a listener and its
   * replacement) can share each port and the kernel spreads connections across them.
   */
  reusePort?: boolean;
  /** How intercepted transparent HTTPS is served (default `auto`). */
  dataPath?: DataPath;
  /**
   * `claimed` in a Web Worker (workers.ts): its direct path keeps only the connections it
   * served, reported to `onClaim`; the main thread keeps the rest (direct_watch.ts says why).
   */
  directScope?: "all" | "claimed";
  onClaim?: (key: string) => void;
  /**
   * Where the system CA bundle is looked for, to pass it explicitly (tests). Unset: the host's
   * store becomes Deno's default store (trust.ts).
   */
  systemBundles?: readonly string[];
  log?: (message: string) => void;
};

/** A running server. */
export type Server = {
  /** Bound addresses (ports resolved when 0 was asked for). */
  addrs: {
    proxy?: Deno.NetAddr;
    transparentHttps?: Deno.NetAddr;
    transparentHttp?: Deno.NetAddr;
    admin?: Deno.NetAddr;
  };
  metrics: Metrics;
  /** The policy in force now. */
  policy(): CompiledPolicy;
  /** Records a refused reload (the running policy stays). */
  reloadFailed(): void;
  /** Replaces the policy (already validated and compiled) and its broker; in-flight requests keep the old ones. */
  reload(compiled: CompiledPolicy, broker: Broker): Promise<void>;
  /**
   * Stops accepting, lets in-flight requests finish for up to `drainMs`
   * (default 30 s), then closes whatever is left and releases everything.
   */
  close(drainMs?: number): Promise<void>;
  leafStats(): { hits: number; misses: number; size: number };
};

/** Starts the listeners the options name. */
export async function startServer(opts: ServerOptions): Promise<Server> {
  let compiled = opts.compiled;
  let broker = opts.broker;
  // Before the process's first TLS connection (see trust.ts); explicit bundles are for tests.
  const trustOptions = {
    systemBundles: opts.systemBundles,
    systemInDefaultStore: opts.systemBundles === undefined && useSystemRootsByDefault(),
  };
  let trust: TrustStore = await loadTrust(compiled, trustOptions);
  const limits: Limits = { ...DEFAULT_LIMITS, ...opts.limits };
  checkLimits(limits);
  const shutdown = new AbortController();
  let nextId = 1;
  let generation = 1;
  let lastReloadOk = 1;
  const active = { count: 0 };
  // The leaf cache exists before the metrics that read it.
  const leaves = new LeafCache(opts.ca);
  const metrics: Metrics = new Metrics({
    activeConnections: () => active.count + (https.watch?.size ?? 0),
    leafCache: () => leaves.stats(),
    policyGeneration: () => generation,
    lastReloadOk: () => lastReloadOk,
    stages: () => [...guard.byStage()],
    clients: () => guard.clients,
  });
  // Admission caps, and the one sweep that enforces every connection's deadlines.
  const guard: ConnectionGuard = new ConnectionGuard({ limits, metrics, audit: opts.audit });
  const ctx: ProxyContext = {
    policy: () => compiled,
    trust: () => trust,
    audit: opts.audit,
    resolver: opts.resolver,
    limits,
    nextConnId: () => nextId++,
    active,
    guard,
    inflight: { count: 0 },
    signal: shutdown.signal,
    metrics,
    broker: () => broker,
    onViolation: opts.onViolation,
  };
  const pool = new UpstreamPool({
    connectTimeoutMs: limits.connectTimeoutMs,
    headerTimeoutMs: limits.upstreamHeaderTimeoutMs,
  });
  opts.tokens?.connect(tokenFetch(ctx, pool), (e) => {
    metrics.tokenRequests.inc({ credential: e.credential, result: e.ok ? "ok" : "error" });
    const at = new URL(e.tokenUrl);
    opts.audit.write({
      event: "token",
      host: at.hostname,
      path: at.pathname,
      method: "POST",
      verdict: "allow",
      code: e.ok ? "token-issued" : "credential-token",
      reason: `credential ${e.credential} (${e.grant} grant): ${e.reason}`,
      ...(e.status !== undefined ? { status: e.status } : {}),
      duration_ms: Math.round(e.durationMs),
      credentials: [e.credential],
    });
  });
  const terminator: Terminator = new Terminator({
    leaves,
    handler: makeRequestHandler(ctx, () => terminator, pool),
    refusePlain: (meta) => streamRefusalResponder(ctx, meta),
    signal: shutdown.signal,
    idleMs: limits.idleTimeoutMs,
    limits,
  });
  terminator.start();

  const listeners: Deno.Listener[] = [];
  const tasks = new Set<Promise<void>>();
  const conns = new Set<Deno.Conn>();
  /**
   * @param mode for metrics and audit
   * @param respond whether a refused connection is answered (HTTP listeners: a 503) or closed
   */
  const serve = (
    addr: ListenAddr,
    mode: Mode,
    respond: boolean,
    handle: (conn: Deno.Conn) => Promise<void>,
    reusePort = opts.reusePort,
  ): Deno.Listener => {
    const listener = Deno.listen({ hostname: addr.hostname, port: addr.port, reusePort });
    listeners.push(listener);
    (async () => {
      try {
        for await (const conn of listener) {
          // Refuse at once rather than queue: a flood must not starve the live connections.
          const watch = guard.admit(conn, mode);
          if (watch.kind === "refused") {
            guard.refuse(conn, watch, mode, respond);
            continue;
          }
          (conn as Deno.TcpConn).setNoDelay?.(true);
          ctx.active.count++;
          conns.add(conn);
          // Each connection is its own task: a failure in one never reaches another.
          const task = handle(conn).catch((e) => {
            opts.log?.(`connection error: ${(e as Error)?.message ?? e}`);
            try {
              conn.close();
            } catch { /* closed */ }
          }).finally(() => {
            guard.release(watch);
            conns.delete(conn);
            ctx.active.count--;
            tasks.delete(task);
          });
          tasks.add(task);
        }
      } catch {
        // listener closed
      }
    })();
    return listener;
  };

  // The transparent HTTPS listener: direct (no hop) while no decision needs the raw
  // ClientHello, else sniffed and hopped (direct.ts says why). Either kind binds with
  // SO_REUSEPORT, so a reload that changes the kind opens the new listener before closing the
  // old one on the same port.
  const dataPath = opts.dataPath ?? "auto";
  // The direct path's deadlines and caps need the kernel's view of its sockets.
  const kernel = SocketWatch.available() ? new SocketWatch() : undefined;
  if (!kernel && dataPath === "auto" && opts.transparentHttps) {
    opts.log?.(
      "sluice: the direct data path needs /proc and FFI to bound its connections; using the hop",
    );
  }
  const wantsDirect = (c: CompiledPolicy) => servesDirect(dataPath, c, kernel !== undefined);
  const https = {
    direct: undefined as DirectListener | undefined,
    watch: undefined as DirectWatch | undefined,
    hop: undefined as Deno.Listener | undefined,
  };
  const openHttps = (addr: ListenAddr, c: CompiledPolicy, afterHop = false): Deno.NetAddr => {
    if (wantsDirect(c)) {
      let port = addr.port;
      const watch = kernel
        ? new DirectWatch({
          guard,
          limits,
          source: kernelSource(kernel, addr.hostname),
          port: () => port,
          scope: opts.directScope,
          onClaim: opts.onClaim,
          onAdmit: () => {
            metrics.connections.inc({ verdict: "allow", mode: "transparent", tls: "intercept" });
            metrics.handshakes.inc();
          },
        })
        : undefined;
      const direct = new DirectListener({
        ctx,
        hostname: addr.hostname,
        port: addr.port,
        leaves,
        caPem: exportCaPem(opts.ca),
        watch,
      });
      const bound = direct.start(makeRequestHandler(ctx, () => direct, pool));
      port = bound.port;
      // A reload from the hop: its connections on this port are the hop guard's, not ours.
      if (afterHop) watch?.leaveExisting();
      watch?.start();
      https.direct = direct;
      https.watch = watch;
      return bound;
    }
    https.hop = serve(
      addr,
      "transparent",
      false,
      (c) => handleTransparentTls(ctx, terminator, c),
      true,
    );
    return https.hop.addr as Deno.NetAddr;
  };
  /**
   * After a reload: the kind the new policy wants, on the same port. A direct listener is kept,
   * with the new policy's listed names answered on it, unless the placeholders changed: Deno
   * keeps each name's answer for the listener's life, and a name's answer depends on the
   * placeholders only (a name carrying one is audited as a violation when first seen). Replacing
   * the listener loses connections: Deno's graceful shutdown closes the ones that have not sent
   * their first request yet, and the kernel resets those still queued on the old socket
   * (test/e2e/reload_under_load_test.ts: 81 of ~16,800 connections over ten reloads, before).
   */
  const refreshHttps = (c: CompiledPolicy, placeholdersKept: boolean): void => {
    const bound = addrs.transparentHttps;
    if (!bound) return;
    const direct = wantsDirect(c);
    if (direct && https.direct) {
      if (placeholdersKept) return void https.direct.warm().catch(() => {});
      return https.direct.recycle();
    }
    if (!direct && https.hop) return;
    const old = { ...https };
    // The old watch stops at once: the port's new connections are the new listener's.
    old.watch?.close();
    https.direct = undefined;
    https.watch = undefined;
    https.hop = undefined;
    openHttps({ hostname: bound.hostname, port: bound.port }, c, old.hop !== undefined);
    if (old.hop) {
      listeners.splice(listeners.indexOf(old.hop), 1);
      old.hop.close();
    }
    old.direct?.close();
  };

  /** Resolves when no request is in flight, or at `deadline` (ms since the epoch). */
  const inflightDone = async (deadline: number): Promise<void> => {
    while (ctx.inflight.count > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  const addrs: Server["addrs"] = {};
  let admin: { addr: Deno.NetAddr; close(): Promise<void> } | undefined;
  try {
    if (opts.proxy) {
      addrs.proxy = serve(
        opts.proxy,
        "explicit",
        true,
        (c) => handleExplicit(ctx, terminator, c),
      ).addr as Deno.NetAddr;
    }
    if (opts.transparentHttps) {
      addrs.transparentHttps = openHttps(opts.transparentHttps, compiled);
      // Before sluice says it is ready: a workload started then finds these names answered.
      await https.direct?.warmed();
    }
    if (opts.transparentHttp) {
      addrs.transparentHttp = serve(
        opts.transparentHttp,
        "transparent",
        true,
        (c) => handleTransparentHttp(ctx, terminator, c),
      ).addr as Deno.NetAddr;
    }
    if (opts.admin) {
      admin = startAdmin(opts.admin, {
        healthy: () => !shutdown.signal.aborted,
        metrics: () => metrics.render(),
        caPem: () => exportCaPem(opts.ca),
        reload: opts.onReloadRequest ?? (() => Promise.resolve("reload is not available")),
      });
      addrs.admin = admin.addr;
    }
  } catch (e) {
    for (const l of listeners) l.close();
    guard.close();
    await https.direct?.close();
    await terminator.close();
    pool.close();
    throw e;
  }

  return {
    addrs,
    metrics,
    policy: () => compiled,
    async reload(next, nextBroker) {
      // Build everything the new policy needs first; swap only when it all worked.
      let nextTrust: TrustStore;
      try {
        nextTrust = await loadTrust(next, trustOptions);
        // A policy the forced data path cannot serve is refused here, before the swap.
        if (addrs.transparentHttps) wantsDirect(next);
      } catch (e) {
        lastReloadOk = 0;
        metrics.reloads.inc({ result: "failed" });
        throw e;
      }
      const placeholdersKept = broker.scanner.samePlaceholders(nextBroker.scanner);
      compiled = next;
      trust = nextTrust;
      broker = nextBroker;
      generation++;
      lastReloadOk = 1;
      metrics.reloads.inc({ result: "ok" });
      try {
        refreshHttps(next, placeholdersKept);
      } catch (e) {
        // The old listener is still open: the port keeps being served.
        opts.log?.(`the transparent HTTPS listener was not refreshed: ${(e as Error).message}`);
      }
    },
    reloadFailed() {
      lastReloadOk = 0;
      metrics.reloads.inc({ result: "failed" });
    },
    async close(drainMs = 30_000) {
      for (const l of listeners) {
        try {
          l.close();
        } catch { /* closed */ }
      }
      // Stops accepting at once; requests in flight on it finish.
      const directClosed = https.direct?.close();
      // Drain: requests in flight finish (their bodies included) before the
      // HTTP servers are told to shut down, which closes idle keep-alive
      // connections at once; then tunnels get what is left of the deadline.
      const deadline = Date.now() + drainMs;
      await inflightDone(deadline);
      shutdown.abort();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        Promise.allSettled([...tasks]),
        new Promise((r) => (timer = setTimeout(r, Math.max(0, deadline - Date.now())))),
      ]);
      clearTimeout(timer);
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await terminator.close();
      await directClosed;
      https.watch?.close();
      kernel?.close();
      await Promise.allSettled([...tasks]);
      // A WebSocket session ends, and writes its audit record, only once its connection is
      // closed above: give those records a moment before the audit log closes.
      await inflightDone(Date.now() + 2_000);
      guard.close();
      pool.close();
      await admin?.close();
      await opts.audit.close();
    },
    leafStats: () => leaves.stats(),
  };
}
