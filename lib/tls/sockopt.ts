/**
 * Socket options Deno does not expose, set and read through libc with FFI (Linux only).
 *
 * - {@link setListenerNoDelay}: TCP_NODELAY on a listening socket, which Linux copies to every
 *   socket it accepts. `Deno.TlsConn` has no `setNoDelay`, and with Nagle on, every streamed
 *   response (head, then body) waits ~40 ms for the peer's delayed ACK.
 * - {@link originalDst}: SO_ORIGINAL_DST, where a netfilter-REDIRECTed connection was headed.
 *
 * Needs `--allow-ffi` and read access to /proc; without them (or off Linux) the functions
 * return false/undefined instead of throwing, and never trigger a permission prompt. Deno keeps
 * file descriptors private, so they are found through the internal `Deno.internal.fd` symbol
 * (accepted TcpConn only, in Deno 2.9.6) or by matching addresses in /proc/net/tcp{,6} to the
 * `socket:[inode]` links under /proc/self/fd.
 *
 * @module
 */

const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const SOL_IP = 0;
const SOL_IPV6 = 41;
/** SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and IP6T_SO_ORIGINAL_DST share the value 80. */
const SO_ORIGINAL_DST = 80;
const AF_INET = 2;
const AF_INET6 = 10;
/** TCP states (include/net/tcp_states.h), as in `tcpi_state` and /proc/net/tcp. */
export const TcpState = {
  ESTABLISHED: 1,
  SYN_SENT: 2,
  SYN_RECV: 3,
  FIN_WAIT1: 4,
  FIN_WAIT2: 5,
  TIME_WAIT: 6,
  CLOSE: 7,
  CLOSE_WAIT: 8,
  LAST_ACK: 9,
  LISTEN: 10,
  CLOSING: 11,
} as const;

const LIBC_SYMBOLS = {
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
} as const;

type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];

/** undefined: not tried yet; null: unavailable (not Linux, no permission, no libc). */
let libc: Libc | null | undefined;

/** Whether a permission is granted, without ever prompting for it (socket_watch.ts too). */
export function granted(descriptor: Deno.PermissionDescriptor): boolean {
  try {
    return Deno.permissions.querySync(descriptor).state === "granted";
  } catch {
    return false;
  }
}

/**
 * libc with the given symbols (socket_watch.ts and ops/memory.ts open it too, each with its
 * own), or null where it cannot be had: not Linux, no `--allow-ffi`, no libc.so.6. Never prompts
 * for a permission. The caller keeps the result: each call opens the library again.
 */
export function openLibc<S extends Deno.ForeignLibraryInterface>(
  symbols: S,
): Deno.DynamicLibrary<S>["symbols"] | null {
  if (Deno.build.os !== "linux" || !granted({ name: "ffi" })) return null;
  try {
    // Never closed: it lives as long as the process, like libc itself.
    return Deno.dlopen("libc.so.6", symbols).symbols;
  } catch {
    return null;
  }
}

/** Open libc once, without ever prompting for a permission. */
function getLibc(): Libc | null {
  if (libc === undefined) libc = openLibc(LIBC_SYMBOLS);
  return libc;
}

function procReadable(): boolean {
  return Deno.build.os === "linux" && granted({ name: "read", path: "/proc" });
}

/** Whether the CPU stores the low byte first: /proc prints addresses as host-order words. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * One address in a canonical text form, so that Deno's hostnames and addresses decoded here
 * compare equal: IPv4 dotted quad, IPv6 as the WHATWG URL serializer writes it (compressed,
 * lowercase, embedded IPv4 in hex). Returns the input unchanged if it is not an address.
 */
export function canonicalAddress(hostname: string): string {
  try {
    if (hostname.includes(":")) {
      const h = new URL(`http://[${hostname.replace(/^\[|\]$/g, "").replace(/%.*$/, "")}]/`)
        .hostname;
      return h.slice(1, -1);
    }
    return new URL(`http://${hostname}/`).hostname;
  } catch {
    return hostname;
  }
}

