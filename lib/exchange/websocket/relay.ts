/**
 * WebSocket upgrades through sluice's HTTP stage: the client side is Deno's own server-side
 * WebSocket (`Deno.upgradeWebSocket`, message level), the upstream side is the raw connection
 * the pool hands over after `101 Switching Protocols`, spoken with the small RFC 6455 client
 * framing layer below. Messages are relayed, not bytes: sluice sees (and may one day police)
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
 * Strictness (client role, RFC 6455 5.1-5.5): a masked frame from upstream, reserved bits,
 * unknown opcodes, fragmented or oversized (>125) control frames, a continuation with no
 * message, a new message inside a fragmented one, a 64-bit length with its top bit set, or an
 * invalid close code fail the connection with 1002; invalid UTF-8 in text or a close reason
 * with 1007; a message over the size cap with 1009, checked before its bytes are buffered.
 * Non-minimal length encodings are accepted: they are harmless, and refusing them would only
 * break sloppy servers.
 *
 * @module
 */
import { connectionTokens, removeHopByHop } from "../http1/response.ts";
import { errorResponse } from "./respond.ts";
import type { UpstreamConn, UpstreamResponse } from "../upstream/client.ts";

/** Frame opcodes (RFC 6455 5.2). */
export const Opcode = {
  continuation: 0x0,
  text: 0x1,
  binary: 0x2,
  close: 0x8,
  ping: 0x9,
  pong: 0xa,
} as const;

/** The default cap on one reassembled message (16 MiB). */
export const DEFAULT_MAX_MESSAGE_BYTES: number = 16 * 1024 * 1024;

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const UTF8 = new TextEncoder();
/** Request fields that describe the client's own handshake; sluice makes its own upstream. */
const CLIENT_HANDSHAKE = new Set([
  "sec-websocket-key",
  "sec-websocket-version",
  "sec-websocket-extensions",
  "sec-websocket-accept",
  "proxy-authorization",
  "proxy-connection",
  "proxy-authenticate",
]);
/** How long the client may take to complete its upgrade once the 101 is returned. */
const OPEN_TIMEOUT_MS = 30_000;
/** How long to wait for the upstream's answer to a close frame before dropping it. */
const CLOSE_TIMEOUT_MS = 5_000;
/** Stop reading upstream while this much is waiting to be sent to the client. */
const CLIENT_HIGH_WATER = 1024 * 1024;
const READ_BUFFER = 64 * 1024;

/**
 * Whether a request asks for a WebSocket upgrade: GET, `Connection: upgrade`,
 * `Upgrade: websocket`, and both `Sec-WebSocket-Key` and `Sec-WebSocket-Version` present.
 *
 * @param req the request as Deno's server gives it
 * @returns true for a WebSocket opening handshake
 */
export function isWebSocketUpgrade(req: Request): boolean {
  if (req.method !== "GET") return false;
  const h = req.headers;
  const connection = h.get("connection");
  const upgrade = h.get("upgrade");
  if (connection === null || upgrade === null) return false;
  if (!tokens(connection).includes("upgrade")) return false;
  if (!tokens(upgrade).includes("websocket")) return false;
  return h.has("sec-websocket-key") && h.has("sec-websocket-version");
}

function tokens(value: string): string[] {
  return value.split(",").map((t) => t.trim().toLowerCase()).filter((t) => t.length > 0);
}

/**
 * The `Sec-WebSocket-Accept` value a server must answer to `key` (RFC 6455 4.2.2).
 *
 * @param key the `Sec-WebSocket-Key` sent
 * @returns base64(SHA-1(key + GUID))
 */
export async function websocketAccept(key: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-1", UTF8.encode(key + GUID));
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}

/**
 * Whether `code` may appear in a close frame on the wire (RFC 6455 7.4, IANA registry):
 * 1000-1003, 1007-1014 and 3000-4999. 1005, 1006 and 1015 are local-only.
 *
 * @param code a close status code
 * @returns true if a peer may send it
 */
export function isValidCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
    (code >= 3000 && code <= 4999);
}

