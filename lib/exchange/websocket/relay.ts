/**
 * The message relay of a WebSocket upgrade, and {@link proxyWebSocket}, which runs the handshake
 * (handshake.ts) and starts it.
 *
 * WebSocket upgrades through sluice's HTTP stage: the client side is Deno's own server-side
 * WebSocket (`Deno.upgradeWebSocket`, message level), the upstream side is the raw connection
 * the pool hands over after `101 Switching Protocols`, spoken with the small RFC 6455 client
 * framing layer of frame.ts. Messages are relayed, not bytes: sluice sees (and may one day police)
 * every message, and each side's framing is validated by the side that terminates it.
 *
 * Why messages and not a byte splice: Deno's HTTP server gives no raw connection after an
 * upgrade, only the WebSocket object.
 *
 * Credential brokering ({@link WebSocketBrokering}, wired by lib/exchange/forward.ts): each message is
 * treated like a body. Upstream-to-client messages (text and binary), close reasons, the 101's
 * fields and a refusal's whole response are scrubbed of every real value; client-to-upstream
 * messages have the placeholders of credentials scoped to the host substituted (when their
 * `in` lists `body`), and a placeholder of any other credential ends the session with 1008
 * before the message goes anywhere. Per message: a value split across two messages is not
 * recognised.
 *
 * What is and is not relayed:
 * - text and binary messages, byte-identical (text is re-encoded from a string, which is exact
 *   for the valid UTF-8 both sides must send);
 * - close codes and reasons, both ways;
 * - NOT pings and pongs: they are hop-by-hop here. Deno answers the client's pings itself (and
 *   pings an idle client), and this module answers the upstream's pings;
 * - NOT extensions: sluice offers none upstream (no permessage-deflate), and Deno's server
 *   accepts none from the client, so every frame is plain on both sides.
 *
 * @module
 */
import { errorResponse } from "../respond.ts";
import type { UpstreamConn, UpstreamResponse } from "../../upstream/client.ts";
import {
  closePayload,
  DEFAULT_MAX_MESSAGE_BYTES,
  encodeFrame,
  isValidCloseCode,
  Opcode,
  truncateReason,
  WebSocketDecoder,
  type WebSocketEvent,
} from "./frame.ts";
import {
  checkSwitch,
  headerValue,
  passThrough,
  refuseUpgrade,
  upstreamHandshake,
} from "./handshake.ts";

const UTF8 = new TextEncoder();
/** How long the client may take to complete its upgrade once the 101 is returned. */
const OPEN_TIMEOUT_MS = 30_000;
/** How long to wait for the upstream's answer to a close frame before dropping it. */
const CLOSE_TIMEOUT_MS = 5_000;
/** Stop reading upstream while this much is waiting to be sent to the client. */
const CLIENT_HIGH_WATER = 1024 * 1024;
const READ_BUFFER = 64 * 1024;

/** Totals for one relayed WebSocket. */
export type WebSocketStats = {
  /** Message payload bytes sent from the client to the upstream. */
  up: number;
  /** Message payload bytes sent from the upstream to the client. */
  down: number;
  /** The close code that ended the session (whoever closed first), if any was seen. */
  code?: number;
  /** Credentials substituted into client messages (names only). */
  credentials?: string[];
  /** The credential whose placeholder in a client message ended the session with 1008. */
  violation?: string;
};

/** A client message after {@link WebSocketBrokering.message}. */
export type BrokeredMessage =
  /** Send `payload` (placeholders replaced); `substituted` names the credentials replaced. */
  | { payload: Uint8Array; substituted: readonly string[]; violation?: undefined }
  /** A placeholder of a credential not scoped to this host: nothing is sent. */
  | { violation: string };

/**
 * Credential brokering on a relayed session: what the caller (lib/exchange/forward.ts, with the
 * policy's broker) does to each thing crossing it. Present only when the policy has
 * credentials.
 */
