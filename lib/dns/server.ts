/**
 * sluice's policy-aware DNS server (`listen.dns`, `enforce.dns: proxy`): the
 * resolver that enforced subjects are redirected to.
 *
 * Only names the network policy lets the subject reach are resolved (through
 * the injected `Resolver`: getaddrinfo in production) and answered. Every
 * other name gets NXDOMAIN and the upstream resolver is never asked, so
 * lookups such as `<secret>.attacker.example` never leave the host: DNS stops
 * being an exfiltration channel. A question that carries a credential's
 * placeholder is refused first, whatever its class or type and even under an
 * allowed wildcard (`<placeholder>.allowed.example`): NXDOMAIN, never asked
 * upstream, audited with `violation` and reported to `onViolation` (which
 * counts it and lets `sluice run` end its command). NXDOMAIN rather than REFUSED because a
 * stub resolver treats REFUSED as "this server will not help, try the next
 * one" and retries every other configured server (slow, and a leak if one of
 * those is reachable), while NXDOMAIN is a final answer that fails fast.
 *
 * Addresses are answered as the resolver returned them, private ones
 * included: handing a client an address grants nothing, because the proxy
 * checks every address it connects to (`decideAddress`), and CIDR-enforced
 * raw traffic is allowed by netfilter on the address alone, whatever DNS said.
 * Filtering here would only break names whose legitimate answers are private
 * (split-horizon corporate DNS) without making anything safer.
 *
 * What is answered, for a name the policy allows:
 *   - A and AAAA: the resolver's addresses of that family, with a short TTL
 *     (30 s by default) so a policy reload or an address change takes effect
 *     quickly; no address of that family is NOERROR with no answer (NODATA);
 *   - PTR: NXDOMAIN (sluice has no reverse view of anything);
 *   - ANY and the other meta types (AXFR, IXFR, ...): NOTIMP;
 *   - any other type (HTTPS, SVCB, MX, TXT, ...): NODATA, so clients fall
 *     back to A/AAAA (sluice does not pass through records it cannot check).
 * A name that does not exist upstream is NXDOMAIN; a resolver failure SERVFAIL.
 * Classes other than IN get REFUSED; opcodes other than QUERY NOTIMP; EDNS
 * versions other than 0 BADVERS; a readable header with an unreadable body
 * FORMERR; anything else (including responses, which could start a loop) is
 * dropped.
 *
 * Sizes are bounded: queries up to 4 KiB; UDP answers up to 512 bytes, or
 * the client's EDNS0 size capped at 1232, past which the answer is sent empty
 * with TC set so the client retries over TCP; TCP uses 2-byte length framing
 * (so at most 64 KiB a message), answers pipelined queries in order, and
 * closes a connection idle for 10 s. In-flight UDP queries and open TCP
 * connections are capped; past the caps, datagrams are dropped (clients
 * retry) and connections closed.
 *
 * UDP goes through `Deno.listenDatagram`, which Deno 2.9.6 only exposes with
 * the `net` unstable feature (deno.json enables it, and `deno compile` keeps
 * it). Without it, `node:dgram` (no flag needed) is used instead.
 *
 * Why one file of ~630 lines: UDP and TCP transports share one query path (decide, resolve,
 * audit) and its limits; the codec and the policy are separate modules (wire.ts, policy.ts).
 *
 * @module
 */
import type { OutcomeCode } from "../../policy/outcomes.ts";
import { formatHostPort } from "../../policy/address.ts";
import type { Ip } from "../../policy/address.ts";
import { unmapIp } from "../../policy/address.ts";
import type { CompiledPolicy } from "../../policy/compile.ts";
import { refuseNameWithPlaceholder } from "../../policy/plan.ts";
import type { PlaceholderScanner } from "../../policy/placeholders.ts";
import type { Credential } from "../../policy/types.ts";
import type { AuditSink } from "../ops/audit.ts";
import { dnsAnswerable } from "./policy.ts";
import {
  buildResponse,
  CLASS_IN,
  type DnsAnswer,
  type DnsQuestion,
  parseQuery,
  QTYPE,
  RCODE,
  TCP_MAX_SIZE,
  udpLimit,
} from "./wire.ts";
import { ResolveError, type Resolver } from "../upstream/resolver.ts";