/**
 * One frame's bytes.
 *
 * @param opcode the frame's opcode ({@link Opcode})
 * @param payload the unmasked payload
 * @param opts `fin` (default true) and a 4-byte `mask` key: required for client-to-server frames
 * @returns the frame, payload masked when a key is given
 */
export function encodeFrame(
  opcode: number,
  payload: Uint8Array,
  opts?: { fin?: boolean; mask?: Uint8Array },
): Uint8Array {
  const len = payload.length;
  const mask = opts?.mask;
  const ext = len < 126 ? 0 : len < 0x10000 ? 2 : 8;
  const headLen = 2 + ext + (mask ? 4 : 0);
  const out = new Uint8Array(headLen + len);
  out[0] = (opts?.fin === false ? 0 : 0x80) | (opcode & 0x0f);
  const maskBit = mask ? 0x80 : 0;
  if (ext === 0) out[1] = maskBit | len;
  else if (ext === 2) {
    out[1] = maskBit | 126;
    out[2] = len >> 8;
    out[3] = len & 0xff;
  } else {
    out[1] = maskBit | 127;
    const hi = Math.floor(len / 0x1_0000_0000);
    new DataView(out.buffer).setUint32(2, hi);
    new DataView(out.buffer).setUint32(6, len >>> 0);
  }
  if (!mask) {
    out.set(payload, headLen);
    return out;
  }
  if (mask.length !== 4) throw new RangeError(`a mask key is 4 bytes, got ${mask.length}`);
  out.set(mask, headLen - 4);
  const m0 = mask[0], m1 = mask[1], m2 = mask[2], m3 = mask[3];
  let i = 0;
  for (; i + 4 <= len; i += 4) {
    out[headLen + i] = payload[i] ^ m0;
    out[headLen + i + 1] = payload[i + 1] ^ m1;
    out[headLen + i + 2] = payload[i + 2] ^ m2;
    out[headLen + i + 3] = payload[i + 3] ^ m3;
  }
  for (; i < len; i++) out[headLen + i] = payload[i] ^ mask[i & 3];
  return out;
}

/**
 * A close frame's payload: the code, then the reason cut to fit 125 bytes on a UTF-8 boundary.
 *
 * @param code a status code, or undefined for an empty payload (the peer sees 1005)
 * @param reason text after the code
 * @returns the payload
 */
export function closePayload(code?: number, reason = ""): Uint8Array {
  if (code === undefined) return new Uint8Array(0);
  const r = truncateUtf8(reason, 123);
  const out = new Uint8Array(2 + r.length);
  out[0] = code >> 8;
  out[1] = code & 0xff;
  out.set(r, 2);
  return out;
}

/** `s` as UTF-8, cut to at most `max` bytes without splitting a character. */
function truncateUtf8(s: string, max: number): Uint8Array {
  const b = UTF8.encode(s);
  if (b.length <= max) return b;
  let end = max;
  while (end > 0 && (b[end] & 0xc0) === 0x80) end--;
  return b.slice(0, end);
}

function truncateReason(s: string): string {
  return new TextDecoder().decode(truncateUtf8(s, 123));
}

/** What {@link WebSocketDecoder.push} finds, in stream order. */
export type WebSocketEvent =
  /** `bytes`: the message's size in UTF-8, as it was on the wire. */
  | { type: "text"; data: string; bytes: number }
  | { type: "binary"; data: Uint8Array }
  | { type: "ping"; data: Uint8Array }
  | { type: "pong"; data: Uint8Array }
  /** `code` undefined when the close frame had no payload (1005 "no status"). */
  | { type: "close"; code?: number; reason: string }
  /** The peer broke the protocol: close with `code` (1002, 1007 or 1009); nothing follows. */
  | { type: "invalid"; code: number; reason: string };

/** Options of {@link WebSocketDecoder}. */
export type WebSocketDecoderOptions = {
  /**
   * Which end this decoder is: a "client" reads server frames, which must NOT be masked; a
   * "server" reads client frames, which MUST be.
   */
  role: "client" | "server";
  /** Cap on one message, reassembled; default {@link DEFAULT_MAX_MESSAGE_BYTES}. */
  maxMessageBytes?: number;
};

