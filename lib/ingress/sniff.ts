/**
 * Reading a TLS ClientHello off a raw connection before deciding anything:
 * the SNI picks the policy decision (deny, passthrough, intercept) before a
 * single byte goes upstream or a certificate is chosen.
 *
 * Every sniff has a deadline and a size bound, so a silent or slow client
 * (slowloris) costs a small buffer until the sweep closes it, not a stuck connection.
 *
 * @module
 */
import { type ClientHelloResult, MAX_CLIENT_HELLO, parseClientHello } from "../tls/client_hello.ts";
import type { Watch } from "./limits.ts";

/** What a sniff found, plus every byte it read (to be replayed to whoever handles the connection). */
export type SniffResult = {
  bytes: Uint8Array;
  hello: ClientHelloResult | { kind: "timeout" } | { kind: "eof" };
};

/** The first read's buffer: enough for the record header and most of a small ClientHello; a silent client holds only this. */
const FIRST_READ = 512;

/**
 * Reads from `conn` until a complete ClientHello is parsed, the input is
 * invalid, the peer closes, or the deadline passes.
 *
 * @param deadline ms to wait (a timer of its own), or the connection's watch (limits.ts), whose
 *   current stage's deadline the caller has armed and the sweep enforces by closing `conn`
 * @param initial bytes already read from the connection (e.g. after a CONNECT)
 */
export async function sniffClientHello(
  conn: Deno.Conn,
  deadline: number | Watch,
  initial?: Uint8Array,
): Promise<SniffResult> {
  // Small until the record header says how much is coming: a held, silent connection costs
  // FIRST_READ bytes, not a whole ClientHello's worth.
  let buf = new Uint8Array(initial && initial.length > FIRST_READ ? initial.length : FIRST_READ);
  let len = 0;
  if (initial) {
    buf.set(initial);
    len = initial.length;
  }
  let timerFired = false;
  const timer = typeof deadline === "number"
    ? setTimeout(() => {
      timerFired = true;
      try {
        conn.close();
      } catch { /* already closed */ }
    }, deadline)
    : undefined;
  const timedOut = () => timerFired || (typeof deadline !== "number" && !!deadline.expired);
  try {
    while (true) {
      if (len > 0) {
        const r = parseClientHello(buf.subarray(0, len));
        if (r.kind !== "incomplete") return { bytes: buf.slice(0, len), hello: r };
        if (r.need > buf.length) {
          const bigger = new Uint8Array(
            Math.min(Math.max(r.need, buf.length * 2), MAX_CLIENT_HELLO + 4096),
          );
          bigger.set(buf.subarray(0, len));
          buf = bigger;
        }
      }
      if (len === buf.length) {
        return {
          bytes: buf.slice(0, len),
          hello: { kind: "invalid", reason: "ClientHello too large" },
        };
      }
      let n: number | null;
      try {
        n = await conn.read(buf.subarray(len));
      } catch (e) {
        if (timedOut()) return { bytes: buf.slice(0, len), hello: { kind: "timeout" } };
        throw e;
      }
      if (n === null) {
        return {
          bytes: buf.slice(0, len),
          hello: timedOut() ? { kind: "timeout" } : { kind: "eof" },
        };
      }
      len += n;
    }
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Reads whatever arrives first (at least one byte) with a deadline, for
 * classifying a connection by its first byte.
 */
export async function readFirst(
  conn: Deno.Conn,
  timeoutMs: number,
  size = 4096,
): Promise<Uint8Array | null> {
  const buf = new Uint8Array(size);
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* already closed */ }
  }, timeoutMs);
  try {
    const n = await conn.read(buf);
    return n === null ? null : buf.subarray(0, n);
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
  }
}
