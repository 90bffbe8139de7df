/**
 * Limits and deadlines of the data path, in one place: what a client connection may cost, and
 * for how long, at every stage from accept to close.
 *
 * Every accepted connection gets a {@link Watch}: its current stage and the moment that stage
 * must be over. One coarse sweep (every `sweepMs`, at most 1 s) closes the connections whose
 * deadline has passed, instead of one timer per connection or per read. Stages driven by bytes
 * (the hop into the TLS terminator, a passthrough tunnel) hand the watch a {@link Clock} that
 * the byte pumps update with a timestamp and that the sweep asks for the deadline.
 *
 * The {@link ConnectionGuard} also admits connections: a cap per client address, and a global
 * cap whose last `reservedConnections` go only to clients holding few connections (the fewer
 * places are left, the fewer a client may hold to get one), so one client (or a few) cannot
 * take every connection from the rest. Refusals and the
 * deadlines that end abnormal stages are counted in metrics and audited, at most one line per
 * client, kind and second, with a count, so a flood cannot flood the audit log.
 *
 * The defaults are documented in docs/data-path.md ("Limits and deadlines"); `sluice serve
 * --limit NAME=VALUE` sets them (see {@link LIMIT_SETTINGS}).
 *
 * Why one file of ~800 lines: every limit, its default, the per-connection deadline record and
 * the one sweep that enforces them live together so a newcomer finds every limit here.
 *
 * @module
 */
import { formatHostPort } from "../../policy/address.ts";
import type { AuditRecord, AuditSink } from "../ops/audit.ts";
import type { Metrics } from "../ops/metrics.ts";
import { DECISION_HEADER } from "../exchange/respond.ts";
import { parseIp, unmapIp } from "../../policy/address.ts";

/** Timeouts and bounds; every one has a safe default (see {@link DEFAULT_LIMITS}). */
export type Limits = {
  /**
   * First bytes: a connection's TLS ClientHello (transparent HTTPS) or first request head
   * (explicit proxy, transparent HTTP) must be complete this long after accept (slowloris guard).
   */
  handshakeTimeoutMs: number;
  /** After `200 Connection established`, the tunnel's ClientHello (or plain request head) must be complete within this. */
  connectIdleMs: number;
  /** From the ClientHello to the decision carried out: name resolution and the upstream connect of a passthrough. */
  decideTimeoutMs: number;
  /** Interception: the client's side of the TLS handshake with sluice, from the replayed ClientHello. */
  tlsHandshakeTimeoutMs: number;
  /**
   * Each request head on an intercepted or hopped connection: the first one from the end of
   * the TLS handshake; later HTTP/1.1 ones from their first byte.
   */
  headTimeoutMs: number;
  /** A keep-alive connection with no request in progress and no byte moving for this long is closed. */
  keepAliveIdleMs: number;
  /**
   * A tunnel (passthrough splice, upgraded WebSocket) or a request in progress with no bytes
   * either way for this long is closed.
   */
  idleTimeoutMs: number;
  /** Largest request head accepted from a client. */
  maxHeaderBytes: number;
  /** Connections served at once; more are refused immediately. */
  maxConnections: number;
  /** Connections one client address (an IPv6 /64) may hold at once. */
  maxConnectionsPerClient: number;
  /**
   * The last this-many of `maxConnections` are a reserve for clients holding few connections:
   * inside it a client is admitted only while it holds fewer than
   * maxConnectionsPerClient * (maxConnections - held in all) / reservedConnections, so the
   * clients holding the most are refused first and the last place goes to a client holding none.
   */
  reservedConnections: number;
  /** Time to establish an upstream TCP connection. */
  connectTimeoutMs: number;
  /** Time for an upstream to send its response head. */
  upstreamHeaderTimeoutMs: number;
  /** How often deadlines are checked (also capped at a quarter of the shortest deadline): a deadline is enforced up to this late. */
  sweepMs: number;
};

/** Defaults chosen to be generous to real clients and short for stuck ones. */
export const DEFAULT_LIMITS: Limits = {
  handshakeTimeoutMs: 10_000,
  connectIdleMs: 10_000,
  decideTimeoutMs: 30_000,
  tlsHandshakeTimeoutMs: 10_000,
  headTimeoutMs: 10_000,
  keepAliveIdleMs: 60_000,
  idleTimeoutMs: 300_000,
  maxHeaderBytes: 32 * 1024,
  maxConnections: 4096,
  maxConnectionsPerClient: 256,
  reservedConnections: 512,
  connectTimeoutMs: 10_000,
  upstreamHeaderTimeoutMs: 60_000,
  sweepMs: 1_000,
};

