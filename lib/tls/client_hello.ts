/**
 * TLS ClientHello sniffing: read the server name (SNI) and the offered ALPN protocols from the
 * first bytes of a raw TCP connection, before any TLS library sees them.
 *
 * The input is attacker-controlled, so the parser never throws, never reads past the buffer,
 * does work bounded by {@link MAX_CLIENT_HELLO}, and rejects anything a conforming client would
 * not send instead of guessing. A rejected ClientHello should be answered by closing the
 * connection: a name we cannot read unambiguously must not be routed by name.
 *
 * @module
 */

/** The result of {@link parseClientHello}. */
export type ClientHelloResult =
  | {
    kind: "ok";
    /** The host_name from the server_name extension, lowercased; undefined when not sent. */
    sni: string | undefined;
    /** The ALPN protocol names in the client's order, one char per byte (latin1). */
    alpn: string[];
    /** Total bytes of the TLS records that carry the ClientHello (header + fragment each). */
    length: number;
  }
  | {
    kind: "incomplete";
    /** Best guess of the total bytes needed from the start of the stream, or 0 if unknown. */
    need: number;
  }
  | { kind: "invalid"; reason: string };

/**
 * The largest number of bytes (TLS record headers included) that may carry a ClientHello.
 *
 * One full plaintext record (2^14 bytes) plus the headers of up to four records. Real
 * ClientHellos are far smaller (about 0.5 KiB for curl, under 2 KiB for browsers with
 * post-quantum key shares, a few KiB with large PSK tickets), so this only bounds the memory
 * and work an attacker can make us spend before we have seen a name. Because record headers
 * count too, a ClientHello chopped into many tiny records runs into this limit sooner.
 */
export const MAX_CLIENT_HELLO: number = 16384 + 5 * 4;

/** TLS record header: content type (1), legacy version (2), length (2). */
const RECORD_HEADER = 5;
/** Handshake header: message type (1), length (3). */
const HANDSHAKE_HEADER = 4;
/** RFC 8446 5.1: a plaintext record fragment is at most 2^14 bytes. */
const MAX_RECORD_FRAGMENT = 16384;
const CONTENT_TYPE_HANDSHAKE = 0x16;
const HANDSHAKE_CLIENT_HELLO = 1;
const EXT_SERVER_NAME = 0;
const EXT_ALPN = 16;
const SNI_HOST_NAME = 0;
/** RFC 1035 caps a name at 255 octets on the wire; its text form is shorter still. */
const MAX_HOST_NAME = 255;

/**
 * Tell whether the first byte of a connection starts a TLS handshake record.
 *
 * @param firstByte the first byte read from the connection
 * @returns true for 0x16 (TLS content type "handshake")
 */
export function isTlsStart(firstByte: number): boolean {
  return firstByte === CONTENT_TYPE_HANDSHAKE;
}

/**
 * Parse a TLS ClientHello from the bytes read so far on a raw TCP connection.
 *
 * Handles a ClientHello fragmented over several TLS records and over several reads: call it
 * again with the accumulated bytes while it returns `incomplete`. Never throws.
 *
 * Rejected as `invalid`: a first byte other than 0x16 (not a TLS handshake record); a record
 * version other than 3.x; an empty or over-long (> 2^14) record; another record type between
 * the fragments; a handshake type other than ClientHello; a ClientHello that cannot fit in
 * {@link MAX_CLIENT_HELLO} bytes of records; inner lengths that overrun their container or
 * leave bytes unaccounted for; duplicate extensions; a server_name extension with more than one
 * host_name or a name with bytes other than letters, digits, '-', '.' and '_' (an IPv6 literal
 * is let through as-is for the caller to refuse); an empty ALPN list or protocol name; bytes
 * after the ClientHello in its last record.
 *
 * @param buf the bytes read so far, starting at the first byte of the connection
 * @returns `ok` with the SNI, ALPN list and byte length of the records; `incomplete` with the
 *   total byte count needed when known; or `invalid` with a reason
 * @example
 * ```ts
 * import { parseClientHello } from "./client_hello.ts";
 * // Plain HTTP is refused on its first byte, without waiting for more.
 * const r = parseClientHello(new TextEncoder().encode("GET / HTTP/1.1\r\n"));
 * if (r.kind !== "invalid") throw new Error("expected invalid");
 * ```
 */
