/**
 * Every request a plain-HTTP client sends, checked by sluice before Deno's server reads it.
 *
 * sluice parses the first request head of an explicit-proxy connection itself (strictly, in
 * `http_head.ts`), but the connection then goes to Deno's HTTP server through the loopback hop,
 * and every later request on it, and every request on a transparent port-80 connection, would
 * be parsed by Deno alone. Deno 2.9.6's server (hyper) is lenient where sluice is strict, and
 * answers bad input without a word to sluice (measured, see test/lib/request_stream_test.ts):
 *   - bare LF line endings: accepted, and the request forwarded;
 *   - obs-fold, Content-Length with Transfer-Encoding, conflicting Content-Lengths: a bare
 *     `400` of its own (no `x-sluice-decision`, no audit line);
 *   - a malformed chunked body: the connection closed with no response and no audit line when
 *     the bad chunk arrives with the head, a 502 (`upstream-protocol`) when it arrives later;
 *   - a Host that is not a valid URL host (`a%00.test`, `[::1%25lo]`): the request handler's
 *     `new URL(req.url)` throws, and the client reads a 500 "internal error", unaudited;
 *   - HTTP/1.0 without Host: decided as `localhost:<the internal listener's port>`.
 * Inside intercepted TLS Deno's server is the only parser (sluice never sees the plaintext
 * bytes), so these checks cover plain HTTP only.
 *
 * Three layers:
 *   - {@link RequestStreamChecker}: sans-I/O. Bytes in, bytes that may pass (whole checked
 *     heads, body bytes within their framing) or one refusal out.
 *   - {@link checkedRequestStream}: wraps the client connection for the hop's splice, so the
 *     internal server only ever reads what the checker passed; on a refusal it answers the
 *     client itself and ends the connection.
 *   - {@link streamRefusalResponder}: the refusal's audit line, metrics and response.
 *
 * Why one file of ~680 lines: the checker is one state machine over the byte stream (heads,
 * body framing, upgrades) whose verdict must not depend on how the input is split; the
 * responder beside it turns its refusals into responses and audit lines.
 *
 * @module
 */
import { concatBytes } from "../bytes.ts";
import { parseDestinationHost } from "../../policy/decide.ts";
import { refuseNameWithPlaceholder } from "../../policy/plan.ts";
import type { AuditRecord } from "../ops/audit.ts";
import type { ProxyContext } from "../gateway/context.ts";
import { ChunkedDecoder } from "../http1/response.ts";
import {
  DEFAULT_MAX_HEADER_BYTES,
  framing,
  headerValue,
  parseRequestHead,
  type RequestHead,
} from "../http1/request.ts";
import { rawDenial, rawError } from "../exchange/respond.ts";
import type { Duplex } from "./splice.ts";
import type { HopMeta } from "./terminator.ts";

/** Why a request stream was refused: the status to answer, a reason code and a sentence. */
export type StreamRefusal = {
  kind: "refuse";
  status: 400 | 414 | 431 | 501 | 505;
  code: "invalid-request" | "invalid-host";
  reason: string;
  /** The refused request's head, when it parsed. */
  head?: RequestHead;
  /** The host the request names, as sent (without port), when the head parsed. */
  host?: string;
  /** The port the request names, when the head parsed and named one validly. */
  port?: number;
  /**
   * Whether bytes of the refused request were passed on before (its head and part of its body,
   * then a malformed chunk): the internal server may have started on it.
   */
  started: boolean;
};

/** What {@link RequestStreamChecker.push} decided about the bytes it was given. */
export type StreamStep =
  | {
    kind: "pass";
    /** The bytes that may go on, in order (views of the input or of held bytes). */
    bytes: Uint8Array[];
    /**
     * Set after a request that may switch protocols (an Upgrade, a CONNECT): nothing more is
     * checked or passed until {@link RequestStreamChecker.outcome} says how it was answered.
     */
    wait?: "outcome";
  }
  | StreamRefusal;

type State =
  | { s: "head" }
  | { s: "length"; left: number }
  | { s: "chunked"; decoder: ChunkedDecoder }
  | { s: "outcome"; on: "101" | "2xx" }
  | { s: "raw" }
  | { s: "refused"; refusal: StreamRefusal };