/** How `--limit NAME=VALUE` names each limit, and what kind of value it takes. */
export const LIMIT_SETTINGS: readonly {
  name: string;
  key: keyof Limits;
  kind: "duration" | "count";
  min: number;
}[] = [
  { name: "first-bytes", key: "handshakeTimeoutMs", kind: "duration", min: 1 },
  { name: "connect", key: "connectIdleMs", kind: "duration", min: 1 },
  { name: "decide", key: "decideTimeoutMs", kind: "duration", min: 1 },
  { name: "tls-handshake", key: "tlsHandshakeTimeoutMs", kind: "duration", min: 1 },
  { name: "head", key: "headTimeoutMs", kind: "duration", min: 1 },
  { name: "keep-alive", key: "keepAliveIdleMs", kind: "duration", min: 1 },
  { name: "tunnel-idle", key: "idleTimeoutMs", kind: "duration", min: 1 },
  { name: "upstream-connect", key: "connectTimeoutMs", kind: "duration", min: 1 },
  { name: "upstream-head", key: "upstreamHeaderTimeoutMs", kind: "duration", min: 1 },
  { name: "sweep", key: "sweepMs", kind: "duration", min: 10 },
  { name: "connections", key: "maxConnections", kind: "count", min: 1 },
  { name: "per-client", key: "maxConnectionsPerClient", kind: "count", min: 1 },
  { name: "reserve", key: "reservedConnections", kind: "count", min: 0 },
  { name: "header-bytes", key: "maxHeaderBytes", kind: "count", min: 1024 },
];

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * Parses `--limit NAME=VALUE` flags: durations as `500ms`, `10s`, `5m`, `1h` (a bare number is
 * seconds), counts as integers.
 *
 * @throws {Error} naming the flag, and the valid names when the name is unknown
 */
export function parseLimitFlags(texts: readonly string[]): Partial<Limits> {
  const out: Partial<Limits> = {};
  for (const text of texts) {
    const eq = text.indexOf("=");
    const name = eq < 0 ? text : text.slice(0, eq);
    const value = eq < 0 ? "" : text.slice(eq + 1).trim();
    const setting = LIMIT_SETTINGS.find((s) => s.name === name.trim());
    if (!setting) {
      throw new Error(
        `--limit "${text}": unknown limit "${name}"; one of ${
          LIMIT_SETTINGS.map((s) => s.name).join(", ")
        } (docs/data-path.md, "Limits and deadlines")`,
      );
    }
    let n: number;
    if (setting.kind === "duration") {
      const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value);
      n = m ? Math.round(Number(m[1]) * UNITS[m[2] ?? "s"]) : NaN;
    } else {
      n = /^\d+$/.test(value) ? Number(value) : NaN;
    }
    if (!Number.isFinite(n) || n < setting.min || n > 2 ** 31) {
      throw new Error(
        `--limit "${text}": ${setting.name} takes ${
          setting.kind === "duration"
            ? "a duration such as 500ms, 10s or 5m"
            : `a whole number of at least ${setting.min}`
        }`,
      );
    }
    out[setting.key] = n;
  }
  return out;
}

/** Checks a set of limits for consistency. @throws {Error} */
export function checkLimits(l: Limits): void {
  if (l.reservedConnections >= l.maxConnections) {
    throw new Error(
      `--limit reserve (${l.reservedConnections}) must be below connections (${l.maxConnections})`,
    );
  }
}

/** The stages of a client connection, each with its own deadline. */
export type Stage =
  | "first-bytes"
  | "connect"
  | "decide"
  | "tls-handshake"
  | "head"
  | "keep-alive"
  | "request"
  | "tunnel";

/** Stages whose deadline ending a connection is abnormal, and so audited (rate-limited). */
const AUDITED_STAGES = new Set<Stage>([
  "first-bytes",
  "connect",
  "decide",
  "tls-handshake",
  "head",
]);

