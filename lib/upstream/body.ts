/**
 * The bodies of an exchange: {@link sendRequest} writes a request head and its body (bytes
 * coalesced with the head when small, a stream de-framed to Content-Length or chunked, its
 * length enforced), and {@link bodyReader} reads a response body off the connection by its
 * framing (length, chunked, until close), de-chunked and never decompressed. Both pass bytes
 * through as they are; what they report on failure is an {@link UpstreamError}.
 *
 * @module
 */

import { concatBytes } from "../bytes.ts";
import {
  ChunkedDecoder,
  encodeChunk,
  LAST_CHUNK,
  type ResponseFraming,
} from "../http1/response.ts";
import { type Connection, fillOrReset, type Timer } from "./connection.ts";
import type { BodyPlan } from "./head.ts";
import { errorText, UpstreamError } from "./types.ts";

/** A Uint8Array body up to this size goes out in the same write as the head. */
const COALESCE_LIMIT = 256 * 1024;

/** How far sending a request got; shared between the sender and the exchange. */
export type SendState = {
  done: boolean;
  wroteAny: boolean;
  sourceFailed: boolean;
  /** Stop reading the request body stream (set while one is being sent). */
  stop?: (reason: unknown) => void;
};

/**
 * Write the head and the body; `state` tells the exchange how far it got.
 *
 * @param conn the connection
 * @param built the head and the body plan
 * @param state updated as bytes go out
 * @param where `host:port`, for messages
 * @throws {UpstreamError} reset when a write fails, protocol when the body stream fails or
 *   breaks its length
 */
export async function sendRequest(
  conn: Connection,
  built: { head: Uint8Array; plan: BodyPlan },
  state: SendState,
  where: string,
): Promise<void> {
  const { head, plan } = built;
  const io = conn.io;
  const write = async (b: Uint8Array): Promise<void> => {
    try {
      let off = 0;
      while (off < b.length) {
        off += await io.write(b.subarray(off));
        state.wroteAny = true;
      }
    } catch (e) {
      throw new UpstreamError(
        "reset",
        `Upstream ${where} closed the connection while the request was sent: ${errorText(e)}`,
        { cause: e },
      );
    }
  };
  if (plan.kind === "none") return await write(head);
  if (plan.kind === "bytes") {
    if (plan.data.length <= COALESCE_LIMIT) return await write(concatBytes([head, plan.data]));
    await write(head);
    return await write(plan.data);
  }
  const reader = plan.stream.getReader();
  state.stop = (reason) => reader.cancel(reason).catch(() => {});
  const sourceError = (what: string, cause?: unknown): UpstreamError => {
    state.sourceFailed = true;
    return new UpstreamError(
      "protocol",
      `Cannot send request body to ${where}: ${what}`,
      { cause },
    );
  };
  const chunked = plan.length === undefined;
  let sent = 0;
  const frame = (chunk: Uint8Array): Uint8Array => {
    sent += chunk.length;
    if (!chunked && sent > plan.length!) {
      throw sourceError(`the body stream gave more than bodyLength ${plan.length} bytes`);
    }
    return chunked ? encodeChunk(chunk) : chunk;
  };
  const read = async (): Promise<ReadableStreamReadResult<Uint8Array>> => {
    try {
      return await reader.read();
    } catch (e) {
      throw sourceError(`the body stream failed: ${errorText(e)}`, e);
    }
  };
  try {
    // Head and first chunk in one write when the chunk is ready now; else don't wait for it
    // (the client may be waiting for our 100 Continue before it sends anything).
    const firstRead = read();
    firstRead.catch(() => {}); // awaited below; this only keeps an early failure handled
    let timer: Timer | undefined;
    const first = await Promise.race([
      firstRead,
      new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), 0)),
    ]);
    clearTimeout(timer);
    let r: ReadableStreamReadResult<Uint8Array>;
    if (first === undefined) {
      await write(head);
      r = await firstRead;
    } else {
      r = first;
      if (!r.done) {
        await write(concatBytes([head, frame(r.value)]));
        r = await read();
      } else {
        await write(head);
      }
    }
    for (; !r.done; r = await read()) await write(frame(r.value));
    if (chunked) await write(LAST_CHUNK);
    else if (sent !== plan.length) {
      throw sourceError(`the body stream ended after ${sent} of ${plan.length} bytes`);
    }
  } catch (e) {
    reader.cancel(e).catch(() => {});
    throw e;
  } finally {
    reader.releaseLock();
  }
}

/**
 * A function returning the next body piece (a copy), or null at the end of the body.
 *
 * @param conn the connection, positioned after the response head
 * @param framing how the body is delimited
 * @param where `host:port`, for messages
 * @returns the reader
 */
export function bodyReader(
  conn: Connection,
  framing: ResponseFraming,
  where: string,
): () => Promise<Uint8Array | null> {
  const fill = async (what: string): Promise<boolean> => {
    const n = await fillOrReset(conn, where, "during the body");
    if (n === null && what !== "") {
      throw new UpstreamError("reset", `Upstream ${where} closed the connection ${what}`);
    }
    return n !== null;
  };
  if (framing.kind === "length") {
    let remaining = framing.length;
    return async () => {
      if (remaining === 0) return null;
      if (conn.start === conn.end) {
        conn.start = conn.end = 0;
        await fill(`after ${framing.length - remaining} of ${framing.length} body bytes`);
      }
      const take = Math.min(remaining, conn.end - conn.start);
      const out = conn.buf.slice(conn.start, conn.start + take);
      conn.start += take;
      remaining -= take;
      return out;
    };
  }
  if (framing.kind === "close") {
    return async () => {
      if (conn.start === conn.end) {
        conn.start = conn.end = 0;
        if (!await fill("")) return null;
      }
      const out = conn.buf.slice(conn.start, conn.end);
      conn.start = conn.end;
      return out;
    };
  }
  const decoder = new ChunkedDecoder();
  return async () => {
    while (true) {
      if (decoder.done) return null;
      if (conn.start === conn.end) {
        conn.start = conn.end = 0;
        await fill("in the middle of a chunked body");
      }
      const pieces: Uint8Array[] = [];
      const r = decoder.decode(conn.buf.subarray(conn.start, conn.end), pieces);
      if (r.kind === "invalid") {
        throw new UpstreamError("protocol", `Invalid chunked body from ${where}: ${r.reason}`);
      }
      conn.start += r.consumed;
      if (pieces.length === 1) return pieces[0].slice();
      if (pieces.length > 1) return concatBytes(pieces);
    }
  };
}