export type WebSocketBrokering = {
  /** An upstream message's payload (text as UTF-8) as the client gets it. */
  scrubBytes(payload: Uint8Array): Uint8Array;
  /** Upstream text the client sees: close reasons, and 101 problems quoted in a 502. */
  scrubText(text: string): string;
  /** The upstream 101's end-to-end fields. */
  scrubHeaders(fields: readonly [string, string][]): [string, string][];
  /** The upstream's answer other than 101, as the client's Response (scrubbed like any). */
  refusal(upstream: UpstreamResponse): Response | Promise<Response>;
  /** A client message's payload (text as UTF-8), before it goes upstream. */
  message(payload: Uint8Array): BrokeredMessage;
};

/** Options of {@link proxyWebSocket}. */
export type ProxyWebSocketOptions = {
  /** Cap on one message in either direction; default 16 MiB. Bigger closes with 1009. */
  maxMessageBytes?: number;
  /**
   * The end-to-end request fields to send upstream, when the caller has filtered or rewritten
   * them; default: the request's own, without hop-by-hop and Proxy-* fields. Either way the
   * client's own handshake fields (Sec-WebSocket-Key/Version/Extensions) are replaced.
   */
  headers?: [string, string][];
  /** Called once when both sides are closed. Errors it throws are ignored. */
  onClose?: (stats: WebSocketStats) => void;
  /** Credential brokering; absent: messages are relayed as they are. */
  brokering?: WebSocketBrokering;
  /**
   * Called when a client message holds the placeholder of a credential not scoped to this
   * host, as the session is closed with 1008 (metrics, `on_violation`). Errors are ignored.
   */
  onViolation?: (credential: string) => void;
};

/**
 * Relay a WebSocket upgrade request to the upstream and, once it switched protocols, relay
 * messages both ways until either side closes.
 *
 * `open(headers)` must send `GET <path>` with exactly these header fields upstream (through
 * `UpstreamPool.request`) and return its response. The 101 is checked (Upgrade, Connection,
 * Sec-WebSocket-Accept for a fresh key, no extension, a subprotocol the client offered); then
 * the client is upgraded with that subprotocol and the upstream's other 101 fields (cookies).
 * An upstream answer other than 101 comes back as it is (status, fields, body), so the client
 * sees why its handshake failed; an invalid 101 becomes a 502.
 *
 * @param req the client's request; must satisfy {@link isWebSocketUpgrade} (else 400)
 * @param open sends the upstream request with the given fields
 * @param opts message cap, header override, and a callback with the session's totals
 * @returns the Response for Deno's server: the 101 of `Deno.upgradeWebSocket`, or the
 *   upstream's refusal, or sluice's error
 * @throws whatever `open` throws (an UpstreamError when the upstream cannot be reached)
 */
export async function proxyWebSocket(
  req: Request,
  open: (headers: [string, string][]) => Promise<UpstreamResponse>,
  opts?: ProxyWebSocketOptions,
): Promise<Response> {
  const refused = refuseUpgrade(req);
  if (refused !== null) return refused;
  const { offered, key, headers } = upstreamHandshake(req, opts?.headers);

  const upstream = await open(headers);
  const brokering = opts?.brokering;
  if (upstream.status !== 101 || upstream.upgrade === undefined) {
    upstream.upgrade?.conn.close();
    return brokering ? await brokering.refusal(upstream) : passThrough(upstream);
  }
  const { conn, head } = upstream.upgrade;
  const problem = await checkSwitch(upstream.headers, key, offered);
  if (problem !== null) {
    closeQuietly(conn);
    // The problem quotes the upstream's fields: scrubbed like anything else it sent.
    const said = brokering ? brokering.scrubText(problem) : problem;
    return errorResponse(502, "upstream-websocket", `the upstream's WebSocket 101 ${said}`);
  }
  const protocol = headerValue(upstream.headers, "sec-websocket-protocol");
  let upgraded: { socket: WebSocket; response: Response };
  try {
    upgraded = Deno.upgradeWebSocket(req, protocol ? { protocol } : undefined);
  } catch (e) {
    closeQuietly(conn);
    return errorResponse(
      400,
      "websocket-invalid",
      `cannot upgrade this request to a WebSocket: ${e instanceof Error ? e.message : e}`,
    );
  }
  // The upstream's end-to-end 101 fields (Set-Cookie and the like) reach the client too.
  for (
    const [name, value] of brokering ? brokering.scrubHeaders(upstream.headers) : upstream.headers
  ) {
    const lower = name.toLowerCase();
    if (lower === "connection" || lower === "upgrade" || lower.startsWith("sec-websocket-")) {
      continue;
    }
    try {
      upgraded.response.headers.append(name, value);
    } catch { /* a value Headers refuses is dropped, like a hop-by-hop one */ }
  }
  new Relay(upgraded.socket, conn, head, opts).start();
  return upgraded.response;
}