const STAGE_TEXT: Record<Stage, string> = {
  "first-bytes": "no complete ClientHello or request head after accept",
  connect: "no complete ClientHello or request head after the CONNECT was established",
  decide: "the connection decision (resolution, upstream connect) took too long",
  "tls-handshake": "the client did not complete its TLS handshake",
  head: "no complete request head",
  "keep-alive": "idle keep-alive connection",
  request: "a request in progress moved no byte",
  tunnel: "idle tunnel",
};

/** Which limit bounds each stage (for messages). */
const STAGE_LIMIT: Record<Stage, keyof Limits> = {
  "first-bytes": "handshakeTimeoutMs",
  connect: "connectIdleMs",
  decide: "decideTimeoutMs",
  "tls-handshake": "tlsHandshakeTimeoutMs",
  head: "headTimeoutMs",
  "keep-alive": "keepAliveIdleMs",
  request: "idleTimeoutMs",
  tunnel: "idleTimeoutMs",
};

/** A deadline computed from activity (bytes, requests) rather than set once. */
export interface Clock {
  /** The stage the connection is in now, as of the last {@link Clock.deadline} call. */
  readonly stage: Stage;
  /** When the current stage must be over (ms, on the guard's clock). */
  deadline(now: number): number;
}

/** The two byte directions of a splice, reported as they move. */
export interface Activity {
  /** Bytes moved from the client side (a) toward the other side (b). */
  up(): void;
  /** Bytes moved back toward the client. */
  down(): void;
}

/** Which listener a connection came in on. */
export type Mode = "explicit" | "transparent";

/** The deadline state of one client connection; the sweep closes it when its deadline passes. */
export class Watch {
  /** Tells an admitted connection's watch from a {@link Refusal}. */
  readonly kind = "admitted" as const;
  #stage: Stage = "first-bytes";
  #at = Infinity;
  #clock: Clock | undefined;
  /** The stage whose deadline closed the connection, once it has. */
  expired: Stage | undefined;

  constructor(
    /** The client address as its cap counts it (an IPv6 /64). */
    readonly key: string,
    /** The client's address as ip:port. */
    readonly client: string,
    readonly mode: Mode,
    readonly close: () => void,
    readonly now: () => number,
  ) {}

  /** Enters `stage`, which must be over within `ms`. */
  arm(stage: Stage, ms: number): void {
    this.#clock = undefined;
    this.#stage = stage;
    this.#at = this.now() + ms;
  }

  /** Hands the deadline to a clock driven by activity (see {@link HopClock}, {@link TunnelClock}). */
  follow(clock: Clock): void {
    this.#clock = clock;
  }

  /** The current stage. */
  get stage(): Stage {
    return this.#clock ? this.#clock.stage : this.#stage;
  }

  /** When the current stage must be over. */
  deadline(now: number): number {
    return this.#clock ? this.#clock.deadline(now) : this.#at;
  }
}

/** A tunnel's clock: closed after `idleMs` with no byte either way. */
export class TunnelClock implements Clock, Activity {
  readonly stage: Stage = "tunnel";
  #last: number;
  constructor(readonly idleMs: number, readonly now: () => number = Date.now) {
    this.#last = now();
  }
  up(): void {
    this.#last = this.now();
  }
  down(): void {
    this.#last = this.now();
  }
  deadline(): number {
    return this.#last + this.idleMs;
  }
}

/**
 * The clock of a connection handed to an internal HTTP server through the hop: it learns the
 * TLS handshake's end and each request head's start from the bytes the hop moves, and each
 * request's start and end from the request handler.
 *
 * - TLS handshake: from the hop's start (the ClientHello replayed) until the client sends bytes
 *   after the server has answered (its second flight): `tlsHandshakeTimeoutMs`.
 * - First request head: complete (the handler called) within `firstHeadMs` of the handshake's
 *   end (or of the hop's start, for plain HTTP).
 * - Later heads, HTTP/1.1: a client byte while no request is in progress and no response byte
 *   has followed it starts a head, which must be complete within `headTimeoutMs`. With HTTP/2
 *   a client sends frames (window updates, pings) that are not requests, so there the next
 *   request must merely start within the keep-alive deadline.
 * - Keep-alive: no request in progress and no byte down for `keepAliveIdleMs`.
 * - A request in progress (handler running, or a response body the handler reported as
 *   streaming) and an upgraded connection (101): `idleTimeoutMs` with no byte either way.
 */