/** How the DNS server is set up. */
export type DnsServerOptions = {
  hostname: string;
  /** 0 picks a free port, the same one for UDP and TCP when possible. */
  port: number;
  /** The policy in force, read per query so a reload applies at once. */
  policy: () => CompiledPolicy;
  resolver: Resolver;
  audit: AuditSink;
  /** Called with every address set resolved for an allowed name (to feed netfilter sets). */
  onResolved?: (name: string, ips: Ip[]) => void;
  /**
   * The placeholder scanner of the credentials in force (the broker's), read per query. Unset:
   * no credentials, nothing to look for.
   */
  scanner?: () => PlaceholderScanner;
  /**
   * Told of every question refused for carrying a credential's placeholder, after it was
   * answered: count it (`sluice_credential_violations_total`) and apply `on_violation`.
   */
  onViolation?: (credential: Credential, name: string) => void;
  /** TTL of answers, in seconds. Default 30. */
  ttlSeconds?: number;
  /** How long a TCP connection may stay idle (ms). Default 10 000. */
  tcpIdleMs?: number;
  /** How long one upstream resolution may take before SERVFAIL (ms). Default 5 000. */
  resolveTimeoutMs?: number;
  /** Queries being answered at once over UDP before new datagrams are dropped. Default 1024. */
  maxInflight?: number;
  /** Open TCP connections before new ones are closed at once. Default 256. */
  maxTcpConnections?: number;
  /** Which UDP implementation to use; "auto" prefers Deno.listenDatagram. For tests. */
  udpBackend?: "auto" | "deno" | "node";
};

/** A running DNS server. */
export type DnsServer = {
  udpAddr: Deno.NetAddr;
  tcpAddr: Deno.NetAddr;
  /** Stops listening, closes TCP connections and waits for the loops to end. */
  close(): Promise<void>;
};

/** What one message came over, for the audit line. */
export type DnsPeer = { transport: "udp" | "tcp"; client: string };

/** The parts of the server options that answering one message needs. */
export type DnsHandlerDeps = Pick<
  DnsServerOptions,
  | "policy"
  | "resolver"
  | "audit"
  | "onResolved"
  | "ttlSeconds"
  | "resolveTimeoutMs"
  | "scanner"
  | "onViolation"
>;

/** Audit line of a DNS decision. Until `AuditRecord` grows a "dns" event, it is cast. */
export type DnsAuditRecord = {
  event: "dns";
  client: string;
  transport: "udp" | "tcp";
  host: string;
  qtype: string;
  verdict: "allow" | "deny";
  code: OutcomeCode;
  reason: string;
  rule: string;
  rule_at: string;
  /** What the client got: NOERROR, NXDOMAIN, SERVFAIL, NOTIMP. */
  rcode: string;
  /** The addresses answered (A or AAAA, per the question). */
  addresses?: string[];
  /** The resolver's error code when resolution failed (ENOTFOUND, EAI_AGAIN, timeout). */
  error?: string;
  /** The credential whose placeholder the question carried. */
  violation?: string;
};

const META_TYPES = new Set([249, 250, QTYPE.IXFR, QTYPE.AXFR, 253, 254, QTYPE.ANY]);

const TYPE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(QTYPE).map(([k, v]) => [v, k]),
);
const RCODE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(RCODE).map(([k, v]) => [v, k]),
);

function typeName(t: number): string {
  return TYPE_NAMES[t] ?? `TYPE${t}`;
}

class Timeout extends Error {
  override name = "Timeout";
}

/**
 * Answers one DNS message: the whole server minus sockets. Never throws.
 *
 * @param msg the query, without TCP's length prefix
 * @param peer where it came from, for size limits and the audit line
 * @param deps the policy, resolver, audit sink and callbacks
 * @param inflight resolutions in progress, shared so an A and an AAAA query
 *   for one name cost one upstream lookup
 * @returns the response, or null when the message gets no answer
 */
