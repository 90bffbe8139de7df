/**
 * Deadlines and caps for the direct data path (direct.ts), whose connections are accepted and
 * served in Deno's native code: sluice's JS holds no object, no fd and no `close()` for them,
 * and Deno's HTTP server has no timeout of its own. A client that opens a TLS connection and
 * goes silent, drips a request head, or idles in keep-alive would hold it for ever.
 *
 * So the kernel is asked instead. Every sweep lists the sockets accepted on the listener's port
 * (fd, peer, bytes received and acknowledged: socket_watch.ts reads /proc and TCP_INFO), and
 * the request handler reports each request's start and end by the peer address. Together they
 * drive the same {@link HopClock} the hop path uses, under the same {@link ConnectionGuard}
 * (same caps, same rate-limited audit, same metrics). A connection past its deadline, or over a
 * cap when first seen, is ended with `shutdown(2)` on its fd (never `close`: the fd is Deno's,
 * which then sees the end and releases it).
 *
 * Differences from the hop, because the bytes are seen only at each sweep and never decrypted:
 * - deadlines are enforced up to a sweep late, and a byte's direction is known but not whether
 *   it began a request head; so the head deadline applies to the first request only, and a later
 *   head (HTTP/1.1 or HTTP/2 alike) must begin and complete within `keep-alive` of the last
 *   response, as the hop does for HTTP/2;
 * - a connection over a cap is refused at its first request (a 503 naming the limit) or at the
 *   first sweep that sees it, whichever comes first, rather than at accept.
 *
 * @module
 */
import { parseIp } from "../../policy/address.ts";
import type { SocketWatch } from "../tls/socket_watch.ts";
import { ConnectionGuard, HopClock, type Limits, type Refusal, type Watch } from "./limits.ts";

/** One accepted socket, as the kernel reports it. */
export type KernelSocket = {
  fd: number;
  /** The peer's address, as the kernel formats it. */
  hostname: string;
  port: number;
  /** Bytes received from the peer (TCP_INFO `tcpi_bytes_received`). */
  bytesReceived: number;
  /** Bytes sent and acknowledged by the peer (TCP_INFO `tcpi_bytes_acked`). */
  bytesAcked: number;
};

/** Where the sockets come from: socket_watch.ts in production ({@link kernelSource}), a script in tests. */
export interface SocketSource {
  /** The connections accepted on this local port and held by this process, now. */
  list(port: number): KernelSocket[];
  /** Ends one connection: `shutdown(fd, SHUT_RDWR)`. */
  shutdown(fd: number): void;
}

/**
 * The kernel's view of a listener's sockets, as a {@link SocketSource}: listed for the listener's
 * address (one address family, one dump), ended with a RST so that a stuck client's socket is
 * freed at once rather than left in FIN_WAIT2.
 */
export function kernelSource(kernel: SocketWatch, hostname: string): SocketSource {
  return {
    list: (port) => kernel.list(port, hostname),
    shutdown: (fd) => void kernel.shutdown(fd, { reset: true }),
  };
}

type Peer = {
  /** Its place under the caps, once the kernel listed it. */
  watch?: Watch;
  clock: HopClock;
  fd?: number;
  recv: number;
  acked: number;
  /** The sweep generation that last saw it in the kernel's list. */
  seen: number;
  /** The generation it was first known in. */
  born: number;
  /** Its deadline passed (or it was refused) before its fd was known: end it once it is. */
  ending: boolean;
  /** Why it was refused, when it was over a cap at first sight. */
  refusal?: Refusal;
};

/** The key of a peer, the same whether Deno's server or the kernel formatted the address. */
export function peerKey(hostname: string, port: number): string {
  // Dotted IPv4, as both Deno and the kernel write it: the per-request case, kept cheap.
  if (!hostname.includes(":") && !hostname.startsWith("[")) return `${hostname}|${port}`;
  let host = hostname;
  const ip = parseIp(hostname.startsWith("[") ? hostname.slice(1, -1) : hostname);
  if (ip) {
    // An IPv4 client of a dual-stack listener is ::ffff:a.b.c.d in the kernel's table.
    const b = ip.bytes;
    const mapped = ip.family === 6 && b.subarray(0, 10).every((x) => x === 0) &&
      b[10] === 0xff && b[11] === 0xff;
    host = mapped ? `${b[12]}.${b[13]}.${b[14]}.${b[15]}` : ip.text;
  }
  return `${host}|${port}`;
}

