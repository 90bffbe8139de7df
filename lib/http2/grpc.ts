/**
 * gRPC's view of sluice's refusals. A gRPC client cannot read an HTML or text 403: it wants
 * HTTP 200 with `grpc-status` and `grpc-message` (a "trailers-only" response: one HEADERS frame
 * ending the stream). So every refusal of a gRPC request (its content-type is
 * `application/grpc` or `application/grpc+<codec>`) is re-expressed here, keeping sluice's
 * `x-sluice-*` fields, and the client's error names the rule and the reason.
 *
 * @module
 */

import { concatBytes } from "../bytes.ts";

/** gRPC status codes sluice answers with (grpc/doc/statuscodes.md). */
export const GRPC_STATUS = {
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  INTERNAL: 13,
  UNAVAILABLE: 14,
} as const;

/**
 * Whether a request's content-type makes it a gRPC call.
 *
 * @param contentType the request's content-type field, if any
 * @returns true for application/grpc and application/grpc+proto (etc.)
 */
export function isGrpc(contentType: string | null | undefined): boolean {
  if (!contentType) return false;
  const t = contentType.trim().toLowerCase();
  return t === "application/grpc" || t.startsWith("application/grpc+") ||
    t.startsWith("application/grpc;");
}

/**
 * The gRPC status of one of sluice's HTTP refusals: a policy or credential refusal is
 * PERMISSION_DENIED, an upstream that failed or could not be reached UNAVAILABLE (which gRPC
 * clients may retry), a timeout DEADLINE_EXCEEDED, a limit RESOURCE_EXHAUSTED, bad input
 * INVALID_ARGUMENT.
 *
 * @param status sluice's HTTP status
 * @returns the gRPC status code
 */
export function grpcStatusOf(status: number): number {
  if (status === 403 || status === 407) return GRPC_STATUS.PERMISSION_DENIED;
  if (status === 504 || status === 408) return GRPC_STATUS.DEADLINE_EXCEEDED;
  if (status === 413 || status === 429 || status === 431) return GRPC_STATUS.RESOURCE_EXHAUSTED;
  if (status === 400) return GRPC_STATUS.INVALID_ARGUMENT;
  if (status === 421 || status === 502 || status === 503) return GRPC_STATUS.UNAVAILABLE;
  return GRPC_STATUS.INTERNAL;
}

/**
 * `grpc-message` encoding (gRPC over HTTP/2, "Responses"): UTF-8, then every byte outside
 * printable ASCII, and `%` itself, percent-encoded.
 *
 * @param message the text
 * @returns the field value
 */
export function encodeGrpcMessage(message: string): string {
  let out = "";
  for (const b of new TextEncoder().encode(message)) {
    out += b >= 0x20 && b <= 0x7e && b !== 0x25
      ? String.fromCharCode(b)
      : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/**
 * A refusal re-expressed for a gRPC client: HTTP 200, `grpc-status` and `grpc-message` in the
 * only HEADERS frame, sluice's own `x-sluice-*` fields kept.
 *
 * @param refusal sluice's HTTP refusal (its body text is the reason)
 * @param reason the reason to put in grpc-message
 * @returns the gRPC response
 */
export function grpcRefusal(refusal: Response, reason: string): Response {
  const headers = new Headers({
    "content-type": "application/grpc",
    "grpc-status": String(grpcStatusOf(refusal.status)),
    "grpc-message": encodeGrpcMessage(`sluice: ${reason}`),
  });
  refusal.headers.forEach((value, name) => {
    if (name.startsWith("x-sluice-")) headers.set(name, value);
  });
  refusal.body?.cancel().catch(() => {});
  return new Response(null, { status: 200, headers });
}

/** A gRPC message frame header: 1 byte compressed flag, 4 bytes big-endian length. */
const FRAME_HEADER = 5;

/**
 * A stream transform that applies `map` to each whole gRPC message (length-prefixed message,
 * gRPC over HTTP/2 "Length-Prefixed-Message"), re-framed with the length `map` returns. A
 * message is passed on as soon as its last byte has arrived (nothing of it is held past that,
 * so a streaming call's messages flow as they are sent); a message cut off by the end of the
 * body is passed on as it came.
 *
 * @param map the new payload of a message (given its payload and compressed flag)
 * @returns the transform
 */
export function grpcMessageStream(
  map: (payload: Uint8Array, compressed: boolean) => Uint8Array,
): TransformStream<Uint8Array, Uint8Array> {
  let pending: Uint8Array = new Uint8Array(0);
  return new TransformStream({
    transform(chunk, controller) {
      const buf = pending.length ? concatBytes([pending, chunk]) : chunk;
      let at = 0;
      while (buf.length - at >= FRAME_HEADER) {
        const length = new DataView(buf.buffer, buf.byteOffset + at + 1, 4).getUint32(0);
        if (buf.length - at - FRAME_HEADER < length) break;
        const payload = map(
          buf.subarray(at + FRAME_HEADER, at + FRAME_HEADER + length),
          buf[at] === 1,
        );
        const out = new Uint8Array(FRAME_HEADER + payload.length);
        out[0] = buf[at];
        new DataView(out.buffer).setUint32(1, payload.length);
        out.set(payload, FRAME_HEADER);
        controller.enqueue(out);
        at += FRAME_HEADER + length;
      }
      pending = at === buf.length ? new Uint8Array(0) : buf.slice(at);
    },
    flush(controller) {
      if (pending.length) controller.enqueue(pending);
    },
  });
}