function closeQuietly(conn: UpstreamConn): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}

/** One relayed session: the client's WebSocket and the upstream's raw connection. */
class Relay {
  readonly #socket: WebSocket;
  readonly #conn: UpstreamConn;
  readonly #head: Uint8Array;
  readonly #max: number;
  /** Bytes queued for upstream beyond which the client is cut off (it cannot be paused). */
  readonly #queueLimit: number;
  readonly #onClose?: (stats: WebSocketStats) => void;
  readonly #brokering?: WebSocketBrokering;
  readonly #onViolation?: (credential: string) => void;
  readonly #credentials = new Set<string>();
  #violation: string | undefined;
  #up = 0;
  #down = 0;
  #code: number | undefined;
  #writing: Promise<void> = Promise.resolve();
  #queued = 0;
  /** We sent a close frame upstream; nothing more may follow it. */
  #sentClose = false;
  #upstreamClosed = false;
  #clientClosed = false;
  #finished = false;
  #opened = false;
  #openTimer: ReturnType<typeof setTimeout> | undefined;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #wake: (() => void) | null = null;

  constructor(
    socket: WebSocket,
    conn: UpstreamConn,
    head: Uint8Array,
    opts: ProxyWebSocketOptions | undefined,
  ) {
    this.#socket = socket;
    this.#conn = conn;
    this.#head = head;
    this.#max = opts?.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.#queueLimit = 2 * this.#max + READ_BUFFER;
    this.#onClose = opts?.onClose;
    this.#brokering = opts?.brokering;
    this.#onViolation = opts?.onViolation;
  }

