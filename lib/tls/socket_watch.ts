/**
 * The kernel's view of the connections a listener of this process accepted, for a data path
 * whose connections JS never holds.
 *
 * Why: the direct path serves a resolver-backed `Deno.listenTls` with Deno's native HTTP server
 * (`serveHttpOnListener`). Connections are accepted and served in native code, which has no
 * timeouts, and sluice's JS gets no object, fd or `close()` for them: a client that opens a
 * connection and goes silent, drips a request head or idles in keep-alive would hold it for
 * ever. {@link SocketWatch} lists them from the kernel instead: for each, the fd this process
 * holds, both addresses, the socket inode and TCP_INFO (state, ms since data was last received
 * or sent, bytes received and acknowledged), and ends a chosen one with `shutdown(fd,
 * SHUT_RDWR)`. Never `close()`: the fd is Deno's, and closing it under Deno would let the number
 * be reused while Deno still uses it. After `shutdown` the peer gets a FIN, Deno's next read
 * sees end-of-file (a pending write fails with EPIPE), and Deno closes and releases the fd
 * itself (pinned by test/lib/tls/socket_watch_test.ts, plain and TLS).
 *
 * How, per {@link SocketWatch.list} (one "sweep"):
 * 1. one NETLINK_SOCK_DIAG (inet_diag) dump per address family, filtered by local port in the
 *    kernel, gives every non-listening socket on the port with its inode and TCP_INFO. (Fallback,
 *    `source: "proc"`: /proc/net/tcp{,6}, which the kernel formats as text for EVERY TCP socket
 *    of the network namespace, then one getsockopt(TCP_INFO) per connection.)
 * 2. the fds: a cache inode -> fd is trusted while the inode stays in the dump (a socket whose
 *    fd was closed leaves it or shows inode 0, so a reused fd number is never trusted); only
 *    when an inode is not in the cache is the fd table searched, and only fds not trusted are
 *    looked at: fstat(fd) through FFI for every number below the table's size (FDSize in
 *    /proc/self/status), matching sockfs's st_dev and the inode. (Fallback, `fdLookup:
 *    "links"`: list /proc/self/fd and readlink, ~4 µs per entry and ~7 µs per link.)
 * 3. only the connections whose fd this process holds are returned.
 *
 * What it costs (bench/socket_watch_bench.ts on the 2-core VM of /work/shared/PLATFORM.md,
 * kernel 6.18, Deno 2.9.6; idle connections to `Deno.serve` on loopback held by a child
 * process; a shared machine, so each cell is the range of the means of two runs, in ms; the
 * namespace held 7,000-16,000 other TCP sockets, mostly TIME_WAIT, during them):
 * | connections | steady, sock_diag | cold, sock_diag + fstat | steady, /proc | cold, /proc + links |
 * |---|---|---|---|---|
 * | 100 | 1.6-3.1 | 1.7-2.7 | 12-20 | 13-21 |
 * | 1,000 | 3.0-3.3 | 4.5-4.7 | 18-23 | 24-29 |
 * | 3,000 | 7.9-9.3 | 10.5-11.5 | 30-40 | 48-55 |
 *
 * A dump walks the kernel's whole established hash (262,144 buckets here, and every socket in
 * it): ~1.4 ms fixed, then ~2 µs per watched connection (kernel and JS). A "cold" sweep is what
 * a burst of new connections costs once. At one sweep every 250 ms, 1,000 connections cost
 * ~1.3% of a core, 3,000 ~3.5%. /proc/net/tcp costs ~2 µs per line of the WHOLE namespace (other
 * services, TIME_WAIT) whatever the port, so it is the fallback only.
 *
 * Linux only (x86_64 and aarch64: the struct stat and tcp_info offsets used are the same on
 * both). Needs `--allow-ffi` and read access to /proc (without them {@link
 * SocketWatch.available} is false and `list` returns nothing; no permission prompt). The view
 * is the PROCESS's: fds are per process, and the kernel does not record which listener accepted
 * a socket, so every connection on the port held by any thread (Web Workers with `reusePort`
 * listeners on the same port included) is listed. Reads race with other threads closing fds:
 * a number closed and reused between the dump and the fd lookup can be attributed to the old
 * peer for one sweep; {@link SocketWatch.shutdown} does not race (it duplicates the fd and
 * checks the duplicate's inode first). Deno's own event loop runs on the thread that runs the
 * sweep, so its connections cannot close or be accepted during it.
 *
 * Why one file of ~800 lines: the netlink dump, the struct offsets, the fd lookup and the
 * shutdown all read the same FFI handles and inode cache; split, each part would export them.
 *
 * @module
 */