/** Limits of {@link RequestStreamChecker}. */
export type StreamLimits = {
  /** Largest request head (431 beyond). Default {@link DEFAULT_MAX_HEADER_BYTES}. */
  maxHeaderBytes?: number;
};

const EMPTY = new Uint8Array(0);
const LF = 0x0a;

/**
 * Checks a client's byte stream of HTTP/1.1 requests: every head strictly (the rules of
 * `parseRequestHead`: CRLF only, no obs-fold, no conflicting framing), the host every request
 * names (it must be one a URL can hold and sluice can route), and every body within its framing
 * (a chunked body chunk by chunk). Pure: no I/O.
 *
 * A head is held until it is complete and checked, so the server behind never reads part of a
 * head that is then refused; body bytes pass as they are checked (bodies stream). After a
 * request that may switch protocols (`Upgrade`, `CONNECT`) nothing passes until
 * {@link outcome} says whether it did: a `101` (or a 2xx to CONNECT) leaves the rest unchecked
 * (WebSocket frames are not HTTP); anything else goes on checking heads.
 *
 * Once it refuses, it refuses every later push the same way.
 *
 * @example
 * ```ts
 * import { RequestStreamChecker } from "./request_stream.ts";
 * const c = new RequestStreamChecker();
 * const enc = new TextEncoder();
 * c.push(enc.encode("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")).kind; // "pass"
 * c.push(enc.encode("GET / HTTP/1.1\nHost: a.test\n\n")).kind; // "refuse"
 * ```
 */
export class RequestStreamChecker {
  #state: State = { s: "head" };
  /** Bytes of an incomplete head, or bytes that arrived while waiting for an outcome. */
  #held: Uint8Array = EMPTY;
  /**
   * Bytes of an incomplete head that arrived since it was last parsed, none with an LF. A head
   * can only end at an LF, so a head that grows without one is parsed again only when it has
   * doubled: a client dripping a 32 KiB head byte by byte costs a few parses, not 32,768.
   * Garbage is still refused early, just not byte by byte.
   */
  #more: Uint8Array[] = [];
  #moreBytes = 0;
  readonly #maxHeaderBytes: number;
  /** Whether the request being read had its head passed on in an earlier push. */
  #headPassedEarlier = false;
  /** The head of the request being read (for a refusal of its body). */
  #head: RequestHead | undefined;
  #requests = 0;
  readonly #sink: Uint8Array[] = [];

  /** @param limits the head size bound */
  constructor(limits: StreamLimits = {}) {
    this.#maxHeaderBytes = limits.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES;
  }

  /** Request heads passed so far. */
  get requests(): number {
    return this.#requests;
  }

  /** Bytes held back: an incomplete head (or bytes waiting for an outcome). */
  get holding(): number {
    return this.#held.length + this.#moreBytes;
  }

  /** Whether the stream switched protocols: bytes pass unchecked. */
  get switched(): boolean {
    return this.#state.s === "raw";
  }

  /**
   * Checks the next bytes the client sent.
   *
   * @param input the bytes; views of it may be returned, so do not reuse its buffer before the
   *   returned bytes have been consumed
   * @returns the bytes that may pass now, or the refusal
   */
  push(input: Uint8Array): StreamStep {
    const st = this.#state;
    if (st.s === "refused") return st.refusal;
    if (st.s === "raw") return { kind: "pass", bytes: input.length ? [input] : [] };
    if (st.s === "outcome") {
      this.#held = concatBytes([this.#held, input]);
      return { kind: "pass", bytes: [], wait: "outcome" };
    }
    const step = this.#run(input);
    // Whatever request is in progress now had its head passed in this push or before.
    if (step.kind === "pass") this.#headPassedEarlier = this.#state.s !== "head";
    return step;
  }

  /**
   * How the request that may switch protocols was answered.
   *
   * @param status the status code of the first response that followed it
   * @returns what may pass of the bytes that arrived meanwhile, or the refusal
   */
  outcome(status: number): StreamStep {
    const st = this.#state;
    if (st.s !== "outcome") return { kind: "pass", bytes: [] };
    const held = this.#held;
    this.#held = EMPTY;
    const switched = st.on === "101" ? status === 101 : status >= 200 && status < 300;
    if (switched) {
      this.#state = { s: "raw" };
      return { kind: "pass", bytes: held.length ? [held] : [] };
    }
    this.#state = { s: "head" };
    return this.push(held);
  }