  start(): void {
    const s = this.#socket;
    s.binaryType = "arraybuffer";
    this.#openTimer = setTimeout(() => {
      this.#closeClient(1011, "the client did not complete the WebSocket upgrade");
      this.#closeUpstream();
    }, OPEN_TIMEOUT_MS);
    s.onopen = () => {
      this.#opened = true;
      clearTimeout(this.#openTimer);
      this.#readUpstream().catch((e) => this.#upstreamLost(e));
    };
    s.onmessage = (e) => this.#fromClient(e.data);
    s.onerror = () => {/* the close event follows and carries what is known */};
    s.onclose = (e) => this.#clientGone(e.code, e.reason);
  }

  #fromClient(data: unknown): void {
    if (this.#sentClose || this.#upstreamClosed) return;
    let opcode: number;
    let payload: Uint8Array;
    if (typeof data === "string") {
      opcode = Opcode.text;
      payload = UTF8.encode(data);
    } else if (data instanceof ArrayBuffer) {
      opcode = Opcode.binary;
      payload = new Uint8Array(data);
    } else {
      return; // binaryType is arraybuffer: nothing else arrives
    }
    if (payload.length > this.#max) {
      const why = `the client sent a ${payload.length}-byte message; the limit is ${this.#max}`;
      this.#code ??= 1009;
      this.#closeClient(1009, why);
      this.#sendClose(1001, "the client went away", false);
      return;
    }
    if (this.#brokering) {
      // A message is a body: placeholders are substituted, or refused, before it goes on.
      const r = this.#brokering.message(payload);
      if (r.violation !== undefined) {
        this.#violate(r.violation);
        return;
      }
      payload = r.payload;
      for (const name of r.substituted) this.#credentials.add(name);
    }
    this.#up += payload.length;
    this.#send(opcode, payload);
  }

  /** A client message carried a placeholder that may not go to this host: end with 1008. */
  #violate(credential: string): void {
    if (this.#violation !== undefined) return;
    this.#violation = credential;
    this.#code ??= 1008;
    try {
      this.#onViolation?.(credential);
    } catch { /* the caller's problem, not the relay's */ }
    this.#closeClient(
      1008,
      `sluice: a message holds the placeholder of credential ${credential}, ` +
        "which may not be sent to this host",
    );
    this.#sendClose(1008, "", true);
  }

  /** Queue a masked frame to upstream; writes go out one at a time, in order. */
  #send(opcode: number, payload: Uint8Array): void {
    if (this.#upstreamClosed || this.#sentClose) return;
    if (opcode === Opcode.close) this.#sentClose = true;
    const frame = encodeFrame(opcode, payload, {
      mask: crypto.getRandomValues(new Uint8Array(4)),
    });
    this.#queued += frame.length;
    if (this.#queued > this.#queueLimit) {
      this.#code ??= 1013;
      this.#closeClient(1013, "the upstream is not reading fast enough");
      this.#closeUpstream();
      return;
    }
    this.#writing = this.#writing.then(async () => {
      if (this.#upstreamClosed) return;
      let off = 0;
      while (off < frame.length) off += await this.#conn.write(frame.subarray(off));
      this.#queued -= frame.length;
    }).catch((e) => this.#upstreamLost(e));
  }

  /**
   * Send a close frame upstream (unless one went already). `hangUp`: this ends the session
   * from our side (an answer to the upstream's close, or a failure), so the connection closes
   * once the frame is written; otherwise the upstream's answer is awaited. Either way a timer
   * bounds the wait, for an upstream that neither reads nor answers.
   */
  #sendClose(code: number | undefined, reason: string, hangUp: boolean): void {
    if (this.#upstreamClosed) return;
    this.#send(Opcode.close, closePayload(code, reason));
    if (hangUp) this.#writing.then(() => this.#closeUpstream());
    if (this.#closeTimer === undefined && !this.#upstreamClosed) {
      this.#closeTimer = setTimeout(() => this.#closeUpstream(), CLOSE_TIMEOUT_MS);
    }
  }

  async #readUpstream(): Promise<void> {
    const decoder = new WebSocketDecoder({ role: "client", maxMessageBytes: this.#max });
    if (!this.#handle(decoder.push(this.#head))) return;
    const buf = new Uint8Array(READ_BUFFER);
    while (!this.#upstreamClosed) {
      const n = await this.#conn.read(buf);
      if (n === null) {
        this.#upstreamLost(null);
        return;
      }
      if (!this.#handle(decoder.push(buf.subarray(0, n)))) return;
      // The client cannot take more: stop reading so the upstream's TCP window fills.
      while (
        this.#socket.readyState === WebSocket.OPEN &&
        this.#socket.bufferedAmount > CLIENT_HIGH_WATER && !this.#upstreamClosed
      ) {
        // Deno's WebSocket has no drain event: poll, and let a close cut the wait short.
        await new Promise<void>((resolve) => {
          const done = (): void => {
            clearTimeout(timer);
            this.#wake = null;
            resolve();
          };
          const timer = setTimeout(done, 5);
          this.#wake = done;
        });
      }
    }
  }

  /** Act on upstream events; false once the upstream side is over. */
  #handle(events: WebSocketEvent[]): boolean {
    const s = this.#socket;
    for (const ev of events) {
      switch (ev.type) {
        case "text": {
          if (s.readyState !== WebSocket.OPEN) break; // the client is closing: drop
          let data = ev.data;
          let bytes = ev.bytes;
          if (this.#brokering) {
            const raw = UTF8.encode(data);
            const out = this.#brokering.scrubBytes(raw);
            if (out !== raw) {
              data = new TextDecoder().decode(out);
              bytes = out.length;
            }
          }
          this.#down += bytes;
          s.send(data);
          break;
        }
        case "binary": {
          if (s.readyState !== WebSocket.OPEN) break;
          const data = this.#brokering ? this.#brokering.scrubBytes(ev.data) : ev.data;
          this.#down += data.length;
          s.send(data as Uint8Array<ArrayBuffer>);
          break;
        }
        case "ping":
          this.#send(Opcode.pong, ev.data);
          break;
        case "pong":
          break;
        case "close": {
          this.#code ??= ev.code ?? 1005;
          // Answer with the same code (RFC 6455 5.5.1), then hang up: the closing handshake
          // is complete from the upstream's side.
          this.#sendClose(ev.code, "", true);
          this.#closeClient(
            ev.code,
            this.#brokering ? this.#brokering.scrubText(ev.reason) : ev.reason,
          );
          return false;
        }
        case "invalid": {
          this.#code ??= ev.code;
          this.#sendClose(ev.code, ev.reason, true);
          this.#closeClient(ev.code, `upstream: ${ev.reason}`);
          return false;
        }
      }
    }
    return true;
  }

  #upstreamLost(error: unknown): void {
    if (this.#upstreamClosed) return;
    const why = error === null
      ? "the upstream closed the connection without a close frame"
      : `the upstream connection failed: ${error instanceof Error ? error.message : error}`;
    this.#code ??= 1011;
    this.#closeUpstream();
    this.#closeClient(1011, why);
  }

  #clientGone(eventCode: number, reason: string): void {
    this.#clientClosed = true;
    clearTimeout(this.#openTimer);
    // Deno reports a connection lost without a close frame as code 0, not 1006.
    const code = eventCode === 0 ? 1006 : eventCode;
    this.#code ??= code;
    // 1005 (the client sent no code) goes on as an empty close; 1006 (the client vanished)
    // and anything else that may not be sent becomes 1001 "going away".
    // Never opened: nothing reads the upstream, so there is no answer to wait for.
    const hangUp = !this.#opened;
    if (code === 1005) this.#sendClose(undefined, "", hangUp);
    else if (isValidCloseCode(code)) this.#sendClose(code, reason, hangUp);
    else this.#sendClose(1001, "", hangUp);
    this.#finish();
  }

  #closeClient(code: number | undefined, reason: string): void {
    const s = this.#socket;
    if (this.#clientClosed || s.readyState === WebSocket.CLOSING) return;
    try {
      if (code === undefined) s.close();
      else s.close(code, truncateReason(reason));
    } catch {
      try {
        s.close();
      } catch { /* already closed */ }
    }
  }

  #closeUpstream(): void {
    if (this.#upstreamClosed) return;
    this.#upstreamClosed = true;
    clearTimeout(this.#closeTimer);
    this.#wake?.();
    closeQuietly(this.#conn);
    this.#finish();
  }

  #finish(): void {
    if (this.#finished || !this.#clientClosed || !this.#upstreamClosed) return;
    this.#finished = true;
    clearTimeout(this.#openTimer);
    clearTimeout(this.#closeTimer);
    try {
      this.#onClose?.({
        up: this.#up,
        down: this.#down,
        code: this.#code,
        ...(this.#credentials.size ? { credentials: [...this.#credentials] } : {}),
        ...(this.#violation !== undefined ? { violation: this.#violation } : {}),
      });
    } catch { /* the caller's problem, not the relay's */ }
  }
}
