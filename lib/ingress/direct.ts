/**
 * The direct data path: the transparent HTTPS listener as a resolver-backed TLS listener served
 * by Deno's own HTTP server (HTTP/1.1 and HTTP/2), with no loopback hop.
 *
 * The hop (terminator.ts) exists because sluice must read the raw ClientHello to decide before
 * any handshake, and Deno cannot hand an accepted socket to its TLS server. When the policy
 * intercepts every TLS connection (no passthrough host, interception on:
 * `needsClientHello()` in policy/compile.ts), no decision needs the raw ClientHello, so the
 * hop is pure cost: measured ~31 µs of ~135 µs per keep-alive request and a third of the
 * new-connection cost (docs/performance.md).
 *
 * What is decided where, then:
 * - the server name, in the certificate resolver: no SNI, or one that is not a host name, ends
 *   the handshake with an alert; a name that carries a placeholder is a credential violation
 *   (audited, counted, `onViolation`) and still gets a leaf, so that each request on it is
 *   refused with a 403 that names the rule, as on the hop path;
 * - every request, on its authority (host and port: there is no original destination), by the
 *   one request plan (policy/plan.ts, `nameUnknown`), which is also where it is sent; so a
 *   request whose authority is not its SNI cannot carry a credential anywhere but to the host
 *   it names and the policy allows.
 *
 * Deno runs the resolver once per distinct name for the listener's life and replays its answer,
 * failures included (deno_internal.ts). So a refused name is audited the first time a listener
 * sees it, and the listener is replaced, new one first on the same port (SO_REUSEPORT), old one
 * drained: after `maxNames` names or `maxAgeMs`, and on a reload that changes the placeholders
 * (lib/gateway/server.ts, `refreshHttps`: any other reload keeps it, since replacing it loses
 * connections under load).
 *
 * A burst of first connections to a new name can lose handshakes to a race in Deno's resolver
 * cache that no JS here can hold back (docs/data-path.md, known gaps). So each new listener
 * answers the names the policy lists exactly before any client asks (`warm`), and any other
 * name on a timer turn (`onTimerTurn`), which narrows the race for those.
 *
 * Connections are accepted in native code: sluice's JS never holds them. Their deadlines and
 * per-client caps are enforced from the kernel's view of the sockets (socket_watch.ts) when
 * that is available.
 *
 * @module
 */
import { exactAllowedNames, formatDestination, parseDestinationHost } from "../../policy/mod.ts";
import { refuseNameWithPlaceholder } from "../../policy/plan.ts";
import { formatAddr, type ProxyContext } from "../gateway/context.ts";
import {
  type ConnectionHandler,
  listenTlsWithResolver,
  type ServedListener,
  serveHttpOnListener,
} from "../tls/deno_internal.ts";
import type { LeafCache } from "../tls/leaf_cache.ts";
import { setListenerNoDelay } from "../tls/sockopt.ts";
import { settingDecision } from "./route.ts";
import type { Connections, HopMeta } from "./terminator.ts";
import type { DirectWatch } from "./direct_watch.ts";
import { refusalHttpResponse } from "./limits.ts";

/** Options of a {@link DirectListener}. */
export type DirectOptions = {
  ctx: ProxyContext;
  hostname: string;
  port: number;
  leaves: LeafCache;
  /**
   * Deadlines and caps from the kernel's view of the sockets (direct_watch.ts). Without it
   * (no /proc or FFI), the direct path has neither: `auto` then chooses the hop.
   */
  watch?: DirectWatch;
  /**
   * The CA certificate (PEM) the leaves chain to: the listener's own warm-up handshakes
   * ({@link DirectListener.warm}) verify against it.
   */
  caPem: string;
  /** Replace the listener after this many distinct server names (default 4096). */
  maxNames?: number;
  /** Replace the listener after this long (default 12 h; leaves live 7 days). */
  maxAgeMs?: number;
  now?: () => number;
};

type Live = {
  served: ServedListener;
  listener: Deno.TlsListener;
  names: Set<string>;
  born: number;
};