  #refuse(
    status: StreamRefusal["status"],
    code: StreamRefusal["code"],
    reason: string,
    extra: Partial<StreamRefusal> = {},
  ): StreamRefusal {
    const refusal: StreamRefusal = {
      kind: "refuse",
      status,
      code,
      reason,
      started: false,
      ...extra,
    };
    this.#state = { s: "refused", refusal };
    this.#held = EMPTY;
    this.#more = [];
    return refusal;
  }

  #run(input: Uint8Array): StreamStep {
    const out: Uint8Array[] = [];
    let data = input;
    if (this.#held.length) {
      const size = this.#held.length + this.#moreBytes + input.length;
      if (
        input.indexOf(LF) < 0 && size < this.#maxHeaderBytes &&
        this.#moreBytes + input.length < this.#held.length
      ) {
        this.#more.push(input.slice());
        this.#moreBytes += input.length;
        return { kind: "pass", bytes: [] };
      }
      data = concatBytes([this.#held, ...this.#more, input]);
      this.#held = EMPTY;
      this.#more = [];
      this.#moreBytes = 0;
    }
    let off = 0;
    let headHere = false;
    while (off < data.length) {
      const st = this.#state;
      if (st.s === "head") {
        const rest = data.subarray(off);
        const r = parseRequestHead(rest, { maxHeaderBytes: this.#maxHeaderBytes });
        if (r.kind === "incomplete") {
          this.#held = rest.slice();
          break;
        }
        if (r.kind === "invalid") return this.#refuse(r.status, "invalid-request", r.reason);
        const head = r.head;
        const named = requestAuthority(head);
        if ("invalid" in named) {
          return this.#refuse(400, "invalid-host", named.invalid, {
            head,
            host: named.host,
            port: named.port,
          });
        }
        out.push(rest.subarray(0, head.headerBytes));
        off += head.headerBytes;
        this.#head = head;
        headHere = true;
        this.#requests++;
        const f = framing(head);
        if (head.method === "CONNECT" || headerValue(head, "upgrade") !== undefined) {
          // A body would be read by whoever the connection is switched to; none is expected.
          if (f.kind !== "none" && !(f.kind === "length" && f.length === 0)) {
            return this.#refuse(
              400,
              "invalid-request",
              "a request that switches protocols has a body",
              {
                head,
                host: named.host,
                port: named.port,
              },
            );
          }
          this.#state = { s: "outcome", on: head.method === "CONNECT" ? "2xx" : "101" };
          this.#held = data.slice(off);
          return { kind: "pass", bytes: out, wait: "outcome" };
        }
        this.#state = f.kind === "chunked"
          ? { s: "chunked", decoder: new ChunkedDecoder() }
          : f.kind === "length" && f.length > 0
          ? { s: "length", left: f.length }
          : { s: "head" };
        continue;
      }
      if (st.s === "length") {
        const take = Math.min(st.left, data.length - off);
        out.push(data.subarray(off, off + take));
        off += take;
        st.left -= take;
        if (st.left === 0) this.#state = { s: "head" };
        continue;
      }
      if (st.s === "chunked") {
        const body = data.subarray(off);
        const r = st.decoder.decode(body, this.#sink);
        this.#sink.length = 0;
        if (r.kind === "invalid") {
          const head = this.#head;
          const named = head ? requestAuthority(head) : undefined;
          return this.#refuse(400, "invalid-request", `malformed chunked body: ${r.reason}`, {
            head,
            host: named?.host,
            port: named?.port,
            started: !headHere && this.#headPassedEarlier,
          });
        }
        out.push(body.subarray(0, r.consumed));
        off += r.consumed;
        if (r.done) this.#state = { s: "head" };
        continue;
      }
      break; // unreachable: the other states return before the loop
    }
    return { kind: "pass", bytes: out };
  }
}

/** A value for a reason sentence: quoted, and cut short so an audit line stays bounded. */
function quote(s: string): string {
  return JSON.stringify(s.length > 200 ? s.slice(0, 200) + "..." : s);
}