import { canonicalAddress, decodeProcAddress, granted, openLibc, TcpState } from "./sockopt.ts";

export { TcpState };

const IPPROTO_TCP = 6;
const TCP_INFO = 11;
const SOL_SOCKET = 1;
const SO_LINGER = 13;
const SHUT_RDWR = 2;
const F_DUPFD_CLOEXEC = 1030;

/**
 * Offsets in `struct tcp_info` (linux/tcp.h), the same on every Linux ABI: u8 fields first, then
 * naturally aligned u32s and u64s. Checked with offsetof() on x86_64 (size 232 in kernel 6.x).
 * tcpi_bytes_acked/received exist since Linux 4.1 (the kernel returns fewer bytes before).
 */
export const TCP_INFO_OFFSETS = {
  state: 0,
  lastDataSent: 44,
  lastDataRecv: 52,
  lastAckRecv: 56,
  bytesAcked: 120,
  bytesReceived: 128,
} as const;
/** Enough for tcp_info up to tcpi_bytes_received. */
const TCP_INFO_NEEDED = TCP_INFO_OFFSETS.bytesReceived + 8;
const TCP_INFO_BUFFER = 256;

/** The TCP_INFO fields the watch reads. */
export type TcpInfo = {
  /** `tcpi_state`, one of {@link TcpState}. */
  state: number;
  /** Milliseconds since data (not a bare ACK) was last received from the peer. */
  lastDataRecvMs: number;
  /** Milliseconds since data was last sent to the peer. */
  lastDataSentMs: number;
  /** Milliseconds since an ACK was last received (data segments carry ACKs too). */
  lastAckRecvMs: number;
  /** Bytes received from the peer (`tcpi_bytes_received`). */
  bytesReceived: number;
  /** Bytes sent and acknowledged by the peer (`tcpi_bytes_acked`). */
  bytesAcked: number;
};

/**
 * One accepted connection held by this process. `hostname`/`port` are the PEER's (the shape
 * lib/ingress/direct_watch.ts's `KernelSocket` expects); an IPv4 peer of a dual-stack IPv6
 * listener shows as `::ffff:7f00:1` (the canonical form sockopt.ts's `canonicalAddress` writes).
 */
export type WatchedSocket = TcpInfo & {
  fd: number;
  /** The socket's inode (`socket:[inode]` under /proc/self/fd). */
  inode: number;
  hostname: string;
  port: number;
  localHostname: string;
  localPort: number;
};

/** Options of {@link SocketWatch.shutdown}. */
export type ShutdownOptions = {
  /**
   * Also set SO_LINGER {on, 0}, so that Deno's close after the FIN sends a RST and frees the
   * socket at once, instead of leaving an orphan in FIN_WAIT2 for up to tcp_fin_timeout (60 s)
   * when the peer never answers the FIN (the stuck clients this is meant for).
   */
  reset?: boolean;
};

const LIBC_SYMBOLS = {
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  // Variadic in C; with integer arguments only, the x86_64 and aarch64 calling conventions
  // pass them as for a fixed signature.
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  // glibc >= 2.33 exports fstat; without it, fds are matched by reading their /proc links.
  fstat: { parameters: ["i32", "buffer"], result: "i32", optional: true },
} as const;

type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];

/** undefined: not tried yet; null: unavailable (not Linux, no permission, no libc). */
let libc: Libc | null | undefined;

function getLibc(): Libc | null {
  if (libc !== undefined) return libc;
  // The watch reads /proc as well: without it, no libc either.
  libc = granted({ name: "read", path: "/proc" }) ? openLibc(LIBC_SYMBOLS) : null;
  return libc;
}