export function parseClientHello(buf: Uint8Array): ClientHelloResult {
  try {
    return parse(buf);
  } catch (e) {
    // Unreachable by construction (every read is bounds-checked); kept so that a bug shows up as
    // a rejected connection instead of a crashed listener.
    return { kind: "invalid", reason: `internal parser error: ${String(e)}` };
  }
}

function invalid(reason: string): ClientHelloResult {
  return { kind: "invalid", reason };
}

function u16(b: Uint8Array, i: number): number {
  return (b[i] << 8) | b[i + 1];
}

function parse(buf: Uint8Array): ClientHelloResult {
  if (buf.length === 0) return { kind: "incomplete", need: RECORD_HEADER };

  // Pass 1: walk the records, collecting handshake fragments until the ClientHello is whole.
  // `hsLength` is the full handshake message length (header included) once its header is seen.
  const fragments: Uint8Array[] = [];
  let collected = 0;
  let hsLength = -1;
  let offset = 0;

  while (true) {
    // Check each byte of the record header as soon as it arrives, so that non-TLS input is
    // refused on its first byte rather than after a read timeout.
    const avail = buf.length - offset;
    if (avail >= 1 && buf[offset] !== CONTENT_TYPE_HANDSHAKE) {
      return invalid(
        offset === 0
          ? `not a TLS handshake record: first byte 0x${hex2(buf[0])}`
          : `record type 0x${hex2(buf[offset])} interleaved with a fragmented ClientHello`,
      );
    }
    if (avail >= 2 && buf[offset + 1] !== 0x03) {
      return invalid(`unsupported record version major ${buf[offset + 1]}`);
    }
    if (avail < RECORD_HEADER) {
      return incomplete(offset, hsLength, collected);
    }
    const recLen = u16(buf, offset + 3);
    if (recLen === 0) return invalid("empty handshake record");
    if (recLen > MAX_RECORD_FRAGMENT) return invalid(`record length ${recLen} exceeds 2^14`);
    const recEnd = offset + RECORD_HEADER + recLen;
    if (recEnd > MAX_CLIENT_HELLO) {
      return invalid(`ClientHello records exceed ${MAX_CLIENT_HELLO} bytes`);
    }
    const fragStart = offset + RECORD_HEADER;
    const fragEnd = Math.min(recEnd, buf.length);
    const fragment = buf.subarray(fragStart, fragEnd);
    fragments.push(fragment);
    collected += fragment.length;

    if (hsLength < 0 && collected >= 1) {
      const type = firstByte(fragments);
      if (type !== HANDSHAKE_CLIENT_HELLO) {
        return invalid(`handshake type ${type} is not ClientHello (1)`);
      }
    }
    if (hsLength < 0 && collected >= HANDSHAKE_HEADER) {
      const hsHeader = gather(fragments, HANDSHAKE_HEADER);
      const bodyLen = (hsHeader[1] << 16) | (hsHeader[2] << 8) | hsHeader[3];
      hsLength = HANDSHAKE_HEADER + bodyLen;
      // Reject as soon as the length is known: even in a single record the whole message
      // could not fit in our limit.
      if (hsLength + RECORD_HEADER > MAX_CLIENT_HELLO) {
        return invalid(`ClientHello length ${bodyLen} exceeds the ${MAX_CLIENT_HELLO} byte limit`);
      }
    }
    if (fragEnd < recEnd) {
      // This record is not fully read yet.
      return incomplete(offset, hsLength, collected - fragment.length, recEnd);
    }
    if (hsLength >= 0 && collected >= hsLength) {
      if (collected > hsLength) {
        // Nothing may follow a ClientHello in its flight; extra handshake bytes mean either a
        // lying length field or a second message, and both make our view of the stream suspect.
        return invalid("unexpected bytes after the ClientHello in its last record");
      }
      offset = recEnd;
      break;
    }
    offset = recEnd;
  }

  const body = gather(fragments, hsLength).subarray(HANDSHAKE_HEADER);
  const hello = parseBody(body);
  if (hello.kind !== "ok") return hello;
  return { kind: "ok", sni: hello.sni, alpn: hello.alpn, length: offset };
}

/**
 * Best guess of the total bytes needed: at least the end of the current record, and enough
 * further bytes (plus one more record header) to finish the handshake message once its length
 * is known.
 */