/** Options of a {@link DirectWatch}. */
export type DirectWatchOptions = {
  guard: ConnectionGuard;
  limits: Limits;
  source: SocketSource;
  /** The local port whose accepted connections are watched. */
  port: () => number;
  /** Told once per connection admitted (for the connection and handshake counters). */
  onAdmit?: () => void;
  /**
   * Which connections this watch keeps (`all` by default). With Web Workers every thread's
   * kernel view holds every worker's connections (fds are per process), so the work is split:
   * - `claimed` (each worker): only the connections it served a request on, from that request
   *   on; it reports each new one to `onClaim`;
   * - `unclaimed` (the main thread): only connections no worker has claimed (the workers' claims
   *   reach it through {@link DirectWatch.claim}), which are in their first stages (handshake,
   *   first head) and under the caps.
   */
  scope?: "all" | "claimed" | "unclaimed";
  /** `claimed` scope: a connection was first served here (its {@link peerKey}). */
  onClaim?: (key: string) => void;
  now?: () => number;
};

/** The connections of one direct listener, kept under the guard's deadlines and caps. */
export class DirectWatch {
  readonly #o: DirectWatchOptions;
  readonly #now: () => number;
  readonly #peers = new Map<string, Peer>();
  /** `unclaimed` scope: connections some worker serves, and the sweep that last listed them. */
  readonly #claims = new Map<string, number>();
  #gen = 0;
  #timer?: ReturnType<typeof setInterval>;

  constructor(opts: DirectWatchOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
  }

  /** Starts the sweep, every `sweepMs` (the guard's period). */
  start(): void {
    this.#timer = setInterval(() => this.sweep(), this.#o.guard.sweepMs);
  }