const infoBuf = new Uint8Array(TCP_INFO_BUFFER);
const infoView = new DataView(infoBuf.buffer);
const infoLen = new Uint32Array(1);
const LE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * TCP_INFO of one socket fd, read through FFI.
 *
 * @param fd a TCP socket's file descriptor
 * @returns the fields, or undefined if unavailable (no FFI or /proc permission, not Linux, the
 *   fd is closed or not a TCP socket, or a kernel older than 4.1). Never throws.
 */
export function tcpInfo(fd: number): TcpInfo | undefined {
  const c = getLibc();
  if (c === null) return undefined;
  return readTcpInfo(c, fd);
}

function readTcpInfo(c: Libc, fd: number): TcpInfo | undefined {
  infoLen[0] = TCP_INFO_BUFFER;
  if (c.getsockopt(fd, IPPROTO_TCP, TCP_INFO, infoBuf, infoLen) !== 0) return undefined;
  return decodeTcpInfo(infoView, 0, infoLen[0]);
}

/** The fields of a `struct tcp_info` of `len` bytes at `base` in `view`. */
function decodeTcpInfo(view: DataView, base: number, len: number): TcpInfo | undefined {
  if (len < TCP_INFO_NEEDED) return undefined;
  const o = TCP_INFO_OFFSETS;
  return {
    state: view.getUint8(base + o.state),
    lastDataRecvMs: view.getUint32(base + o.lastDataRecv, LE),
    lastDataSentMs: view.getUint32(base + o.lastDataSent, LE),
    lastAckRecvMs: view.getUint32(base + o.lastAckRecv, LE),
    // u64s read as two words (no BigInt per call); exact up to 2^53 bytes (8 PiB).
    bytesReceived: u64(view, base + o.bytesReceived),
    bytesAcked: u64(view, base + o.bytesAcked),
  };
}

function u64(view: DataView, at: number): number {
  const lo = view.getUint32(at + (LE ? 0 : 4), LE);
  const hi = view.getUint32(at + (LE ? 4 : 0), LE);
  return hi * 2 ** 32 + lo;
}

/** A socket on the watched port, from either source, before its fd is known. */
export type SocketLine = {
  inode: number;
  localPort: number;
  localHex: string;
  remoteHex: string;
  remotePort: number;
  /** TCP_INFO, when the source gave it (sock_diag does; /proc does not). */
  info?: TcpInfo;
};

const HEX_DIGIT = /^[0-9A-Fa-f]$/;

/**
 * The lines of one /proc/net/tcp{,6} text whose local port is `portHex` and that belong to a file
 * (inode not 0) and are not listening. Scans by offsets rather than splitting every line: most
 * lines are other ports (upstream connections, TIME_WAIT) and are skipped after one compare.
 *
 * Line format (net/ipv4/tcp_ipv4.c, get_tcp4_sock): `%4d: %08X:%04X %08X:%04X %02X %08X:%08X
 * %02X:%08lX %08X %5u %8d %lu ...`, the last being the inode; IPv6 addresses are 32 digits.
 */
export function parseProcNetTcp(text: string, portHex: string, addrLen: 8 | 32): SocketLine[] {
  const out: SocketLine[] = [];
  let s = text.indexOf("\n") + 1; // skip the header
  while (s > 0 && s < text.length) {
    const e0 = text.indexOf("\n", s);
    const e = e0 < 0 ? text.length : e0;
    const colon = text.indexOf(":", s);
    const local = colon + 2;
    const localPort = local + addrLen + 1;
    const remote = localPort + 5;
    const remotePort = remote + addrLen + 1;
    const state = remotePort + 5;
    if (
      colon > 0 && colon < e && state + 2 <= e && text.startsWith(portHex, localPort) &&
      !text.startsWith("0A", state)
    ) {
      // Six space-separated fields after the state: tx:rx tr:when retrnsmt uid timeout inode.
      let i = state + 2;
      let field = 0;
      let inodeStart = -1;
      while (i < e) {
        while (i < e && text.charCodeAt(i) === 32) i++;
        if (++field === 6) {
          inodeStart = i;
          break;
        }
        while (i < e && text.charCodeAt(i) !== 32) i++;
      }
      if (inodeStart > 0) {
        let j = inodeStart;
        while (j < e && text.charCodeAt(j) !== 32) j++;
        const inode = Number(text.slice(inodeStart, j));
        if (inode > 0 && HEX_DIGIT.test(text[remotePort])) {
          out.push({
            inode,
            localPort: parseInt(text.slice(localPort, localPort + 4), 16),
            localHex: text.slice(local, local + addrLen),
            remoteHex: text.slice(remote, remote + addrLen),
            remotePort: parseInt(text.slice(remotePort, remotePort + 4), 16),
          });
        }
      }
    }
    s = e + 1;
  }
  return out;
}