export async function handleDnsMessage(
  msg: Uint8Array,
  peer: DnsPeer,
  deps: DnsHandlerDeps,
  inflight: Map<string, Promise<Ip[]>> = new Map(),
): Promise<Uint8Array | null> {
  const parsed = parseQuery(msg);
  if (parsed.kind === "drop") return null;
  const maxSize = peer.transport === "udp"
    ? udpLimit(parsed.kind === "formerr" ? undefined : parsed.edns)
    : TCP_MAX_SIZE;
  if (parsed.kind === "formerr") {
    return buildResponse({ header: parsed.header, rcode: RCODE.FORMERR, maxSize });
  }
  const { header, edns } = parsed;
  if (parsed.kind === "notimp") {
    return buildResponse({ header, rcode: RCODE.NOTIMP, edns, maxSize });
  }
  const question = parsed.question;
  const reply = (rcode: number, answers?: DnsAnswer[]): Uint8Array =>
    buildResponse({ header, rcode, question, answers, edns, maxSize });
  if (edns && edns.version !== 0) return reply(RCODE.BADVERS);
  if (question.qtype === QTYPE.OPT) {
    return buildResponse({ header, rcode: RCODE.FORMERR, edns, maxSize });
  }
  // Before the class, the type or the policy: a placeholder in a name is refused whatever else.
  if (refusePlaceholder(question, peer, deps)) return reply(RCODE.NXDOMAIN);
  if (question.qclass !== CLASS_IN) return reply(RCODE.REFUSED);
  if (META_TYPES.has(question.qtype)) return reply(RCODE.NOTIMP);
  try {
    return await answer(question, peer, deps, inflight, reply);
  } catch {
    // A bug or a broken dependency: the client gets a clean failure, not silence.
    return reply(RCODE.SERVFAIL);
  }
}

/**
 * Whether the question carries a credential's placeholder; if so it is audited (`violation`)
 * and reported, and the caller answers NXDOMAIN without asking anyone.
 */
function refusePlaceholder(question: DnsQuestion, peer: DnsPeer, deps: DnsHandlerDeps): boolean {
  const scanner = deps.scanner?.();
  if (!scanner) return false;
  const compiled = deps.policy();
  const named = refuseNameWithPlaceholder(compiled, scanner, question.name, 0, "DNS question");
  if (!named?.violation) return false;
  const d = named.decision;
  const line: DnsAuditRecord = {
    event: "dns",
    client: peer.client,
    transport: peer.transport,
    host: named.host ?? question.name,
    qtype: typeName(question.qtype),
    verdict: "deny",
    code: d.code,
    reason: d.reason,
    rule: d.rule.source,
    rule_at: d.rule.at,
    rcode: "NXDOMAIN",
    violation: named.violation.name,
  };
  deps.audit.write(line);
  try {
    deps.onViolation?.(named.violation, line.host);
  } catch {
    // A failing observer must not fail the answer.
  }
  return true;
}

async function answer(
  question: DnsQuestion,
  peer: DnsPeer,
  deps: DnsHandlerDeps,
  inflight: Map<string, Promise<Ip[]>>,
  reply: (rcode: number, answers?: DnsAnswer[]) => Uint8Array,
): Promise<Uint8Array> {
  const verdict = dnsAnswerable(deps.policy(), question.name);
  const record = (rcode: number, extra: Partial<DnsAuditRecord> = {}): void => {
    const line: DnsAuditRecord = {
      event: "dns",
      client: peer.client,
      transport: peer.transport,
      host: verdict.name ?? question.name,
      qtype: typeName(question.qtype),
      verdict: verdict.ok ? "allow" : "deny",
      code: verdict.code,
      reason: verdict.reason,
      rule: verdict.rule.source,
      rule_at: verdict.rule.at,
      rcode: RCODE_NAMES[rcode] ?? String(rcode),
      ...extra,
    };
    deps.audit.write(line);
  };
  if (!verdict.ok || !verdict.name) {
    record(RCODE.NXDOMAIN);
    return reply(RCODE.NXDOMAIN);
  }
  const family = question.qtype === QTYPE.A ? 4 : question.qtype === QTYPE.AAAA ? 6 : 0;
  if (family === 0) {
    const rcode = question.qtype === QTYPE.PTR ? RCODE.NXDOMAIN : RCODE.NOERROR;
    record(rcode);
    return reply(rcode);
  }
  let ips: Ip[];
  try {
    ips = await resolveShared(verdict.name, deps, inflight);
  } catch (e) {
    const code = e instanceof ResolveError ? e.code : e instanceof Timeout ? "timeout" : "EFAIL";
    // ENOTFOUND: the name does not exist; ENODATA: it exists without addresses.
    const rcode = code === "ENOTFOUND"
      ? RCODE.NXDOMAIN
      : code === "ENODATA"
      ? RCODE.NOERROR
      : RCODE.SERVFAIL;
    record(rcode, { error: code });
    return reply(rcode);
  }
  const ttl = deps.ttlSeconds ?? 30;
  const chosen = ips.map(unmapIp).filter((ip) => ip.family === family);
  const answers = chosen.map((ip): DnsAnswer => ({ type: question.qtype, ttl, data: ip.bytes }));
  record(RCODE.NOERROR, { addresses: chosen.map((ip) => ip.text) });
  return reply(RCODE.NOERROR, answers);
}

