/**
 * WebSocket upgrades through sluice's HTTP stage, as the rest of sluice sees them. Only
 * re-exports: `frame.ts` is the RFC 6455 codec, `handshake.ts` the opening handshake (the
 * client's upgrade request, the upstream's 101), `relay.ts` the message relay and
 * {@link proxyWebSocket}, the entry lib/exchange/forward.ts calls.
 *
 * @module
 */
export {
  closePayload,
  encodeFrame,
  isValidCloseCode,
  Opcode,
  WebSocketDecoder,
  type WebSocketEvent,
} from "./frame.ts";
export { isWebSocketUpgrade, websocketAccept } from "./handshake.ts";
export { proxyWebSocket, type ProxyWebSocketOptions, type WebSocketStats } from "./relay.ts";