const AF_INET = 2;
const AF_INET6 = 10;
const AF_NETLINK = 16;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0x80000;
const NETLINK_SOCK_DIAG = 4;
const SOCK_DIAG_BY_FAMILY = 20;
const NLM_F_REQUEST = 1;
const NLM_F_DUMP = 0x300;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const MSG_DONTWAIT = 0x40;
const INET_DIAG_REQ_BYTECODE = 1;
const INET_DIAG_INFO = 2;
const INET_DIAG_BC_S_GE = 2;
const INET_DIAG_BC_S_LE = 3;
/** Every state a socket with a file can be in after accept (not LISTEN, SYN_RECV, TIME_WAIT). */
const DUMP_STATES = [
  TcpState.ESTABLISHED,
  TcpState.FIN_WAIT1,
  TcpState.FIN_WAIT2,
  TcpState.CLOSE_WAIT,
  TcpState.LAST_ACK,
  TcpState.CLOSING,
].reduce((m, st) => m | (1 << st), 0);

/** A sock_diag dump failed or gave something unexpected. */
class SockDiagError extends Error {
  override name = "SockDiagError";
}

/**
 * The NETLINK_SOCK_DIAG (inet_diag) dump: every TCP socket on a local port, with its inode and
 * TCP_INFO, in one request whose port filter runs in the kernel (so other sockets of the
 * namespace cost only the walk of the kernel's hash, where /proc/net/tcp formats every one of
 * them as text).
 * Layouts: linux/netlink.h (nlmsghdr, 16 bytes), linux/inet_diag.h (inet_diag_req_v2, 56 bytes
 * with its sockid; inet_diag_msg, 72 bytes; bytecode ops of 4 bytes), linux/rtnetlink.h (rtattr).
 */
class SockDiag {
  readonly #c: Libc;
  #fd: number;
  #seq = 0;
  readonly #req = new Uint8Array(16 + 56 + 4 + 16);
  readonly #buf = new Uint8Array(64 * 1024);
  readonly #view = new DataView(this.#buf.buffer);

  constructor(c: Libc) {
    this.#c = c;
    this.#fd = c.socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (this.#fd < 0) throw new SockDiagError("socket(AF_NETLINK, NETLINK_SOCK_DIAG) failed");
  }