/**
 * A sans-I/O RFC 6455 frame parser and message assembler: feed it bytes as they arrive, in any
 * split, and it returns whole messages and control frames. It never throws on input; a
 * protocol violation comes out as one `invalid` event, after which (as after `close`) it
 * ignores everything. Payloads are copied, so the caller may reuse its read buffer.
 */
export class WebSocketDecoder {
  readonly #max: number;
  readonly #expectMask: boolean;
  readonly #hdr = new Uint8Array(14);
  #hdrLen = 0;
  /** Header bytes needed: 2 until the second byte says how many more. */
  #hdrNeed = 2;
  #payload: Uint8Array | null = null;
  #got = 0;
  #fin = false;
  #opcode = 0;
  #mask: number[] | null = null;
  /** Opcode of the fragmented message in progress, 0 when none. */
  #msgOpcode = 0;
  #msgBytes = 0;
  #parts: Uint8Array[] = [];
  #text: string[] = [];
  readonly #utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  #done = false;

  /** @param opts the decoder's role and message cap */
  constructor(opts: WebSocketDecoderOptions) {
    this.#expectMask = opts.role === "server";
    this.#max = opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  }

  /** True after a close frame or a protocol violation: further input is ignored. */
  get done(): boolean {
    return this.#done;
  }

  /**
   * Consume bytes.
   *
   * @param chunk the next bytes from the peer (not kept)
   * @returns the events these bytes completed, in order
   */
  push(chunk: Uint8Array): WebSocketEvent[] {
    const out: WebSocketEvent[] = [];
    let i = 0;
    while (i < chunk.length && !this.#done) {
      if (this.#payload === null) {
        const take = Math.min(this.#hdrNeed - this.#hdrLen, chunk.length - i);
        this.#hdr.set(chunk.subarray(i, i + take), this.#hdrLen);
        this.#hdrLen += take;
        i += take;
        if (this.#hdrLen < this.#hdrNeed) continue;
        if (this.#hdrLen === 2) {
          const bad = this.#firstBytes();
          if (bad !== null) {
            this.#fail(out, 1002, bad);
            break;
          }
          if (this.#hdrNeed > 2) continue;
        }
        this.#startPayload(out);
      } else {
        const take = Math.min(this.#payload.length - this.#got, chunk.length - i);
        this.#payload.set(chunk.subarray(i, i + take), this.#got);
        this.#got += take;
        i += take;
        if (this.#got === this.#payload.length) this.#frame(out);
      }
    }
    return out;
  }

  /** Check the first two header bytes and work out the header's length; null when fine. */
  #firstBytes(): string | null {
    const b0 = this.#hdr[0], b1 = this.#hdr[1];
    this.#fin = (b0 & 0x80) !== 0;
    this.#opcode = b0 & 0x0f;
    if ((b0 & 0x70) !== 0) return "a frame has reserved bits set but no extension was agreed";
    const op = this.#opcode;
    const control = op >= 8;
    if (op !== 0 && op !== 1 && op !== 2 && op !== 8 && op !== 9 && op !== 10) {
      return `a frame has the reserved opcode ${op}`;
    }
    const masked = (b1 & 0x80) !== 0;
    if (masked !== this.#expectMask) {
      return this.#expectMask
        ? "a client frame is not masked"
        : "a server frame is masked (servers must not mask)";
    }
    const len7 = b1 & 0x7f;
    if (control && !this.#fin) return `control frame (opcode ${op}) is fragmented`;
    if (control && len7 > 125) return `control frame (opcode ${op}) is longer than 125 bytes`;
    if (op === 0 && this.#msgOpcode === 0) return "a continuation frame has no message to continue";
    if ((op === 1 || op === 2) && this.#msgOpcode !== 0) {
      return "a new message started inside a fragmented one";
    }
    this.#hdrNeed = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (masked ? 4 : 0);
    return null;
  }

  /** The header is complete: check the length and prepare for the payload. */
  #startPayload(out: WebSocketEvent[]): void {
    const h = this.#hdr;
    const len7 = h[1] & 0x7f;
    let len: number;
    let at = 2;
    if (len7 === 126) {
      len = (h[2] << 8) | h[3];
      at = 4;
    } else if (len7 === 127) {
      const hi = ((h[2] << 24) | (h[3] << 16) | (h[4] << 8) | h[5]) >>> 0;
      const lo = ((h[6] << 24) | (h[7] << 16) | (h[8] << 8) | h[9]) >>> 0;
      if (hi >= 0x8000_0000) {
        this.#fail(out, 1002, "a 64-bit frame length has its most significant bit set");
        return;
      }
      len = hi * 0x1_0000_0000 + lo;
      at = 10;
    } else {
      len = len7;
    }
    this.#mask = (h[1] & 0x80) !== 0 ? [h[at], h[at + 1], h[at + 2], h[at + 3]] : null;
    if (this.#opcode < 8 && this.#msgBytes + len > this.#max) {
      this.#fail(
        out,
        1009,
        `a message is larger than the ${this.#max}-byte limit`,
      );
      return;
    }
    this.#hdrLen = 0;
    this.#hdrNeed = 2;
    this.#payload = new Uint8Array(len);
    this.#got = 0;
    if (len === 0) this.#frame(out);
  }

  /** A whole frame arrived. */
  #frame(out: WebSocketEvent[]): void {
    const p = this.#payload!;
    this.#payload = null;
    const m = this.#mask;
    if (m !== null) { for (let i = 0; i < p.length; i++) p[i] ^= m[i & 3]; }
    const op = this.#opcode;
    if (op === Opcode.ping || op === Opcode.pong) {
      out.push({ type: op === Opcode.ping ? "ping" : "pong", data: p });
      return;
    }
    if (op === Opcode.close) {
      this.#close(out, p);
      return;
    }
    const msgOp = op === 0 ? this.#msgOpcode : op;
    this.#msgBytes += p.length;
    if (msgOp === Opcode.text) {
      let s: string;
      try {
        s = this.#utf8.decode(p, { stream: !this.#fin });
      } catch {
        this.#fail(out, 1007, "a text message is not valid UTF-8");
        return;
      }
      if (!this.#fin) {
        this.#text.push(s);
        this.#msgOpcode = msgOp;
        return;
      }
      this.#text.push(s);
      const data = this.#text.length === 1 ? s : this.#text.join("");
      const bytes = this.#msgBytes;
      this.#endMessage();
      out.push({ type: "text", data, bytes });
      return;
    }
    this.#parts.push(p);
    if (!this.#fin) {
      this.#msgOpcode = msgOp;
      return;
    }
    let data: Uint8Array;
    if (this.#parts.length === 1) data = p;
    else {
      data = new Uint8Array(this.#msgBytes);
      let at = 0;
      for (const part of this.#parts) {
        data.set(part, at);
        at += part.length;
      }
    }
    this.#endMessage();
    out.push({ type: "binary", data });
  }

  #endMessage(): void {
    this.#msgOpcode = 0;
    this.#msgBytes = 0;
    this.#parts = [];
    this.#text = [];
  }

  #close(out: WebSocketEvent[], p: Uint8Array): void {
    if (p.length === 0) {
      this.#done = true;
      out.push({ type: "close", reason: "" });
      return;
    }
    if (p.length === 1) return this.#fail(out, 1002, "a close frame has a 1-byte payload");
    const code = (p[0] << 8) | p[1];
    if (!isValidCloseCode(code)) {
      return this.#fail(out, 1002, `a close frame has the invalid code ${code}`);
    }
    let reason: string;
    try {
      reason = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(p.subarray(2));
    } catch {
      return this.#fail(out, 1007, "a close reason is not valid UTF-8");
    }
    this.#done = true;
    out.push({ type: "close", code, reason });
  }

  #fail(out: WebSocketEvent[], code: number, reason: string): void {
    this.#done = true;
    this.#payload = null;
    this.#endMessage();
    out.push({ type: "invalid", code, reason });
  }
}

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
  if (!isWebSocketUpgrade(req)) {
    return errorResponse(
      400,
      "websocket-invalid",
      "not a WebSocket upgrade: expected GET with Connection: upgrade, Upgrade: websocket, " +
        "Sec-WebSocket-Key and Sec-WebSocket-Version",
    );
  }
  if (req.headers.get("sec-websocket-version")?.trim() !== "13") {
    // RFC 6455 4.4: tell the client which version we speak.
    return new Response("sluice: only WebSocket version 13 is supported\n", {
      status: 426,
      headers: { "sec-websocket-version": "13", "content-type": "text/plain; charset=utf-8" },
    });
  }
  // Everything needed from the request is read now: after Deno.upgradeWebSocket its headers
  // can no longer be read ("Request closed").
  const offered = tokensKeepCase(req.headers.get("sec-websocket-protocol") ?? "");
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  const headers: [string, string][] = [];
  for (const [name, value] of removeHopByHop(opts?.headers ?? [...req.headers])) {
    if (!CLIENT_HANDSHAKE.has(name.toLowerCase())) headers.push([name, value]);
  }
  headers.push(
    ["Upgrade", "websocket"],
    ["Connection", "Upgrade"],
    ["Sec-WebSocket-Key", key],
    ["Sec-WebSocket-Version", "13"],
  );

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

function tokensKeepCase(value: string): string[] {
  return value.split(",").map((t) => t.trim()).filter((t) => t.length > 0);
}

function headerValue(headers: readonly [string, string][], name: string): string | undefined {
  const values = headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v.trim());
  return values.length === 0 ? undefined : values.join(", ");
}

/** Why the upstream's 101 is not a valid answer to our handshake, or null. */
async function checkSwitch(
  headers: readonly [string, string][],
  key: string,
  offered: string[],
): Promise<string | null> {
  const upgrade = headerValue(headers, "upgrade");
  if (upgrade === undefined || !tokens(upgrade).includes("websocket")) {
    return `has Upgrade ${JSON.stringify(upgrade ?? "")}, not websocket`;
  }
  if (!connectionTokens(headers as [string, string][]).has("upgrade")) {
    return "has no Connection: upgrade";
  }
  const accept = headerValue(headers, "sec-websocket-accept");
  if (accept !== await websocketAccept(key)) {
    return `has Sec-WebSocket-Accept ${JSON.stringify(accept ?? "")}, which does not match ` +
      "the key sluice sent";
  }
  const ext = headerValue(headers, "sec-websocket-extensions");
  if (ext !== undefined && ext !== "") {
    return `accepts the extension ${JSON.stringify(ext)}, which sluice did not offer`;
  }
  const protocol = headerValue(headers, "sec-websocket-protocol");
  if (protocol !== undefined && !offered.includes(protocol)) {
    return `selects the subprotocol ${JSON.stringify(protocol)}, which the client did not offer`;
  }
  return null;
}

/** The upstream's refusal as a Response, body streamed. */
function passThrough(upstream: UpstreamResponse): Response {
  const headers = new Headers();
  try {
    for (const [name, value] of upstream.headers) headers.append(name, value);
    const bodyless = upstream.status === 204 || upstream.status === 304;
    if (bodyless) upstream.body?.cancel().catch(() => {});
    const init = { status: upstream.status, headers };
    try {
      return new Response(bodyless ? null : upstream.body, {
        ...init,
        statusText: upstream.reason,
      });
    } catch {
      // A reason phrase the Response constructor refuses (obs-text): send the status alone.
      return new Response(bodyless ? null : upstream.body, init);
    }
  } catch (e) {
    upstream.body?.cancel().catch(() => {});
    return errorResponse(
      502,
      "upstream-protocol",
      `the upstream refused the WebSocket upgrade with a response sluice cannot relay ` +
        `(status ${upstream.status}): ${e instanceof Error ? e.message : e}`,
    );
  }
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