function resolveShared(
  name: string,
  deps: DnsHandlerDeps,
  inflight: Map<string, Promise<Ip[]>>,
): Promise<Ip[]> {
  const pending = inflight.get(name);
  if (pending) return pending;
  const limit = deps.resolveTimeoutMs ?? 5000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const p = Promise.race([
    deps.resolver.resolve(name),
    new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Timeout(`resolving ${name} took over ${limit} ms`)),
        limit,
      );
    }),
  ]).then((ips) => {
    try {
      deps.onResolved?.(name, ips);
    } catch {
      // A failing observer must not fail the lookup.
    }
    return ips;
  }).finally(() => {
    clearTimeout(timer);
    inflight.delete(name);
  });
  inflight.set(name, p);
  return p;
}

function formatPeer(addr: { hostname: string; port: number }): string {
  return formatHostPort(addr.hostname, addr.port);
}

// ---------------------------------------------------------------------------------------------
// UDP: Deno.listenDatagram when the runtime has it, node:dgram otherwise.

type UdpEndpoint = {
  addr: Deno.NetAddr;
  send(data: Uint8Array, to: Deno.NetAddr): Promise<void>;
  close(): Promise<void>;
};

type OnDatagram = (data: Uint8Array, from: Deno.NetAddr) => void;

type ListenDatagram = (
  opts: { transport: "udp"; hostname: string; port: number },
) => Deno.DatagramConn;

function denoListenDatagram(): ListenDatagram | undefined {
  return (Deno as unknown as { listenDatagram?: ListenDatagram }).listenDatagram;
}

function openDenoUdp(
  listen: ListenDatagram,
  hostname: string,
  port: number,
  on: OnDatagram,
): UdpEndpoint {
  const conn = listen({ transport: "udp", hostname, port });
  let closed = false;
  const loop = (async () => {
    const buf = new Uint8Array(65536);
    let errors = 0;
    while (!closed) {
      let got: [Uint8Array, Deno.Addr];
      try {
        got = await conn.receive(buf);
        errors = 0;
      } catch {
        // A closed socket ends the loop; a transient error is skipped, a broken socket is not spun on.
        if (closed || ++errors > 100) return;
        continue;
      }
      on(got[0].slice(), got[1] as Deno.NetAddr);
    }
  })();
  return {
    addr: conn.addr as Deno.NetAddr,
    async send(data, to) {
      await conn.send(data, { transport: "udp", hostname: to.hostname, port: to.port });
    },
    async close() {
      closed = true;
      try {
        conn.close();
      } catch {
        // already closed
      }
      await loop;
    },
  };
}

async function openNodeUdp(hostname: string, port: number, on: OnDatagram): Promise<UdpEndpoint> {
  const dgram = await import("node:dgram");
  const socket = dgram.createSocket({ type: hostname.includes(":") ? "udp6" : "udp4" });
  await new Promise<void>((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(port, hostname, () => {
      socket.off("error", reject);
      resolve();
    });
  });
  // Errors after bind (a failed send) concern one datagram, not the server.
  socket.on("error", () => {});
  socket.on("message", (msg, rinfo) => {
    on(new Uint8Array(msg.buffer, msg.byteOffset, msg.length).slice(), {
      transport: "udp",
      hostname: rinfo.address,
      port: rinfo.port,
    });
  });
  const a = socket.address();
  return {
    addr: { transport: "udp", hostname: a.address, port: a.port },
    send(data, to) {
      return new Promise((resolve, reject) =>
        socket.send(data, to.port, to.hostname, (err) => err ? reject(err) : resolve())
      );
    },
    close() {
      return new Promise((resolve) => {
        try {
          socket.close(() => resolve());
        } catch {
          resolve();
        }
      });
    },
  };
}

function openUdp(
  backend: "auto" | "deno" | "node",
  hostname: string,
  port: number,
  on: OnDatagram,
): Promise<UdpEndpoint> {
  const listen = denoListenDatagram();
  if (backend === "deno" && !listen) {
    throw new Error(
      'Deno.listenDatagram is not available: run with --unstable-net (or `unstable: ["net"]` ' +
        'in deno.json), or use udpBackend "node"',
    );
  }
  if (backend !== "node" && listen) return Promise.resolve(openDenoUdp(listen, hostname, port, on));
  return openNodeUdp(hostname, port, on);
}

// ---------------------------------------------------------------------------------------------
// TCP: 2-byte length framing (RFC 1035 4.2.2, RFC 7766).

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