function incomplete(
  recordStart: number,
  hsLength: number,
  collectedBefore: number,
  recEnd?: number,
): ClientHelloResult {
  const need = needed(recordStart, hsLength, collectedBefore, recEnd);
  // `need` is a lower bound on the final size, so past the limit the hello can never fit.
  if (need > MAX_CLIENT_HELLO) {
    return invalid(`ClientHello records would exceed ${MAX_CLIENT_HELLO} bytes`);
  }
  return { kind: "incomplete", need };
}

function needed(
  recordStart: number,
  hsLength: number,
  collectedBefore: number,
  recEnd?: number,
): number {
  if (recEnd === undefined) {
    // Inside a record header: the next record must carry the rest of the message.
    const rest = hsLength >= 0 ? hsLength - collectedBefore : 0;
    return recordStart + RECORD_HEADER + rest;
  }
  const recordData = recEnd - recordStart - RECORD_HEADER;
  if (hsLength < 0) return recEnd;
  const rest = hsLength - collectedBefore;
  if (rest <= recordData) return recEnd;
  return recEnd + RECORD_HEADER + (rest - recordData);
}

function firstByte(fragments: Uint8Array[]): number {
  for (const f of fragments) if (f.length > 0) return f[0];
  return -1;
}

/** Concatenate the first `n` bytes of the fragments, without copying when one suffices. */
function gather(fragments: Uint8Array[], n: number): Uint8Array {
  if (fragments[0].length >= n) return fragments[0].subarray(0, n);
  const out = new Uint8Array(n);
  let at = 0;
  for (const f of fragments) {
    if (at >= n) break;
    const take = Math.min(f.length, n - at);
    out.set(f.subarray(0, take), at);
    at += take;
  }
  return out;
}

type Hello = { kind: "ok"; sni: string | undefined; alpn: string[] };

/** Parse the ClientHello body (after the 4-byte handshake header); `b` is exactly the body. */
function parseBody(b: Uint8Array): Hello | { kind: "invalid"; reason: string } {
  const n = b.length;
  // legacy_version(2) + random(32) + session_id length(1)
  if (n < 35) return { kind: "invalid", reason: "ClientHello too short" };
  if (b[0] !== 0x03) {
    return { kind: "invalid", reason: `unsupported ClientHello version major ${b[0]}` };
  }
  let p = 34;
  const sidLen = b[p];
  p += 1;
  if (sidLen > 32) return { kind: "invalid", reason: `session id length ${sidLen} exceeds 32` };
  p += sidLen;
  if (p + 2 > n) return { kind: "invalid", reason: "truncated before cipher suites" };
  const csLen = u16(b, p);
  p += 2;
  if (csLen < 2 || csLen % 2 !== 0) {
    return { kind: "invalid", reason: `bad cipher suites length ${csLen}` };
  }
  if (p + csLen > n) return { kind: "invalid", reason: "cipher suites overrun the ClientHello" };
  p += csLen;
  if (p + 1 > n) return { kind: "invalid", reason: "truncated before compression methods" };
  const cmLen = b[p];
  p += 1;
  if (cmLen < 1) return { kind: "invalid", reason: "empty compression methods" };
  if (p + cmLen > n) {
    return { kind: "invalid", reason: "compression methods overrun the ClientHello" };
  }
  p += cmLen;

  let sni: string | undefined;
  let alpn: string[] = [];
  // RFC 5246 7.4.1.2: a ClientHello without extensions simply ends here.
  if (p === n) return { kind: "ok", sni, alpn };
  if (p + 2 > n) return { kind: "invalid", reason: "truncated extensions length" };
  const extTotal = u16(b, p);
  p += 2;
  if (p + extTotal !== n) {
    return { kind: "invalid", reason: "extensions length does not match the ClientHello length" };
  }
  // RFC 8446 4.2: no two extensions of the same type. A Set is bounded: at most n/4 entries.
  const seen = new Set<number>();
  while (p < n) {
    if (p + 4 > n) return { kind: "invalid", reason: "truncated extension header" };
    const type = u16(b, p);
    const len = u16(b, p + 2);
    p += 4;
    if (p + len > n) {
      return { kind: "invalid", reason: `extension ${type} overruns the extensions block` };
    }
    if (seen.has(type)) return { kind: "invalid", reason: `duplicate extension ${type}` };
    seen.add(type);
    // Views only for the two extensions we read: a hello carries dozens of others.
    if (type === EXT_SERVER_NAME) {
      const r = parseServerName(b.subarray(p, p + len));
      if (typeof r !== "string" && r !== undefined) return r;
      sni = r;
    } else if (type === EXT_ALPN) {
      const r = parseAlpn(b.subarray(p, p + len));
      if (!Array.isArray(r)) return r;
      alpn = r;
    }
    p += len;
  }
  return { kind: "ok", sni, alpn };
}