/**
 * The host and port a request names, where Deno's server and sluice's request stage will read
 * them: the target of absolute-form and CONNECT requests, otherwise the Host header (Deno builds
 * the request URL from it). `invalid` when no URL can hold it, when it is no valid host for
 * sluice to route, or when there is none at all (HTTP/1.0 without Host).
 */
function requestAuthority(
  head: RequestHead,
): { host: string; port?: number } | { invalid: string; host?: string; port?: number } {
  const target = head.target;
  let authority: string;
  let where: string;
  if (head.method === "CONNECT") {
    authority = target;
    where = "CONNECT target";
  } else if (target.charCodeAt(0) === 0x2f || target === "*") {
    const host = headerValue(head, "host");
    if (host === undefined || host === "") {
      return { invalid: "the request names no host: no Host header, and not an absolute URL" };
    }
    authority = host;
    where = "Host header";
  } else {
    const url = URL.parse(target);
    if (!url || url.host === "") {
      // For the audit line: the authority as written, when one can be picked out.
      const m = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/([^/?#@]*)/.exec(target);
      const named = m ? /^(\[[^\]]*\]|[^:]*)(?::(\d{1,5}))?$/.exec(m[1]) : null;
      return {
        invalid: `the request-target ${quote(target)} is not a URL with a valid host`,
        host: named?.[1] || undefined,
        port: named?.[2] && Number(named[2]) <= 65535 ? Number(named[2]) : undefined,
      };
    }
    authority = url.host;
    where = "request-target";
  }
  const m = /^(\[[^\]]*\]|[^:]*)(?::(\d*))?$/.exec(authority);
  const host = m ? m[1] : authority;
  const port = m?.[2] ? Number(m[2]) : undefined;
  const known = { host, port: port !== undefined && port <= 65535 ? port : undefined };
  // What Deno's server does with it (the request URL), then what sluice needs of it.
  if (!m || host === "" || (port !== undefined && port > 65535)) {
    return { invalid: `the ${where} ${quote(authority)} is not host[:port]`, ...known };
  }
  if (!URL.parse(`http://${authority}/`)) {
    return {
      invalid: `the ${where} names ${quote(authority)}, which is not a valid host`,
      ...known,
    };
  }
  const parsed = parseDestinationHost(host.startsWith("[") ? host.slice(1, -1) : host);
  if (parsed.kind === "invalid") {
    return { invalid: `the ${where} names an invalid host: ${parsed.reason}`, ...known };
  }
  return known;
}

// ---------------------------------------------------------------------------------------------
// The client connection, checked.

/** What {@link checkedRequestStream} is told and asks. */
export type CheckedStreamOptions = StreamLimits & {
  /**
   * Told of every read from the client, before any of it may pass: a head held until it is
   * complete is activity too (a deadline that watches for the start of a head needs to know).
   */
  onInput?: () => void;
  /**
   * Called once, when the stream is refused: record it (audit, metrics) and return the response
   * to send, or undefined to send none. `answer` is false when a response to the refused
   * request had already begun (then nothing more can be said on this connection).
   */
  refused(refusal: StreamRefusal, answer: boolean): Uint8Array | undefined;
};

/** Ends the hop's splice once a refusal has been answered (both sides are then closed). */
export class StreamRefusedError extends Error {
  /** @param refusal what was refused */
  constructor(readonly refusal: StreamRefusal) {
    super(`request refused: ${refusal.reason}`);
    this.name = "StreamRefusedError";
  }
}

/**
 * Wraps a plain-HTTP client connection for the hop's splice: reads pass only the bytes a
 * {@link RequestStreamChecker} let through (so the internal server reads nothing else), and
 * writes (the server's responses) go to the client and tell the checker how a protocol switch
 * was answered.
 *
 * On a refusal it stops passing bytes, lets a response write in progress finish, sends the
 * refusal's answer (unless the refused request's response had begun), and fails the read, which
 * makes the splice close both sides. A client pipelining requests behind the refused one loses
 * their responses: the connection ends at the refusal.
 *
 * @param client the accepted client connection
 * @param first bytes already read from it (checked first, before any read)
 * @param opts the head bound and the refusal callback
 * @returns the side of the splice that stands for the client
 */
