/**
 * What the fetch API's Request and Response cannot carry, kept beside them: that a request came
 * over HTTP/2 (so the upstream is offered h2 as well), and a response's trailers (gRPC's
 * status lives there). Weak maps, so nothing outlives its request or response.
 *
 * Set by lib/ingress/h2_server.ts (requests) and lib/exchange/forward.ts (trailers); read by
 * lib/exchange/forward.ts (requests) and lib/ingress/h2_server.ts (trailers).
 *
 * @module
 */

/**
 * Connection-specific fields, which HTTP/2 forbids in either direction (RFC 9113 8.2.2; node:http2
 * throws on them). Each side adds what else it must leave out.
 */
export const CONNECTION_FIELDS: readonly string[] = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
];

const http2Requests = new WeakSet<Request>();
const trailersOf = new WeakMap<Response, Promise<[string, string][]>>();

/** Marks a request as received over HTTP/2. */
export function markHttp2(req: Request): void {
  http2Requests.add(req);
}

/** @returns whether the request came over HTTP/2 */
export function isHttp2(req: Request): boolean {
  return http2Requests.has(req);
}

/**
 * Gives a response trailers, sent after its body (HTTP/2 only).
 *
 * @param res the response
 * @param trailers the fields, known when the body has ended ([] for none)
 */
export function setTrailers(res: Response, trailers: Promise<[string, string][]>): void {
  trailersOf.set(res, trailers);
}

/** @returns the response's trailers, if it may have some */
export function trailers(res: Response): Promise<[string, string][]> | undefined {
  return trailersOf.get(res);
}