  /** Stops the sweep and releases every connection's place. */
  close(): void {
    clearInterval(this.#timer);
    for (const p of this.#peers.values()) if (p.watch) this.#o.guard.release(p.watch);
    this.#peers.clear();
  }

  /** `unclaimed` scope: a worker serves the connection of this {@link peerKey}; leave it be. */
  claim(key: string): void {
    this.#claims.set(key, this.#gen);
    const p = this.#peers.get(key);
    if (p?.watch) this.#o.guard.release(p.watch);
    this.#peers.delete(key);
  }

  /**
   * Leaves be every connection on the port now (the hop's, when a reload moves the port to the
   * direct path: they are held and bounded by the hop's own guard) until it ends.
   */
  leaveExisting(): void {
    let sockets: KernelSocket[] = [];
    try {
      sockets = this.#o.source.list(this.#o.port());
    } catch { /* nothing to leave */ }
    for (const s of sockets) this.#claims.set(peerKey(s.hostname, s.port), this.#gen);
  }

  /** Connections known now. */
  get size(): number {
    return this.#peers.size;
  }

  /**
   * A request head is complete on `peer`'s connection.
   *
   * @returns the refusal when the connection is over a cap: answer it with a 503 and close
   */
  begin(hostname: string, port: number): Refusal | undefined {
    const key = peerKey(hostname, port);
    let p = this.#peers.get(key);
    if (!p) {
      // First seen by its request, before any sweep listed it: it takes a place under the caps
      // only once the kernel lists it (a connection that ends before that would otherwise hold
      // one for two sweeps), but a client already at its cap is refused now.
      const refusal = this.#o.guard.check(hostname);
      p = this.#newPeer(key);
      if (refusal) {
        this.#o.guard.noteRefusal(hostname, refusal, "transparent", false);
        p.ending = true;
        p.refusal = refusal;
      } else if (this.#o.scope === "claimed") {
        this.#o.onClaim?.(key);
      }
    }
    if (p.refusal) return p.refusal;
    p.clock.begin();
    return undefined;
  }

  /** The handler for that request returned `status` (undefined: it threw). */
  end(hostname: string, port: number, status?: number): void {
    this.#peers.get(peerKey(hostname, port))?.clock.end(status);
  }

  /** A response body on `peer`'s connection keeps streaming after its handler returned. */
  bodyStarted(hostname: string, port: number): void {
    this.#peers.get(peerKey(hostname, port))?.clock.bodyStarted();
  }

  /** That body has ended. */
  bodyEnded(hostname: string, port: number): void {
    this.#peers.get(peerKey(hostname, port))?.clock.bodyEnded();
  }

  /**
   * Reads the kernel's list: admits connections not known yet (ending those over a cap),
   * reports their bytes to their clocks, and releases those that are gone. The guard's own
   * sweep then ends the ones whose deadline passed.
   */
  sweep(): void {
    const gen = ++this.#gen;
    let sockets: KernelSocket[];
    try {
      sockets = this.#o.source.list(this.#o.port());
    } catch {
      return; // /proc unreadable for a moment: next sweep
    }
    const scope = this.#o.scope ?? "all";
    for (const s of sockets) {
      const key = peerKey(s.hostname, s.port);
      // A worker keeps only what it served; a connection of another worker is not its own.
      if (scope === "claimed" && !this.#peers.has(key)) continue;
      if (scope !== "claimed" && this.#claims.has(key)) {
        this.#claims.set(key, gen);
        continue;
      }
      const p = this.#peers.get(key) ?? this.#newPeer(key);
      p.seen = gen;
      p.fd = s.fd;
      this.#admit(p, s.hostname, s.port);
      if (p.ending) {
        this.#shutdown(p);
        continue;
      }
      if (s.bytesAcked > p.acked) p.clock.down();
      // Bytes from the client after the server had sent something: past the ClientHello.
      if (s.bytesReceived > p.recv && p.acked > 0) p.clock.up();
      p.recv = s.bytesReceived;
      p.acked = s.bytesAcked;
    }
    // A claim outlives its connection by two sweeps (it may arrive before the kernel lists it).
    for (const [key, at] of this.#claims) if (gen - at > 2) this.#claims.delete(key);
    for (const [key, p] of this.#peers) {
      // Gone from the kernel's list; or known only from a request, and not listed for two
      // sweeps since (its connection ended in between).
      const gone = p.fd !== undefined ? p.seen !== gen : gen - p.born > 2;
      if (!gone) continue;
      if (p.watch) this.#o.guard.release(p.watch);
      this.#peers.delete(key);
    }
  }

  #newPeer(key: string): Peer {
    const l = this.#o.limits;
    // The first head is bounded as on the hop; later ones as HTTP/2's there (module header).
    const clock = new HopClock(l, {
      secure: true,
      h2: true,
      firstHeadMs: l.headTimeoutMs,
      now: this.#now,
    });
    const p: Peer = { clock, recv: 0, acked: 0, seen: 0, born: this.#gen, ending: false };
    this.#peers.set(key, p);
    return p;
  }

  /** A connection the kernel lists: it takes its place under the caps, or is ended. */
  #admit(p: Peer, hostname: string, port: number): void {
    if (p.watch || p.refusal) return;
    const w = this.#o.guard.admitPeer(hostname, port, "transparent", () => {
      p.ending = true;
      this.#shutdown(p);
    });
    if (w.kind === "refused") {
      this.#o.guard.noteRefusal(hostname, w, "transparent", false);
      p.ending = true;
      p.refusal = w;
      return;
    }
    p.watch = w;
    w.follow(p.clock);
    this.#o.onAdmit?.();
  }

  #shutdown(p: Peer): void {
    if (p.fd === undefined) return;
    try {
      this.#o.source.shutdown(p.fd);
    } catch { /* gone already */ }
  }
}