export function checkedRequestStream(
  client: Duplex,
  first: Uint8Array | undefined,
  opts: CheckedStreamOptions,
): Duplex {
  return new CheckedClient(client, first, opts);
}

/** Bytes of a response head to collect before its status code is known. */
const STATUS_LINE_BYTES = 12;

class CheckedClient implements Duplex {
  readonly #client: Duplex;
  readonly #opts: CheckedStreamOptions;
  readonly #checker: RequestStreamChecker;
  #first: Uint8Array | undefined;
  /** Sized like the splice's own buffer (small while idle, large for bulk: see splice.ts). */
  #buf = EMPTY;
  #queue: Uint8Array[] = [];
  #closed = false;
  #refusing = false;
  /** Waiting for the status of the response to a request that may switch protocols. */
  #outcome: PromiseWithResolvers<void> | undefined;
  #status: Uint8Array = EMPTY;
  /** A refusal found while answering an outcome, for the next read to carry out. */
  #pending: StreamRefusal | undefined;
  #writing: Promise<unknown> = Promise.resolve();
  #down = 0;
  #downAtHead = 0;

  constructor(client: Duplex, first: Uint8Array | undefined, opts: CheckedStreamOptions) {
    this.#client = client;
    this.#opts = opts;
    this.#checker = new RequestStreamChecker(opts);
    this.#first = first?.length ? first : undefined;
  }