export class HopClock implements Clock, Activity {
  stage: Stage;
  readonly #l: Limits;
  readonly #now: () => number;
  readonly #h2: boolean;
  readonly #firstHeadMs: number;
  readonly #start: number;
  #handshaking: boolean;
  #sawDown = false;
  #readyAt: number;
  #open = 0;
  #streaming = 0;
  #served = 0;
  #upgraded = false;
  #lastUp: number;
  #lastDown: number;
  #lastEnd = 0;
  #headStart = 0;

  constructor(
    limits: Limits,
    opts: { secure: boolean; h2: boolean; firstHeadMs: number; now?: () => number },
  ) {
    this.#l = limits;
    this.#now = opts.now ?? Date.now;
    this.#h2 = opts.h2;
    this.#firstHeadMs = opts.firstHeadMs;
    this.#start =
      this.#readyAt =
      this.#lastUp =
      this.#lastDown =
        this.#now();
    this.#handshaking = opts.secure;
    this.stage = opts.secure ? "tls-handshake" : "head";
  }

  up(): void {
    const t = this.#now();
    this.#lastUp = t;
    if (this.#handshaking) {
      if (this.#sawDown) {
        this.#handshaking = false;
        this.#readyAt = t;
      }
    } else if (this.#headStart === 0 && this.#open === 0 && this.#streaming === 0) {
      this.#headStart = t;
    }
  }