/** RFC 6066 3: ServerNameList server_name_list<1..2^16-1>, one host_name at most. */
function parseServerName(d: Uint8Array): string | undefined | { kind: "invalid"; reason: string } {
  if (d.length < 2) return { kind: "invalid", reason: "truncated server_name list length" };
  const listLen = u16(d, 0);
  if (listLen + 2 !== d.length) {
    return { kind: "invalid", reason: "server_name list length does not match the extension" };
  }
  if (listLen === 0) return { kind: "invalid", reason: "empty server_name list" };
  let p = 2;
  let host: string | undefined;
  while (p < d.length) {
    if (p + 3 > d.length) return { kind: "invalid", reason: "truncated server_name entry" };
    const nameType = d[p];
    const len = u16(d, p + 1);
    p += 3;
    if (p + len > d.length) return { kind: "invalid", reason: "server_name entry overruns list" };
    const raw = d.subarray(p, p + len);
    p += len;
    // Other name types have never been defined; their body shares host_name's encoding in
    // every implementation, so skip them rather than refuse a harmless future client.
    if (nameType !== SNI_HOST_NAME) continue;
    if (host !== undefined) return { kind: "invalid", reason: "more than one host_name in SNI" };
    const name = hostName(raw);
    if (name === undefined) {
      return { kind: "invalid", reason: "SNI host_name has invalid bytes or length" };
    }
    host = name;
  }
  return host;
}

/**
 * Validate and lowercase a host_name. Only letters, digits, '-', '.' and '_' (seen in real
 * names) are let through, so nothing downstream can be confused by '%', '/', ':' or NUL in a
 * name. An IPv6 literal (hex digits, ':' and '.', at least two ':') is reported as-is: RFC 6066
 * forbids IP literals, but refusing them is the policy's call, with a clearer message.
 */
function hostName(raw: Uint8Array): string | undefined {
  if (raw.length === 0 || raw.length > MAX_HOST_NAME) return undefined;
  let ldh = true;
  let ipv6 = true;
  let colons = 0;
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i];
    const alnum = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
    if (!(alnum || c === 0x2d || c === 0x2e || c === 0x5f)) ldh = false;
    const hexDigit = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) ||
      (c >= 0x61 && c <= 0x66);
    if (c === 0x3a) colons++;
    else if (!(hexDigit || c === 0x2e)) ipv6 = false;
  }
  if (!ldh && !(ipv6 && colons >= 2)) return undefined;
  // Every byte is ASCII here, so fromCharCode is an exact decoding.
  return latin1(raw).toLowerCase();
}

/** RFC 7301 3.1: ProtocolNameList protocol_name_list<2..2^16-1>, names <1..2^8-1>. */
function parseAlpn(d: Uint8Array): string[] | { kind: "invalid"; reason: string } {
  if (d.length < 2) return { kind: "invalid", reason: "truncated ALPN list length" };
  const listLen = u16(d, 0);
  if (listLen + 2 !== d.length) {
    return { kind: "invalid", reason: "ALPN list length does not match the extension" };
  }
  if (listLen < 2) return { kind: "invalid", reason: "empty ALPN list" };
  const out: string[] = [];
  let p = 2;
  while (p < d.length) {
    const len = d[p];
    p += 1;
    if (len === 0) return { kind: "invalid", reason: "empty ALPN protocol name" };
    if (p + len > d.length) return { kind: "invalid", reason: "ALPN name overruns the list" };
    // Protocol names are opaque bytes (GREASE uses non-ASCII); latin1 keeps them lossless.
    out.push(latin1(d.subarray(p, p + len)));
    p += len;
  }
  return out;
}

/** One char per byte; callers pass at most 255 bytes, well within apply's argument limit. */
function latin1(b: Uint8Array): string {
  return String.fromCharCode.apply(null, b as unknown as number[]);
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, "0");
}
