/**
 * The WebSocket opening handshake, both halves: recognising and checking the client's upgrade
 * request, building the upstream's (sluice makes its own key, offers no extension), checking
 * the upstream's `101 Switching Protocols` against it, and passing a refusal (any other status)
 * back as it came. Separate from the relay because it is HTTP, not frames: it runs once,
 * before either side speaks RFC 6455 framing.
 *
 * @module
 */
import { connectionTokens, removeHopByHop } from "../../http1/response.ts";
import { errorResponse } from "../respond.ts";
import type { UpstreamResponse } from "../../upstream/client.ts";

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
 * The answer to a request that cannot be upgraded, or null when it can: 400 when it is not a
 * WebSocket opening handshake at all, 426 when it asks for a version other than 13.
 *
 * @param req the client's request
 * @returns sluice's refusal, or null
 */
export function refuseUpgrade(req: Request): Response | null {
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
  return null;
}

/** The upstream request's fields and what checking its 101 needs. */
export type UpstreamHandshake = {
  /** The subprotocols the client offered, as it spelled them. */
  offered: string[];
  /** The fresh `Sec-WebSocket-Key` sent upstream. */
  key: string;
  /** The fields to send upstream. */
  headers: [string, string][];
};

/**
 * The upstream handshake for `req`: its end-to-end fields (or `fields`) without the client's
 * own handshake fields, and sluice's own Upgrade, Connection, key and version. Reads
 * everything needed from the request now: after `Deno.upgradeWebSocket` its headers can no
 * longer be read ("Request closed").
 *
 * @param req the client's request
 * @param fields the caller's filtered or rewritten fields, if any
 * @returns the fields to send, the key and the offered subprotocols
 */
export function upstreamHandshake(
  req: Request,
  fields: [string, string][] | undefined,
): UpstreamHandshake {
  const offered = tokensKeepCase(req.headers.get("sec-websocket-protocol") ?? "");
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  const headers: [string, string][] = [];
  for (const [name, value] of removeHopByHop(fields ?? [...req.headers])) {
    if (!CLIENT_HANDSHAKE.has(name.toLowerCase())) headers.push([name, value]);
  }
  headers.push(
    ["Upgrade", "websocket"],
    ["Connection", "Upgrade"],
    ["Sec-WebSocket-Key", key],
    ["Sec-WebSocket-Version", "13"],
  );
  return { offered, key, headers };
}

function tokensKeepCase(value: string): string[] {
  return value.split(",").map((t) => t.trim()).filter((t) => t.length > 0);
}

/**
 * A field's values, trimmed and joined with ", ".
 *
 * @param headers the fields
 * @param name the field's lower-case name
 * @returns the value, or undefined when absent
 */
export function headerValue(
  headers: readonly [string, string][],
  name: string,
): string | undefined {
  const values = headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v.trim());
  return values.length === 0 ? undefined : values.join(", ");
}

/**
 * Why the upstream's 101 is not a valid answer to our handshake, or null: Upgrade, Connection,
 * Sec-WebSocket-Accept for `key`, no extension, a subprotocol the client offered.
 *
 * @param headers the 101's fields
 * @param key the key sent
 * @param offered the client's subprotocols
 * @returns what is wrong, or null
 */
export async function checkSwitch(
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

/**
 * The upstream's refusal as a Response, body streamed.
 *
 * @param upstream the upstream's answer other than 101
 * @returns that answer for the client, or a 502 when it cannot be relayed
 */
export function passThrough(upstream: UpstreamResponse): Response {
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