  async read(p: Uint8Array): Promise<number | null> {
    while (true) {
      if (this.#queue.length) return this.#take(p);
      if (this.#pending) return await this.#refuse(this.#pending);
      if (this.#closed) return null;
      if (this.#outcome) {
        // Not reading the client meanwhile: what it sends next waits in the kernel.
        await this.#outcome.promise;
        continue;
      }
      let input: Uint8Array;
      if (this.#first) {
        input = this.#first;
        this.#first = undefined;
      } else {
        if (this.#checker.switched) return await this.#client.read(p);
        // The buffer is reused: the checker keeps copies, and what it passes (views of the
        // input) is handed on before the next read.
        if (this.#buf.length !== p.length) this.#buf = new Uint8Array(p.length);
        const n = await this.#client.read(this.#buf);
        if (n === null) return null;
        this.#opts.onInput?.();
        input = this.#buf.subarray(0, n);
      }
      const before = this.#checker.requests;
      const step = this.#checker.push(input);
      if (step.kind === "refuse") return await this.#refuse(step);
      if (this.#checker.requests !== before) this.#downAtHead = this.#down;
      for (const b of step.bytes) if (b.length) this.#queue.push(b);
      if (step.wait) this.#outcome = Promise.withResolvers();
    }
  }

  #take(p: Uint8Array): number {
    const head = this.#queue[0];
    const n = Math.min(p.length, head.length);
    p.set(head.subarray(0, n));
    if (n === head.length) this.#queue.shift();
    else this.#queue[0] = head.subarray(n);
    return n;
  }

  async #refuse(r: StreamRefusal): Promise<never> {
    this.#pending = undefined;
    this.#refusing = true;
    this.#queue = [];
    // A response write in progress finishes first: the answer must not cut into it.
    await this.#writing.catch(() => {});
    const answer = !r.started || this.#down === this.#downAtHead;
    let bytes: Uint8Array | undefined;
    try {
      bytes = this.#opts.refused(r, answer);
    } catch {
      bytes = undefined; // recording failed; the client still gets its answer below if any
    }
    if (bytes && answer) {
      try {
        let off = 0;
        while (off < bytes.length) off += await this.#client.write(bytes.subarray(off));
      } catch { /* the client left */ }
    }
    throw new StreamRefusedError(r);
  }

  write(p: Uint8Array): Promise<number> {
    // After a refusal the internal server's bytes (if any) are dropped: the answer is sluice's.
    if (this.#refusing) return Promise.resolve(p.length);
    if (this.#outcome) this.#learnOutcome(p);
    this.#down += p.length;
    const w = this.#client.write(p);
    this.#writing = w;
    return w;
  }

  #learnOutcome(p: Uint8Array): void {
    const need = STATUS_LINE_BYTES - this.#status.length;
    this.#status = concatBytes([this.#status, p.subarray(0, need)]);
    if (this.#status.length < STATUS_LINE_BYTES && !p.includes(0x0a)) return;
    const line = String.fromCharCode(...this.#status);
    this.#status = EMPTY;
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(line);
    this.#settleOutcome(m ? Number(m[1]) : 0);
  }

  /** The answer to the request that may switch protocols is known (0: none came). */
  #settleOutcome(status: number): void {
    const waiting = this.#outcome;
    if (!waiting) return;
    const step = this.#checker.outcome(status);
    if (step.kind === "refuse") this.#pending = step;
    else for (const b of step.bytes) if (b.length) this.#queue.push(b);
    this.#outcome = step.kind === "pass" && step.wait ? Promise.withResolvers() : undefined;
    waiting.resolve();
  }

  closeWrite(): Promise<void> {
    if (this.#refusing) return Promise.resolve();
    // The server is done writing: a switch it did not answer did not happen.
    this.#settleOutcome(0);
    return this.#client.closeWrite?.() ?? Promise.resolve();
  }

  close(): void {
    this.#closed = true;
    this.#outcome?.resolve();
    this.#client.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The refusal's record and answer.

const REASON_PHRASE: Record<StreamRefusal["status"], string> = {
  400: "Bad Request",
  414: "URI Too Long",
  431: "Request Header Fields Too Large",
  501: "Not Implemented",
  505: "HTTP Version Not Supported",
};

/**
 * The refusal callback for one plain hop: one audit line per refusal (a `request` record with
 * the status answered), the request metric, and the response: `400` (or the status the head
 * parser names) with `x-sluice-decision: error; code=invalid-request|invalid-host`. A host that
 * carries a credential's placeholder is a credential violation instead: `403`, audited with
 * `violation`, counted, and reported to `ctx.onViolation`, like every other name.
 *
 * @param ctx the proxy's shared state (audit, metrics, policy and broker in force)
 * @param meta the hop's connection: id, client, listener
 * @returns the callback for {@link CheckedStreamOptions.refused}
 */
export function streamRefusalResponder(
  ctx: ProxyContext,
  meta: HopMeta,
): (r: StreamRefusal, answer: boolean) => Uint8Array | undefined {
  const started = performance.now();
  return (r, answer) => {
    const port = r.port ?? meta.target?.port ?? 80;
    const record: AuditRecord = {
      event: "request",
      conn: meta.conn,
      client: meta.client,
      mode: meta.mode,
      tls: "none",
      method: r.head?.method,
      path: r.head ? pathOf(r.head.target) : undefined,
      host: r.host,
      port: r.head ? port : undefined,
      verdict: "deny",
      code: r.code,
      reason: r.reason,
      duration_ms: Math.round(performance.now() - started),
    };
    if (r.host !== undefined) {
      const named = refuseNameWithPlaceholder(
        ctx.policy(),
        ctx.broker().scanner,
        r.host,
        port,
        "host",
      );
      if (named?.violation) {
        const d = named.decision;
        const c = named.violation;
        ctx.metrics.violations.inc({ credential: c.name });
        ctx.onViolation?.(c, named.host ?? r.host);
        ctx.metrics.requests.inc({ verdict: "deny", mode: meta.mode });
        ctx.audit.write({
          ...record,
          host: named.host,
          code: d.code,
          reason: d.reason,
          rule: d.rule.source,
          rule_at: d.rule.at,
          violation: c.name,
          status: answer ? 403 : undefined,
        });
        return rawDenial(d);
      }
    }
    ctx.metrics.requests.inc({ verdict: "deny", mode: meta.mode });
    ctx.audit.write({ ...record, status: answer ? r.status : undefined });
    return rawError(r.status, REASON_PHRASE[r.status], r.code, r.reason);
  };
}

/** The path of a request-target, without its query (audit lines never hold queries). */
function pathOf(target: string): string | undefined {
  let path = target;
  if (target.charCodeAt(0) !== 0x2f && target !== "*") {
    const m = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*(\/[^?#]*)?/.exec(target);
    if (!m) return undefined;
    path = m[1] ?? "/";
  }
  const q = path.indexOf("?");
  return q < 0 ? path : path.slice(0, q);
}