/**
 * Decode a /proc/net/tcp{,6} address ("0100007F" or 32 hex digits) to canonical text (see
 * {@link canonicalAddress}). Exported for socket_watch.ts.
 */
export function decodeProcAddress(hex: string): string {
  const bytes: number[] = [];
  for (let w = 0; w < hex.length; w += 8) {
    const word = hex.slice(w, w + 8);
    const wordBytes = [0, 2, 4, 6].map((i) => parseInt(word.slice(i, i + 2), 16));
    if (LITTLE_ENDIAN) wordBytes.reverse();
    bytes.push(...wordBytes);
  }
  return bytesToAddress(new Uint8Array(bytes));
}

function bytesToAddress(bytes: Uint8Array): string {
  if (bytes.length === 4) return bytes.join(".");
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] << 8) | bytes[i + 1]).toString(16));
  return canonicalAddress(groups.join(":"));
}

interface ProcSocket {
  localAddress: string;
  localPort: number;
  remoteAddress: string;
  remotePort: number;
  state: number;
  inode: string;
}

function readProcTcp(): ProcSocket[] {
  const sockets: ProcSocket[] = [];
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = Deno.readTextFileSync(file);
    } catch {
      continue; // no IPv6 in this kernel or namespace
    }
    for (const line of text.split("\n").slice(1)) {
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const [localHex, localPort] = f[1].split(":");
      const [remoteHex, remotePort] = f[2].split(":");
      sockets.push({
        localAddress: decodeProcAddress(localHex),
        localPort: parseInt(localPort, 16),
        remoteAddress: decodeProcAddress(remoteHex),
        remotePort: parseInt(remotePort, 16),
        state: parseInt(f[3], 16),
        inode: f[9],
      });
    }
  }
  return sockets;
}