/** The transparent HTTPS listener of the direct path, and the {@link Connections} it serves. */
export class DirectListener implements Connections {
  readonly #opts: DirectOptions;
  #handler?: ConnectionHandler;
  #live?: Live;
  #port = 0;
  #recycling = false;
  #closed = false;
  readonly #draining = new Set<Promise<void>>();
  #ageTimer?: ReturnType<typeof setInterval>;
  /** The warm-up of the listener opened last (start, recycle). */
  #warming: Promise<number> = Promise.resolve(0);

  constructor(opts: DirectOptions) {
    this.#opts = opts;
  }

  /**
   * Binds the listener and starts serving with `handler` (built by makeRequestHandler with
   * this object as its `Connections`).
   *
   * @returns the bound address
   */
  start(handler: ConnectionHandler): Deno.NetAddr {
    this.#handler = this.#watched(handler);
    this.#live = this.#open(this.#opts.port);
    const addr = this.#live.listener.addr as Deno.NetAddr;
    this.#port = addr.port;
    // Age is checked on a slow timer: the resolver only runs for names not seen yet.
    this.#ageTimer = setInterval(() => this.#maybeRecycle(), 60_000);
    Deno.unrefTimer(this.#ageTimer);
    this.#warming = this.warm().catch(() => 0);
    return addr;
  }

  /** Settles when the current listener's warm-up ({@link warm}) is over: how many it answered. */
  warmed(): Promise<number> {
    return this.#warming;
  }

  /** What the request handler knows of a direct connection: its peer, and nothing of its name. */
  meta(peer: Deno.NetAddr): HopMeta {
    return {
      client: formatAddr(peer),
      mode: "transparent",
      secure: true,
      nameUnknown: true,
    };
  }

  bodyStarted(peer: Deno.NetAddr): void {
    this.#opts.watch?.bodyStarted(peer.hostname, peer.port);
  }

  bodyEnded(peer: Deno.NetAddr): void {
    this.#opts.watch?.bodyEnded(peer.hostname, peer.port);
  }

  // The request handler, telling the watch when each request starts and ends (and whether it
  // upgraded its connection); a connection over a cap is answered 503 at its first request.
  #watched(handler: ConnectionHandler): ConnectionHandler {
    const watch = this.#opts.watch;
    if (!watch) return handler;
    return (req, info) => {
      // Read once (an op that builds a new object) and handed on: the request handler
      // (exchange/forward.ts) reads only `remoteAddr`.
      const peer = info.remoteAddr;
      const { hostname, port } = peer;
      const refusal = watch.begin(hostname, port);
      if (refusal) return refusalHttpResponse(refusal);
      let r: Response | Promise<Response>;
      try {
        r = handler(req, { remoteAddr: peer } as Deno.ServeHandlerInfo<Deno.NetAddr>);
      } catch (e) {
        watch.end(hostname, port);
        throw e;
      }
      if (!(r instanceof Promise)) {
        watch.end(hostname, port, r.status);
        return r;
      }
      return r.then((res) => {
        watch.end(hostname, port, res.status);
        return res;
      }, (e) => {
        watch.end(hostname, port);
        throw e;
      });
    };
  }

  /** The listener's port (for the socket watch). */
  get port(): number {
    return this.#port;
  }