  down(): void {
    this.#lastDown = this.#now();
    this.#sawDown = true;
    // The server answered whatever the client sent: that was not (the start of) a head.
    if (this.#open === 0) this.#headStart = 0;
  }

  /** A request head is complete: the handler runs. */
  begin(): void {
    if (this.#handshaking) {
      this.#handshaking = false;
      this.#readyAt = this.#now();
    }
    this.#open++;
    this.#served++;
    this.#headStart = 0;
  }

  /** The handler returned (`status`), or threw (undefined). */
  end(status?: number): void {
    if (this.#open > 0) this.#open--;
    this.#lastEnd = this.#now();
    this.#headStart = 0;
    if (status === 101) this.#upgraded = true;
  }

  /** A response body is streaming after its handler returned (reported by the handler). */
  bodyStarted(): void {
    this.#streaming++;
  }

  /** That body has been sent (or abandoned). */
  bodyEnded(): void {
    if (this.#streaming > 0) this.#streaming--;
    this.#lastEnd = this.#now();
    this.#headStart = 0;
  }

  deadline(): number {
    const l = this.#l;
    const last = Math.max(this.#lastUp, this.#lastDown);
    if (this.#upgraded) {
      this.stage = "tunnel";
      return last + l.idleTimeoutMs;
    }
    if (this.#handshaking) {
      this.stage = "tls-handshake";
      return this.#start + l.tlsHandshakeTimeoutMs;
    }
    if (this.#open > 0 || this.#streaming > 0) {
      this.stage = "request";
      return last + l.idleTimeoutMs;
    }
    if (this.#served === 0) {
      this.stage = "head";
      return this.#readyAt + this.#firstHeadMs;
    }
    if (this.#headStart > 0 && !this.#h2) {
      this.stage = "head";
      return this.#headStart + l.headTimeoutMs;
    }
    this.stage = "keep-alive";
    return Math.max(this.#lastEnd, this.#lastDown) + l.keepAliveIdleMs;
  }
}

/** Every accepted connection's watch, by connection object (for stages that get only the conn). */
const watches = new WeakMap<object, Watch>();

/** The watch of an accepted connection, if a {@link ConnectionGuard} admitted it. */
export function watchOf(conn: object): Watch | undefined {
  return watches.get(conn);
}

/**
 * Lets a wrapper of an accepted connection (an adapter handed to `splice` or the terminator's
 * hop in its place) find that connection's watch, so its deadlines still apply.
 */
export function shareWatch(conn: object, wrapper: object): void {
  const w = watches.get(conn);
  if (w) watches.set(wrapper, w);
}

/**
 * The address a client's cap is counted on: IPv4 as it is, IPv6 by its /64 (one host can hold
 * a whole /64), IPv4-mapped IPv6 as IPv4.
 */
export function clientKey(hostname: string): string {
  const ip = parseIp(hostname);
  if (!ip) return hostname;
  const u = unmapIp(ip);
  if (u.family === 4) return u.text;
  const b = u.bytes;
  const hex = (i: number) => ((b[i] << 8) | b[i + 1]).toString(16);
  return `${hex(0)}:${hex(2)}:${hex(4)}:${hex(6)}::/64`;
}

/** Why a connection was refused at accept. */
export type Refusal = {
  kind: "refused";
  code: "limit-total" | "limit-per-client" | "limit-reserve";
  reason: string;
};

/** How often a kind of event is audited per client: one line, with a count, per window. */
export const AUDIT_WINDOW_MS = 1_000;
/** Distinct clients tracked by the rate-limited audit; beyond, events are counted together. */
const MAX_AUDIT_KEYS = 1024;
/** Refused connections kept open a moment so the client can read its 503; beyond, closed at once. */
const MAX_LINGERING = 1024;

type Pending = {
  record: AuditRecord;
  what: string;
  count: number;
  windowEnd: number;
};

/**
 * Audit lines for events a flood repeats (refusals, deadlines): the first of a kind per client
 * is written at once, the rest of each window as one line with their count.
 */
export class RateLimitedAudit {
  readonly #audit: AuditSink;
  readonly #pending = new Map<string, Pending>();
  constructor(audit: AuditSink) {
    this.#audit = audit;
  }

  /** Notes one event; `what` describes it, `${count} ${what}` reads as the reason. */
  note(key: string, now: number, record: AuditRecord, what: string): void {
    let p = this.#pending.get(key);
    if (!p && this.#pending.size >= MAX_AUDIT_KEYS) {
      key = `*|${record.code}`;
      record = { ...record, client: undefined, reason: "(from many clients) " + record.reason };
      p = this.#pending.get(key);
    }
    if (p) {
      p.count++;
      return;
    }
    this.#pending.set(key, { record, what, count: 0, windowEnd: now + AUDIT_WINDOW_MS });
    this.#write(record, 1, what, true);
  }

  /** Writes the counts of windows that have ended. */
  flush(now: number, all = false): void {
    for (const [key, p] of this.#pending) {
      if (!all && now < p.windowEnd) continue;
      if (p.count === 0) {
        this.#pending.delete(key);
        continue;
      }
      this.#write(p.record, p.count, p.what, false);
      p.count = 0;
      p.windowEnd = now + AUDIT_WINDOW_MS;
      if (all) this.#pending.delete(key);
    }
  }

  get size(): number {
    return this.#pending.size;
  }

  // The first of a series is written alone; each later line counts what its window added.
  #write(record: AuditRecord, count: number, what: string, first: boolean): void {
    this.#audit.write({
      ...record,
      reason: first
        ? `1 ${what}: ${record.reason}`
        : `${count} more ${what} within ${AUDIT_WINDOW_MS / 1000} s: ${record.reason}`,
    });
  }
}

/** Options of {@link ConnectionGuard}. */
export type GuardOptions = {
  limits: Limits;
  metrics?: Metrics;
  audit: AuditSink;
  now?: () => number;
};

/**
 * Admits connections under the caps, keeps every admitted connection's {@link Watch}, and runs
 * the one sweep that enforces their deadlines.
 */
export class ConnectionGuard {
  readonly #l: Limits;
  readonly #metrics?: Metrics;
  readonly #now: () => number;
  readonly #log: RateLimitedAudit;
  readonly #all = new Set<Watch>();
  readonly #perClient = new Map<string, number>();
  readonly #lingering = new Map<Deno.Conn, number>();
  readonly #sweepMs: number;
  #timer: ReturnType<typeof setInterval> | undefined;
  #closed = false;

  constructor(opts: GuardOptions) {
    this.#l = opts.limits;
    this.#metrics = opts.metrics;
    this.#now = opts.now ?? Date.now;
    this.#log = new RateLimitedAudit(opts.audit);
    const l = opts.limits;
    const shortest = Math.min(
      l.handshakeTimeoutMs,
      l.connectIdleMs,
      l.decideTimeoutMs,
      l.tlsHandshakeTimeoutMs,
      l.headTimeoutMs,
      l.keepAliveIdleMs,
      l.idleTimeoutMs,
    );
    this.#sweepMs = Math.max(10, Math.min(l.sweepMs, 1000, Math.floor(shortest / 4)));
  }

  /** Connections admitted and not yet released. */
  get size(): number {
    return this.#all.size;
  }

  /** Distinct client addresses holding connections. */
  get clients(): number {
    return this.#perClient.size;
  }

  /** How often the sweep runs (ms). */
  get sweepMs(): number {
    return this.#sweepMs;
  }

  /** Connections held now, by stage. */
  byStage(): Map<Stage, number> {
    const now = this.#now();
    const out = new Map<Stage, number>();
    for (const w of this.#all) {
      w.deadline(now); // brings a clock's stage up to date
      out.set(w.stage, (out.get(w.stage) ?? 0) + 1);
    }
    return out;
  }

  /** The watch of a connection this guard admitted. */
  watchOf(conn: object): Watch | undefined {
    return watches.get(conn);
  }

  /** Connections held now by one client address. */
  heldBy(hostname: string): number {
    return this.#perClient.get(clientKey(hostname)) ?? 0;
  }

  /**
   * Admits `conn` (its first-bytes deadline starts now) or says why not. The caller must
   * {@link release} an admitted connection's watch when it is done, and hand a refusal to
   * {@link refuse}.
   */
  admit(conn: Deno.Conn, mode: Mode): Watch | Refusal {
    const addr = conn.remoteAddr as Deno.NetAddr;
    const w = this.admitPeer(addr.hostname ?? "unknown", addr.port, mode, () => {
      try {
        conn.close();
      } catch { /* closed */ }
    });
    if (w.kind === "admitted") watches.set(conn, w);
    return w;
  }

  /**
   * {@link admit} for a connection sluice's JS does not hold (the direct path, direct.ts): known
   * by its peer address, closed through `close`.
   */
  admitPeer(hostname: string, port: number, mode: Mode, close: () => void): Watch | Refusal {
    const refusal = this.check(hostname);
    if (refusal) return refusal;
    const l = this.#l;
    const key = clientKey(hostname);
    const held = this.#perClient.get(key) ?? 0;
    const client = formatHostPort(hostname, port);
    const w = new Watch(key, client, mode, close, this.#now);
    w.arm("first-bytes", l.handshakeTimeoutMs);
    this.#all.add(w);
    this.#perClient.set(key, held + 1);
    this.#schedule();
    return w;
  }

  /** Why one more connection from `hostname` would be refused now; undefined if it would not. */
  check(hostname: string): Refusal | undefined {
    const l = this.#l;
    const key = clientKey(hostname);
    const held = this.#perClient.get(key) ?? 0;
    const total = this.#all.size;
    if (total >= l.maxConnections) {
      return {
        kind: "refused",
        code: "limit-total",
        reason:
          `sluice holds ${total} connections, its limit (--limit connections=${l.maxConnections})`,
      };
    }
    if (held >= l.maxConnectionsPerClient) {
      return {
        kind: "refused",
        code: "limit-per-client",
        reason:
          `${key} holds ${held} connections, the per-client limit (--limit per-client=${l.maxConnectionsPerClient})`,
      };
    }
    const open = l.maxConnections - l.reservedConnections;
    if (total >= open) {
      // In the reserve, the bar falls as the proxy fills: from the per-client limit where the
      // reserve starts to nothing at the cap. The clients holding the most are cut off first;
      // the last places go to clients holding none.
      const bar = l.maxConnectionsPerClient * (l.maxConnections - total) / l.reservedConnections;
      if (held >= bar) {
        return {
          kind: "refused",
          code: "limit-reserve",
          reason:
            `sluice holds ${total} of ${l.maxConnections} connections; the last ${l.reservedConnections} (--limit reserve) go to clients holding fewer than ${
              Math.ceil(bar)
            } now, and ${key} holds ${held}`,
        };
      }
    }
    return undefined;
  }

  /** The connection is over: its place (and its client's) is free again. */
  release(w: Watch): void {
    if (!this.#all.delete(w)) return;
    const n = (this.#perClient.get(w.key) ?? 1) - 1;
    if (n <= 0) this.#perClient.delete(w.key);
    else this.#perClient.set(w.key, n);
  }

  /**
   * Refuses a connection: counted, audited (rate-limited), and, when `respond` (an HTTP
   * listener), answered with a 503 naming the limit before it is closed.
   */
  refuse(conn: Deno.Conn, r: Refusal, mode: Mode, respond: boolean): void {
    const addr = conn.remoteAddr as Deno.NetAddr;
    this.noteRefusal(addr.hostname ?? "unknown", r, mode, respond);
    if (!respond || this.#lingering.size >= MAX_LINGERING || this.#closed) {
      closeQuietly(conn);
      this.#schedule();
      return;
    }
    this.#linger(conn, refusalResponse(r), this.#now());
  }

  /**
   * Counts and audits (rate-limited) a refusal; the caller closes the connection (and, when
   * `respond`, has answered it with a 503).
   */
  noteRefusal(hostname: string, r: Refusal, mode: Mode, respond: boolean): void {
    const now = this.#now();
    const key = clientKey(hostname);
    this.#metrics?.refused.inc({ code: r.code, mode });
    this.#log.note(`${r.code}|${key}`, now, {
      event: "connection",
      client: key,
      mode,
      verdict: "deny",
      code: r.code,
      reason: r.reason,
      status: respond ? 503 : undefined,
    }, respond ? "connection(s) refused with 503" : "connection(s) refused (closed)");
    this.#schedule();
  }

  // Writes the 503, half-closes, and drains what the client sends until it closes or the next
  // sweep: closing with its request unread would reset the connection, and the client could
  // lose the 503.
  #linger(conn: Deno.Conn, bytes: Uint8Array, now: number): void {
    this.#lingering.set(conn, now + Math.max(this.#sweepMs, 200));
    this.#schedule();
    (async () => {
      try {
        let off = 0;
        while (off < bytes.length) off += await conn.write(bytes.subarray(off));
        await conn.closeWrite();
        while (this.#lingering.has(conn) && (await conn.read(SCRATCH)) !== null) { /* drop */ }
      } catch { /* the client left, or the sweep closed it */ }
      if (this.#lingering.delete(conn)) closeQuietly(conn);
    })();
  }

  #schedule(): void {
    if (this.#timer !== undefined || this.#closed) return;
    this.#timer = setInterval(() => this.sweep(), this.#sweepMs);
  }

  /**
   * Closes every connection whose deadline has passed, the refused connections done
   * lingering, and writes the audit counts of windows that ended. Runs every `sweepMs` while
   * there is anything to watch.
   */
  sweep(now = this.#now()): void {
    for (const w of this.#all) {
      if (w.expired !== undefined) continue;
      if (now < w.deadline(now)) continue;
      this.#expire(w, now);
    }
    for (const [conn, at] of this.#lingering) {
      if (now >= at) {
        this.#lingering.delete(conn);
        closeQuietly(conn);
      }
    }
    this.#log.flush(now);
    if (this.#all.size === 0 && this.#lingering.size === 0 && this.#log.size === 0) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }

  #expire(w: Watch, now: number): void {
    const stage = w.stage;
    w.expired = stage;
    this.#metrics?.deadlines.inc({ stage });
    if (AUDITED_STAGES.has(stage)) {
      const ms = this.#l[STAGE_LIMIT[stage]];
      this.#log.note(`timeout-${stage}|${w.key}`, now, {
        event: "connection",
        client: w.key,
        mode: w.mode,
        verdict: "deny",
        code: "timeout",
        reason: `${STAGE_TEXT[stage]} within ${ms} ms (the ${stage} deadline)`,
      }, `connection(s) closed at the ${stage} deadline`);
    }
    w.close();
  }

  /** Stops the sweep, closes lingering refusals and writes the audit counts still pending. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    this.#timer = undefined;
    for (const conn of this.#lingering.keys()) closeQuietly(conn);
    this.#lingering.clear();
    this.#log.flush(this.#now(), true);
  }
}

const SCRATCH = new Uint8Array(4096);

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* closed */ }
}

/** The 503 an HTTP client gets when its connection is refused by a limit. */
export function refusalResponse(r: Refusal): Uint8Array {
  const body = `sluice refused this connection: ${r.reason}\n`;
  const len = new TextEncoder().encode(body).length;
  return new TextEncoder().encode(
    `HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n` +
      `${DECISION_HEADER}: deny; code=${r.code}\r\nretry-after: 1\r\n` +
      `content-length: ${len}\r\nconnection: close\r\n\r\n${body}`,
  );
}

/** {@link refusalResponse} as a Response, for a refusal made inside an HTTP server's handler. */
export function refusalHttpResponse(r: Refusal): Response {
  return new Response(`sluice refused this connection: ${r.reason}\n`, {
    status: 503,
    headers: {
      "content-type": "text/plain; charset=utf-8",
      [DECISION_HEADER]: `deny; code=${r.code}`,
      "retry-after": "1",
      connection: "close",
    },
  });
}