/** The lowest file descriptor of this process that refers to socket `inode`. */
function fdOfInode(inode: string): number | undefined {
  const target = `socket:[${inode}]`;
  let found: number | undefined;
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${entry.name}`) !== target) continue;
    } catch {
      continue; // closed while we looked
    }
    const fd = Number(entry.name);
    if (found === undefined || fd < found) found = fd;
  }
  return found;
}

/**
 * Find this process's file descriptor for a TCP socket by its addresses, through /proc. Slow
 * (reads every TCP socket of the network namespace): meant for listeners at startup and for
 * tests, not per connection.
 *
 * @param local the socket's local address (a listener's `addr`, a connection's `localAddr`)
 * @param remote the peer's address for a connected socket; omit to find a listening socket
 * @returns the file descriptor, or undefined if not found or /proc is not readable
 */
export function findSocketFd(local: Deno.NetAddr, remote?: Deno.NetAddr): number | undefined {
  if (!procReadable()) return undefined;
  try {
    const localAddress = canonicalAddress(local.hostname);
    const remoteAddress = remote === undefined ? undefined : canonicalAddress(remote.hostname);
    for (const s of readProcTcp()) {
      if (s.localPort !== local.port || s.localAddress !== localAddress) continue;
      if (remote === undefined) {
        if (s.state !== TcpState.LISTEN) continue;
      } else if (
        s.state !== TcpState.ESTABLISHED || s.remotePort !== remote.port ||
        s.remoteAddress !== remoteAddress
      ) continue;
      // inode 0 means the socket belongs to no file (e.g. orphaned in TIME_WAIT).
      if (s.inode === "0") continue;
      const fd = fdOfInode(s.inode);
      if (fd !== undefined) return fd;
    }
  } catch {
    // /proc vanished or changed format: report "not found" as the contract says.
  }
  return undefined;
}

/**
 * Set TCP_NODELAY on a listening socket; Linux copies it to every socket accepted afterwards,
 * which is the only way to get it onto a `Deno.TlsConn`.
 *
 * @param listener a TCP or TLS listener bound to an IP address
 * @returns true if set; false if unavailable (not Linux, no --allow-ffi or /proc read access,
 *   socket not found, setsockopt failed). Never throws.
 */
export function setListenerNoDelay(listener: Deno.Listener | Deno.TlsListener): boolean {
  const addr = listener.addr;
  if (addr.transport !== "tcp") return false;
  const c = getLibc();
  if (c === null || !procReadable()) return false;
  // Every listening socket of this process on the address: with SO_REUSEPORT (workers, or a
  // listener and its replacement) several share it, and /proc does not say which is which.
  // Setting it again on one that has it is harmless.
  let set = false;
  try {
    const local = canonicalAddress(addr.hostname);
    for (const s of readProcTcp()) {
      if (s.localPort !== addr.port || s.localAddress !== local || s.state !== TcpState.LISTEN) {
        continue;
      }
      if (s.inode === "0") continue;
      const fd = fdOfInode(s.inode);
      if (fd === undefined) continue;
      if (c.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, new Int32Array([1]), 4) === 0) set = true;
    }
  } catch {
    // /proc vanished or changed format: report "not set" as the contract says.
  }
  return set;
}

/**
 * The file descriptor Deno keeps under its internal `Deno.internal.fd` symbol. In Deno 2.9.6
 * only connections accepted from `Deno.listen` carry it; `Deno.connect` connections and
 * `TlsConn` have the symbol with value undefined. Use {@link findSocketFd} for those.
 *
 * @param conn a connection
 * @returns the fd, or undefined if Deno does not expose it for this connection
 */
export function connFd(conn: Deno.Conn): number | undefined {
  for (const symbol of Object.getOwnPropertySymbols(conn)) {
    if (symbol.description !== "Deno.internal.fd") continue;
    const fd = (conn as unknown as Record<symbol, unknown>)[symbol];
    return typeof fd === "number" && Number.isInteger(fd) && fd >= 0 ? fd : undefined;
  }
  return undefined;
}

/**
 * Where a connection accepted on a netfilter REDIRECT (or DNAT) target was originally headed,
 * from SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6).
 *
 * @param conn a connection accepted from `Deno.listen`
 * @returns the original destination; undefined if the connection was not redirected (the
 *   kernel has no conntrack entry, or the entry says the client dialled this socket's own
 *   address), or if the fd or FFI is unavailable. Never throws.
 */
export function originalDst(conn: Deno.TcpConn): { hostname: string; port: number } | undefined {
  const local = conn.localAddr;
  if (local.transport !== "tcp") return undefined;
  const c = getLibc();
  if (c === null) return undefined;
  const fd = connFd(conn);
  if (fd === undefined) return undefined;
  const localAddress = canonicalAddress(local.hostname);
  // An IPv4 client on a dual-stack IPv6 socket shows as ::ffff:a.b.c.d; its conntrack entry is
  // IPv4, so ask the IPv4 level first for it.
  const mapped = /^::ffff:[0-9a-f]{1,4}:[0-9a-f]{1,4}$/.test(localAddress);
  const levels = !localAddress.includes(":") || mapped ? [SOL_IP, SOL_IPV6] : [SOL_IPV6];
  for (const level of levels) {
    const dst = getOriginalDst(c, fd, level);
    if (dst === undefined) continue;
    const sameAsLocal = dst.port === local.port &&
      (dst.hostname === localAddress ||
        canonicalAddress(`::ffff:${dst.hostname}`) === localAddress);
    return sameAsLocal ? undefined : dst;
  }
  return undefined;
}

function getOriginalDst(
  c: Libc,
  fd: number,
  level: number,
): { hostname: string; port: number } | undefined {
  // Big enough for sockaddr_in6 (28 bytes); sockaddr_in is 16.
  const buf = new Uint8Array(28);
  const len = new Uint32Array([level === SOL_IP ? 16 : 28]);
  if (c.getsockopt(fd, level, SO_ORIGINAL_DST, buf, len) !== 0) return undefined;
  const view = new DataView(buf.buffer);
  const family = view.getUint16(0, LITTLE_ENDIAN);
  const port = view.getUint16(2, false); // network byte order
  if (family === AF_INET && len[0] >= 8) {
    return { hostname: bytesToAddress(buf.slice(4, 8)), port };
  }
  if (family === AF_INET6 && len[0] >= 24) {
    return { hostname: bytesToAddress(buf.slice(8, 24)), port };
  }
  return undefined;
}