  /**
   * Replaces the listener: a new one on the same port first, then the old one stops accepting
   * and drains (its idle keep-alive connections close, requests in flight finish).
   */
  recycle(): void {
    if (this.#closed || !this.#live || this.#recycling) return;
    this.#recycling = true;
    try {
      const old = this.#live;
      this.#live = this.#open(this.#port);
      this.#retire(old);
    } finally {
      this.#recycling = false;
    }
    this.#warming = this.warm().catch(() => 0);
  }

  /**
   * Answers the policy's exactly named hosts (`exactAllowedNames`) on the current listener
   * before a client asks, one loopback handshake each, so that a workload's first burst of
   * connections to them never meets Deno's lost-answer race (see {@link onTimerTurn}: the
   * direct path can only narrow it for a name it meets first in a burst). Names a wildcard or an
   * address allows are left to the timer turn. Every listener this object opens warms itself
   * (start, recycle: see {@link warmed}); a reload that keeps the listener calls it again for
   * the names it adds.
   *
   * Other listeners may share the port (workers, SO_REUSEPORT), and the kernel picks one per
   * connection: a name is tried until this listener's resolver has been asked for it, at most
   * {@link WARM_ATTEMPTS} times, and the whole warm-up gives up after {@link WARM_TOTAL_MS}.
   * A handshake that lands on another listener warms that one; one that fails is tried again:
   * right after a recycle it can land in the retired listener's queue, which the kernel resets
   * when that listener closes (seen in test/e2e/first_wave_test.ts's reload case: 4 of 10).
   *
   * @returns how many names this listener has answered
   */
  async warm(): Promise<number> {
    const live = this.#live;
    if (!live) return 0;
    const names = exactAllowedNames(this.#opts.ctx.policy(), WARM_MAX_NAMES);
    let warmed = 0;
    let next = 0;
    const giveUpAt = Date.now() + WARM_TOTAL_MS;
    // A few names at a time: one after another, 200 names took 1.1 s; 8 at a time, 0.35 s.
    const lane = async () => {
      while (next < names.length) {
        const name = names[next++];
        for (let i = 0; i < WARM_ATTEMPTS && !live.names.has(name); i++) {
          if (this.#closed || this.#live !== live || Date.now() > giveUpAt) return;
          await this.#handshake(name);
        }
        if (live.names.has(name)) warmed++;
      }
    };
    await Promise.all(Array.from({ length: WARM_LANES }, lane));
    return warmed;
  }

  // One TLS handshake with the listener for `name`, from this process over loopback. A failure
  // is not an answer: the caller looks at whether the listener's resolver was asked (a refused
  // name is asked all the same).
  async #handshake(name: string): Promise<void> {
    let conn: Deno.Conn | undefined;
    const timer = setTimeout(() => {
      try {
        conn?.close();
      } catch { /* closed */ }
    }, WARM_HANDSHAKE_MS);
    try {
      const tcp = await Deno.connect({
        hostname: loopbackOf(this.#opts.hostname),
        port: this.#port,
      });
      conn = tcp;
      const tls = await Deno.startTls(tcp, { hostname: name, caCerts: [this.#opts.caPem] });
      conn = tls;
      await tls.handshake();
    } catch {
      // Tried again, or given up, by the caller.
    } finally {
      clearTimeout(timer);
      try {
        conn?.close();
      } catch { /* closed */ }
    }
  }

  /** Stops accepting and waits for served connections to finish. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#ageTimer);
    if (this.#live) this.#retire(this.#live);
    await Promise.allSettled([...this.#draining]);
  }

  #maybeRecycle(): void {
    const live = this.#live;
    if (!live) return;
    const now = this.#opts.now?.() ?? Date.now();
    if (
      live.names.size >= (this.#opts.maxNames ?? 4096) ||
      now - live.born >= (this.#opts.maxAgeMs ?? 12 * 3600_000)
    ) {
      this.recycle();
    }
  }

  #open(port: number): Live {
    const names = new Set<string>();
    const listener = listenTlsWithResolver({
      hostname: this.#opts.hostname,
      port,
      reusePort: true,
      alpnProtocols: ["h2", "http/1.1"],
      resolver: (serverName) => {
        names.add(serverName);
        if (names.size >= (this.#opts.maxNames ?? 4096)) queueMicrotask(() => this.recycle());
        return onTimerTurn(this.#resolve(serverName));
      },
    });
    // Without this, every streamed response stalls ~40 ms on Nagle + delayed ACK.
    setListenerNoDelay(listener);
    const served = serveHttpOnListener(
      listener,
      this.#handler!,
      (e) =>
        new Response(`sluice: internal error: ${(e as Error)?.message ?? e}\n`, { status: 500 }),
    );
    return { served, listener, names, born: this.#opts.now?.() ?? Date.now() };
  }

  #retire(live: Live): void {
    const done = live.served.shutdown();
    this.#draining.add(done);
    done.finally(() => this.#draining.delete(done));
  }

  // The SNI decision of the direct path. Throwing ends the handshake with an alert.
  #resolve(serverName: string) {
    const ctx = this.#opts.ctx;
    const refuse = (code: "missing-sni", reason: string, sni?: string): never => {
      const d = settingDecision(ctx, code, reason);
      ctx.metrics.connections.inc({ verdict: "deny", mode: "transparent", tls: "intercept" });
      ctx.audit.write({
        event: "connection",
        mode: "transparent",
        sni,
        port: 443,
        verdict: "deny",
        code: d.code,
        reason: d.reason,
        rule: d.rule.source,
        rule_at: d.rule.at,
        tls: "intercept",
      });
      // Deno replays this failure to later handshakes for the name on this listener, unaudited.
      throw new Error(`sluice: ${code}`);
    };
    if (serverName === "") {
      return refuse(
        "missing-sni",
        "the TLS ClientHello has no server name (SNI), so the destination is unknown",
      );
    }
    const named = refuseNameWithPlaceholder(
      ctx.policy(),
      ctx.broker().scanner,
      serverName,
      443,
      "SNI",
    );
    const p = parseDestinationHost(serverName);
    if (named?.violation) {
      const c = named.violation;
      const sni = p.kind === "invalid" ? serverName.toLowerCase() : formatDestination(p);
      ctx.metrics.violations.inc({ credential: c.name });
      ctx.onViolation?.(c, sni);
      ctx.audit.write({
        event: "connection",
        mode: "transparent",
        sni,
        host: sni,
        port: 443,
        verdict: "deny",
        code: named.decision.code,
        reason: named.decision.reason,
        rule: named.decision.rule.source,
        rule_at: named.decision.rule.at,
        violation: c.name,
        tls: "intercept",
      });
      // A leaf all the same (when the name is one): each request is refused with a 403.
      if (p.kind === "invalid") throw new Error("sluice: credential-violation");
      return this.#opts.leaves.lookup(serverName);
    }
    if (p.kind === "invalid") {
      return refuse("missing-sni", `invalid SNI "${serverName}": ${p.reason}`, serverName);
    }
    // sluice_tls_handshakes_total is not counted here: the resolver runs once per name, not
    // per handshake (docs/observability.md says so).
    return this.#opts.leaves.lookup(serverName);
  }
}

/** Most names one listener answers ahead ({@link DirectListener.warm}). */
const WARM_MAX_NAMES = 256;
/** Names warmed at the same time. */
const WARM_LANES = 8;
/** Handshakes tried per name, for listeners that share the port. */
const WARM_ATTEMPTS = 64;
/** A warm-up handshake that takes longer than this is abandoned. */
const WARM_HANDSHAKE_MS = 2_000;
/** The whole warm-up of a listener gives up after this long (the rest get the timer turn). */
const WARM_TOTAL_MS = 10_000;

/** Where this process reaches a listener bound to `hostname`. */
function loopbackOf(hostname: string): string {
  if (hostname === "0.0.0.0" || hostname === "") return "127.0.0.1";
  if (hostname === "::" || hostname === "[::]") return "::1";
  return hostname;
}

/**
 * The resolver's answer, given to Deno on a timer turn of the event loop rather than in the turn
 * that asked. Deno 2.9.6 loses the answer for a handshake of the same name that looks it up
 * after the answer was sent but before Deno stored it (ext/tls/tls_key.rs resubscribes it to a
 * spent broadcast): it ends with a close_notify and no response. Which handshakes fall in that
 * window is set by the order of Deno's tasks; answering from the turn that asked leaves the
 * handshakes Deno queued meanwhile ahead of the store, a timer turn lets them look first.
 * Measured with test/e2e/first_wave_test.ts (30 names, 32 parallel first connections each)
 * under two CPU hogs: answered in the asking turn, 6 of 64 runs lost 2 to 27 of their 960
 * connections; on a timer turn, none of 130 runs lost any (2026-12-02). The cost is one timer
 * turn on a name's first handshake per listener. It narrows the race; it cannot close it
 * (docs/data-path.md, known gaps).
 * The hop path closes it another way (terminator.ts, `#firstOfName`).
 */
function onTimerTurn<T>(answer: T | Promise<T>): Promise<T> {
  return new Promise((resolve, reject) =>
    setTimeout(() => Promise.resolve(answer).then(resolve, reject), 0)
  );
}