  close(): void {
    if (this.#fd >= 0) this.#c.close(this.#fd);
    this.#fd = -1;
  }

  /**
   * The sockets of one family whose local port is `port`, as {@link SocketLine}s with `info`.
   * @throws {SockDiagError} when the kernel refuses or answers oddly; the socket is then closed
   */
  dump(family: 4 | 6, port: number, out: SocketLine[], hex: (words: number[]) => string): void {
    if (this.#fd < 0) throw new SockDiagError("closed");
    const seq = ++this.#seq;
    const r = new DataView(this.#req.buffer);
    this.#req.fill(0);
    // nlmsghdr
    r.setUint32(0, this.#req.length, LE);
    r.setUint16(4, SOCK_DIAG_BY_FAMILY, LE);
    r.setUint16(6, NLM_F_REQUEST | NLM_F_DUMP, LE);
    r.setUint32(8, seq, LE);
    // inet_diag_req_v2: family, protocol, extensions wanted, pad, states; the sockid is unused
    // in a dump.
    r.setUint8(16, family === 4 ? AF_INET : AF_INET6);
    r.setUint8(17, IPPROTO_TCP);
    r.setUint8(18, 1 << (INET_DIAG_INFO - 1));
    r.setUint32(20, DUMP_STATES, LE);
    // rtattr INET_DIAG_REQ_BYTECODE: "sport >= port && sport <= port". Each op is {code, yes,
    // no}: jump `yes` bytes if true, `no` if false; landing exactly at the end accepts, past it
    // (len + 4) rejects. The port follows its op in the `no` field of a second op.
    r.setUint16(72, 4 + 16, LE);
    r.setUint16(74, INET_DIAG_REQ_BYTECODE, LE);
    const op = (at: number, code: number, yes: number, no: number) => {
      r.setUint8(at, code);
      r.setUint8(at + 1, yes);
      r.setUint16(at + 2, no, LE);
    };
    op(76, INET_DIAG_BC_S_GE, 8, 16 + 4);
    op(80, 0, 0, port);
    op(84, INET_DIAG_BC_S_LE, 8, 8 + 4);
    op(88, 0, 0, port);
    const sent = Number(this.#c.send(this.#fd, this.#req, BigInt(this.#req.length), 0));
    if (sent !== this.#req.length) this.#fail("send failed");
    const v = this.#view;
    for (;;) {
      // The kernel fills the next batch inside recv: it is never empty while the dump lasts.
      const n = Number(this.#c.recv(this.#fd, this.#buf, BigInt(this.#buf.length), MSG_DONTWAIT));
      if (n <= 0) this.#fail("recv failed or would block");
      let p = 0;
      while (p + 16 <= n) {
        const len = v.getUint32(p, LE);
        const type = v.getUint16(p + 4, LE);
        if (len < 16 || p + len > n) this.#fail("truncated message");
        if (v.getUint32(p + 8, LE) !== seq) {
          p += (len + 3) & ~3; // a late answer to an older request
          continue;
        }
        if (type === NLMSG_DONE) return;
        if (type === NLMSG_ERROR) this.#fail(`error ${-v.getInt32(p + 16, LE)}`);
        if (type === SOCK_DIAG_BY_FAMILY && len >= 16 + 72) this.#row(p + 16, p + len, out, hex);
        p += (len + 3) & ~3;
      }
    }
  }

  /** One inet_diag_msg (at `m`, message ending at `end`) to a SocketLine. */
  #row(m: number, end: number, out: SocketLine[], hex: (words: number[]) => string): void {
    const v = this.#view;
    const inode = v.getUint32(m + 68, LE);
    if (inode === 0) return;
    const words = v.getUint8(m) === AF_INET ? 1 : 4;
    // Addresses as /proc prints them (host-order words), so one cache serves both sources.
    const addr = (at: number) => {
      const w: number[] = [];
      for (let i = 0; i < words; i++) w.push(v.getUint32(at + 4 * i, LE));
      return hex(w);
    };
    let info: TcpInfo | undefined;
    for (let a = m + 72; a + 4 <= end;) {
      const alen = v.getUint16(a, LE);
      if (alen < 4) break;
      if (v.getUint16(a + 2, LE) === INET_DIAG_INFO) {
        info = decodeTcpInfo(v, a + 4, Math.min(alen, end - a) - 4);
      }
      a += (alen + 3) & ~3;
    }
    if (info === undefined) return;
    out.push({
      inode,
      localPort: v.getUint16(m + 4, false),
      localHex: addr(m + 8),
      remoteHex: addr(m + 24),
      remotePort: v.getUint16(m + 6, false),
      info,
    });
  }

  #fail(why: string): never {
    this.close();
    throw new SockDiagError(`sock_diag dump: ${why}`);
  }
}

/** Options of a {@link SocketWatch}. */
export type SocketWatchOptions = {
  /**
   * Where the list comes from: "sock_diag" (NETLINK_SOCK_DIAG: one dump filtered by port in the
   * kernel, TCP_INFO included), "proc" (/proc/net/tcp{,6} and one getsockopt per connection),
   * or "auto" (default): sock_diag, falling back to /proc for a sweep whose dump fails, and for
   * good if no netlink socket can be opened.
   */
  source?: "auto" | "sock_diag" | "proc";
  /**
   * How the fd of a new connection is found: "fstat" (default where glibc has it: probe every fd
   * number below the fd table's size) or "links" (list /proc/self/fd and read the links).
   */
  fdLookup?: "fstat" | "links";
  /**
   * How long an inode found in the table but not among this process's fds (another process's
   * socket on the same port, or one caught between accept and fd install) is not looked for
   * again. Default 1000 ms.
   */
  foreignRetryMs?: number;
  now?: () => number;
};

/**
 * Lists the connections accepted on a local port and held by this process, with TCP_INFO, and
 * ends chosen ones. One instance per watched port is cheapest (its caches are per instance).
 *
 * Structurally a `SocketSource` of lib/ingress/direct_watch.ts.
 *
 * @example
 * ```ts ignore
 * const watch = new SocketWatch();
 * for (const s of watch.list(listener.addr.port, listener.addr.hostname)) {
 *   if (s.bytesReceived === 0 && s.lastDataRecvMs > 10_000) watch.shutdown(s.fd);
 * }
 * ```
 */
export class SocketWatch {
  readonly #source: "auto" | "sock_diag" | "proc";
  /** undefined: not opened yet; null: unavailable. */
  #diag: SockDiag | null | undefined;
  #lastSource: "sock_diag" | "proc" | undefined;
  readonly #foreignRetryMs: number;
  readonly #fdLookup: "fstat" | "links";
  readonly #now: () => number;
  /** inode -> fd, as of the last sweep. */
  #inodeFd = new Map<number, number>();
  /** fd -> inode, as of the last sweep (what shutdown() checks against). */
  #fdInode = new Map<number, number>();
  /** inodes not held by this process -> when last looked for. */
  #foreign = new Map<number, number>();
  /** /proc hex address -> canonical text. */
  readonly #addresses = new Map<string, string>();
  /** How many times the fd table was searched for new sockets (for tests and the bench). */
  fdScans = 0;
  /** How many fds were looked at (fstat or readlink) in those searches. */
  fdReads = 0;

  /**
   * A watch with empty caches (the first list looks up every fd).
   *
   * @param opts the source, the fd lookup and the clock; every one has a default
   */
  constructor(opts: SocketWatchOptions = {}) {
    this.#source = opts.source ?? "auto";
    this.#foreignRetryMs = opts.foreignRetryMs ?? 1000;
    this.#fdLookup = opts.fdLookup ?? "fstat";
    this.#now = opts.now ?? Date.now;
  }

  /** Where the last {@link SocketWatch.list} read the sockets from (undefined: nowhere yet). */
  get source(): "sock_diag" | "proc" | undefined {
    return this.#lastSource;
  }

  /** Closes the netlink socket, if one was opened (a later list opens a new one). */
  close(): void {
    this.#diag?.close();
    if (this.#diag) this.#diag = undefined;
  }

  /** Same as {@link SocketWatch.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Whether the watch can work here: Linux, --allow-ffi, read access to /proc, libc. */
  static available(): boolean {
    return getLibc() !== null;
  }

  /**
   * The connections accepted on `port` and held by this process, now: every state but LISTEN
   * (ESTABLISHED, CLOSE_WAIT when the peer half-closed, FIN_WAIT* after a shutdown until Deno
   * closes). Connections still in the accept queue have no fd and are not listed.
   *
   * @param port the listener's local port
   * @param hostname the listener's address: an IPv4 one (0.0.0.0 included) reads only
   *   /proc/net/tcp, an IPv6 one (:: included, whose IPv4 peers are IPv4-mapped) only tcp6, and a
   *   non-wildcard one also filters on the local address; omitted, both tables, any address
   * @returns the connections; empty if unavailable (see {@link SocketWatch.available}). Never
   *   throws.
   */
  list(port: number, hostname?: string): WatchedSocket[] {
    const c = getLibc();
    if (c === null) return [];
    const host = hostname?.replace(/^\[|\]$/g, "");
    const v6 = host === undefined ? undefined : host.includes(":");
    const wildcard = host === undefined || host === "0.0.0.0" || host === "::";
    const lines = this.#sockDiag(c, port, v6) ?? this.#procTables(port, v6);
    if (lines === undefined) return [];
    let localWanted: string | undefined;
    if (!wildcard) localWanted = canonicalAddress(host!);

    // Which inodes need an fd: the cache is trusted only for inodes still in the table.
    const inodeFd = new Map<number, number>();
    const now = this.#now();
    let missing = 0;
    for (const l of lines) {
      const fd = this.#inodeFd.get(l.inode);
      if (fd !== undefined) inodeFd.set(l.inode, fd);
      else {
        const seen = this.#foreign.get(l.inode);
        if (seen === undefined || now - seen >= this.#foreignRetryMs) missing++;
      }
    }
    if (missing > 0) this.#resolve(lines, inodeFd, now);
    // Forget foreign inodes that left the table.
    if (this.#foreign.size > 0) {
      const live = new Set(lines.map((l) => l.inode));
      for (const inode of this.#foreign.keys()) if (!live.has(inode)) this.#foreign.delete(inode);
    }

    const out: WatchedSocket[] = [];
    const fdInode = new Map<number, number>();
    for (const l of lines) {
      const fd = inodeFd.get(l.inode);
      // A dump is not one atomic snapshot: a socket can show twice while others come and go.
      if (fd === undefined || fdInode.has(fd) || l.localPort !== port) continue;
      const localHostname = this.#address(l.localHex);
      if (localWanted !== undefined && localHostname !== localWanted) {
        inodeFd.delete(l.inode);
        continue;
      }
      const info = l.info ?? readTcpInfo(c, fd);
      if (info === undefined) {
        inodeFd.delete(l.inode); // closed since the table was read
        continue;
      }
      fdInode.set(fd, l.inode);
      out.push({
        fd,
        inode: l.inode,
        hostname: this.#address(l.remoteHex),
        port: l.remotePort,
        localHostname,
        localPort: l.localPort,
        state: info.state,
        lastDataRecvMs: info.lastDataRecvMs,
        lastDataSentMs: info.lastDataSentMs,
        lastAckRecvMs: info.lastAckRecvMs,
        bytesReceived: info.bytesReceived,
        bytesAcked: info.bytesAcked,
      });
    }
    this.#inodeFd = inodeFd;
    this.#fdInode = fdInode;
    if (this.#addresses.size > 65_536) this.#addresses.clear();
    return out;
  }

  /**
   * Ends one connection listed by the last {@link SocketWatch.list}: `shutdown(fd, SHUT_RDWR)`,
   * so the peer gets a FIN and Deno sees end-of-file and closes the fd itself. Race-free against
   * fd reuse: the fd is first duplicated (F_DUPFD_CLOEXEC), the duplicate's `socket:[inode]`
   * checked against the inode the last list saw, and the shutdown done on the duplicate, which is
   * then closed (closing a duplicate does not close Deno's fd).
   *
   * @param fd an fd from the last list
   * @returns true if shut down; false if the fd was not in the last list, no longer refers to
   *   that socket, or the call failed. Never throws.
   */
  shutdown(fd: number, opts: ShutdownOptions = {}): boolean {
    const c = getLibc();
    const inode = this.#fdInode.get(fd);
    if (c === null || inode === undefined) return false;
    const dup = c.fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return false;
    try {
      let link: string;
      try {
        link = Deno.readLinkSync(`/proc/self/fd/${dup}`);
      } catch {
        return false;
      }
      if (link !== `socket:[${inode}]`) return false;
      if (opts.reset) {
        c.setsockopt(dup, SOL_SOCKET, SO_LINGER, new Int32Array([1, 0]), 8);
      }
      return c.shutdown(dup, SHUT_RDWR) === 0;
    } finally {
      c.close(dup);
    }
  }

  /** The lines from one sock_diag dump per family; undefined when not used or failed. */
  #sockDiag(c: Libc, port: number, v6: boolean | undefined): SocketLine[] | undefined {
    if (this.#source === "proc" || this.#diag === null) return undefined;
    try {
      this.#diag ??= new SockDiag(c);
    } catch {
      this.#diag = null; // no netlink here (seccomp, old kernel): /proc for good
      return undefined;
    }
    const lines: SocketLine[] = [];
    try {
      if (v6 !== true) this.#diag.dump(4, port, lines, hexWords);
      if (v6 !== false) this.#diag.dump(6, port, lines, hexWords);
    } catch {
      this.#diag = undefined; // closed by the failure; a new socket next time
      return this.#source === "sock_diag" ? [] : undefined;
    }
    this.#lastSource = "sock_diag";
    return lines;
  }

  /** The lines of /proc/net/tcp and/or tcp6. */
  #procTables(port: number, v6: boolean | undefined): SocketLine[] | undefined {
    if (this.#source === "sock_diag") return undefined;
    const portHex = port.toString(16).toUpperCase().padStart(4, "0");
    const tables: [string, 8 | 32][] = [];
    if (v6 !== true) tables.push(["/proc/net/tcp", 8]);
    if (v6 !== false) tables.push(["/proc/net/tcp6", 32]);
    const lines: SocketLine[] = [];
    for (const [file, len] of tables) {
      let text: string;
      try {
        text = Deno.readTextFileSync(file);
      } catch {
        continue; // no IPv6 in this kernel or namespace
      }
      for (const l of parseProcNetTcp(text, portHex, len)) lines.push(l);
    }
    this.#lastSource = "proc";
    return lines;
  }

  /**
   * Finds the fds of the lines' inodes not known yet, looking only at fds not trusted. With
   * fstat (0.6 µs a call here) every fd number below the fd table's size is probed: listing
   * /proc/self/fd and reading its links cost ~4 µs per entry and ~7 µs per link.
   */
  #resolve(lines: SocketLine[], inodeFd: Map<number, number>, now: number): void {
    const wanted = new Set<number>();
    for (const l of lines) if (!inodeFd.has(l.inode)) wanted.add(l.inode);
    const trusted = new Set(inodeFd.values());
    this.fdScans++;
    const found = (inode: number, fd: number) => {
      wanted.delete(inode);
      inodeFd.set(inode, fd);
      this.#foreign.delete(inode);
    };
    const c = getLibc();
    const dev = c === null ? undefined : socketDevice(c);
    const size = dev === undefined ? undefined : fdTableSize();
    if (this.#fdLookup === "fstat" && c?.fstat && dev !== undefined && size !== undefined) {
      for (let fd = 0; fd < size && wanted.size > 0; fd++) {
        if (trusted.has(fd)) continue;
        this.fdReads++;
        if (c.fstat(fd, statBuf) !== 0) continue; // not open
        // st_dev at 0 and st_ino at 8 (u64 each) on x86_64 and aarch64 alike.
        if (statView.getUint32(0, LE) !== dev[0] || statView.getUint32(4, LE) !== dev[1]) continue;
        const inode = statView.getUint32(8, LE) + statView.getUint32(12, LE) * 2 ** 32;
        if (wanted.has(inode)) found(inode, fd);
      }
    } else {
      let entries: Deno.DirEntry[] = [];
      try {
        entries = [...Deno.readDirSync("/proc/self/fd")];
      } catch { /* nothing found */ }
      for (const entry of entries) {
        if (wanted.size === 0) break;
        const fd = Number(entry.name);
        if (trusted.has(fd)) continue;
        let link: string;
        try {
          this.fdReads++;
          link = Deno.readLinkSync(`/proc/self/fd/${fd}`);
        } catch {
          continue; // closed while we looked
        }
        if (!link.startsWith("socket:[")) continue;
        const inode = Number(link.slice(8, -1));
        if (wanted.has(inode)) found(inode, fd);
      }
    }
    for (const inode of wanted) this.#foreign.set(inode, now);
  }

  #address(hex: string): string {
    let a = this.#addresses.get(hex);
    if (a === undefined) {
      a = decodeProcAddress(hex);
      this.#addresses.set(hex, a);
    }
    return a;
  }
}

/** Host-order 32-bit words as /proc/net/tcp{,6} prints an address ("0100007F"). */
function hexWords(words: number[]): string {
  let h = "";
  for (const w of words) h += w.toString(16).toUpperCase().padStart(8, "0");
  return h;
}

const statBuf = new Uint8Array(256); // sizeof(struct stat): 144 on x86_64, 128 on aarch64
const statView = new DataView(statBuf.buffer);
/** st_dev of sockfs, where every socket's inode lives, as two u32 words; null: unknown. */
let sockDev: [number, number] | null | undefined;

function socketDevice(c: Libc): [number, number] | undefined {
  if (sockDev === undefined) {
    sockDev = null;
    const fd = c.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
      if (c.fstat && c.fstat(fd, statBuf) === 0) {
        sockDev = [statView.getUint32(0, LE), statView.getUint32(4, LE)];
      }
      c.close(fd);
    }
  }
  return sockDev ?? undefined;
}

/** How many fd numbers the process's fd table holds now (FDSize in /proc/self/status). */
function fdTableSize(): number | undefined {
  try {
    const m = /^FDSize:\s*(\d+)/m.exec(Deno.readTextFileSync("/proc/self/status"));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}
