/**
 * The RFC 6455 frame codec, sans I/O: {@link encodeFrame} and {@link closePayload} build frames,
 * {@link WebSocketDecoder} parses and validates them and reassembles messages. Kept apart from
 * the handshake and the relay so the protocol rules can be read, tested and fuzzed
 * (test/fuzz/websocket_fuzz_test.ts) on their own, with no sockets involved.
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

const UTF8 = new TextEncoder();

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

/**
 * A close reason cut to fit a close frame (123 bytes of UTF-8) on a character boundary.
 *
 * @param s the reason
 * @returns `s`, shortened if needed
 */
export function truncateReason(s: string): string {
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