async function serveTcpConn(
  conn: Deno.Conn,
  idleMs: number,
  handle: (msg: Uint8Array) => Promise<Uint8Array | null>,
): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      try {
        conn.close();
      } catch {
        // already closed
      }
    }, idleMs);
  };
  // Room for one whole frame plus its prefix: the framing bounds every message.
  const buf = new Uint8Array(2 + TCP_MAX_SIZE);
  let have = 0;
  const fill = async (need: number): Promise<boolean> => {
    while (have < need) {
      const n = await conn.read(buf.subarray(have));
      if (n === null) return false;
      have += n;
      arm();
    }
    return true;
  };
  try {
    arm();
    for (;;) {
      if (!(await fill(2))) return;
      const len = (buf[0] << 8) | buf[1];
      if (len === 0) return;
      if (!(await fill(2 + len))) return;
      const msg = buf.slice(2, 2 + len);
      buf.copyWithin(0, 2 + len, have);
      have -= 2 + len;
      // Time spent resolving is not idleness.
      clearTimeout(timer);
      const out = await handle(msg);
      if (!out) return; // not a query: nothing sensible can follow on this stream
      const framed = new Uint8Array(2 + out.length);
      framed[0] = out.length >> 8;
      framed[1] = out.length & 0xff;
      framed.set(out, 2);
      await writeAll(conn, framed);
      arm();
    }
  } catch {
    // The peer went away, or the idle timer closed the connection.
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}

/**
 * Starts the DNS server on UDP and TCP.
 *
 * @param opts where to listen, the policy, the upstream resolver and the audit sink
 * @returns the bound addresses and a `close()`
 * @throws {Deno.errors.AddrInUse} and other listen errors, as the runtime raises them
 */
export async function startDnsServer(opts: DnsServerOptions): Promise<DnsServer> {
  const inflight = new Map<string, Promise<Ip[]>>();
  const maxInflight = opts.maxInflight ?? 1024;
  const maxConns = opts.maxTcpConnections ?? 256;
  const idleMs = opts.tcpIdleMs ?? 10_000;
  const tasks = new Set<Promise<void>>();
  const track = (p: Promise<void>): void => {
    tasks.add(p);
    p.finally(() => tasks.delete(p));
  };
  let udpBusy = 0;
  let udp: UdpEndpoint | undefined;
  const onDatagram: OnDatagram = (data, from) => {
    if (udpBusy >= maxInflight) return;
    udpBusy++;
    track((async () => {
      try {
        const peer: DnsPeer = { transport: "udp", client: formatPeer(from) };
        const out = await handleDnsMessage(data, peer, opts, inflight);
        if (out && udp) await udp.send(out, from);
      } catch {
        // The client went away or the server is closing.
      } finally {
        udpBusy--;
      }
    })());
  };

  // With port 0, find one port free for both transports: clients configured
  // with a DNS server expect TCP on the UDP port.
  let tcp: Deno.TcpListener | undefined;
  for (let attempt = 0; !tcp; attempt++) {
    udp = await openUdp(opts.udpBackend ?? "auto", opts.hostname, opts.port, onDatagram);
    try {
      tcp = Deno.listen({ transport: "tcp", hostname: opts.hostname, port: udp.addr.port });
    } catch (e) {
      await udp.close();
      if (opts.port !== 0 || attempt >= 20 || !(e instanceof Deno.errors.AddrInUse)) throw e;
    }
  }
  const tcpListener = tcp;
  const conns = new Set<Deno.Conn>();
  const acceptLoop = (async () => {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await tcpListener.accept();
      } catch (e) {
        if (e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted) return;
        continue; // EMFILE and friends: this connection failed, the listener did not
      }
      if (conns.size >= maxConns) {
        conn.close();
        continue;
      }
      conns.add(conn);
      const peer: DnsPeer = {
        transport: "tcp",
        client: formatPeer(conn.remoteAddr as Deno.NetAddr),
      };
      track(
        serveTcpConn(conn, idleMs, (msg) => handleDnsMessage(msg, peer, opts, inflight))
          .finally(() => conns.delete(conn)),
      );
    }
  })();

  const endpoint = udp!;
  let closing: Promise<void> | undefined;
  return {
    udpAddr: endpoint.addr,
    tcpAddr: tcpListener.addr,
    close() {
      closing ??= (async () => {
        try {
          tcpListener.close();
        } catch {
          // already closed
        }
        for (const c of conns) {
          try {
            c.close();
          } catch {
            // already closed
          }
        }
        await endpoint.close();
        await acceptLoop;
        await Promise.allSettled([...tasks]);
      })();
      return closing;
    },
  };
}
