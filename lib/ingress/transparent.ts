/**
 * Transparent listeners: connections netfilter redirected to sluice. The
 * client believes it is talking to the server, so sluice routes TLS by SNI
 * and HTTP by Host, and learns the original port from SO_ORIGINAL_DST when
 * the kernel has it.
 *
 * @module
 */
import { parseDestinationHost } from "../../policy/mod.ts";
import { formatAddr, type ProxyContext } from "../gateway/context.ts";
import { routeTls } from "./route.ts";
import { sniffClientHello } from "./sniff.ts";
import { originalDst } from "../tls/sockopt.ts";
import type { Terminator } from "./terminator.ts";

function original(conn: Deno.Conn) {
  const dst = conn.remoteAddr.transport === "tcp" ? originalDst(conn as Deno.TcpConn) : undefined;
  if (!dst) return undefined;
  const d = parseDestinationHost(dst.hostname);
  return d.kind === "invalid" ? undefined : { dest: d, port: dst.port };
}

/** Serves one connection redirected to the transparent HTTPS port. Never rejects. */
export async function handleTransparentTls(
  ctx: ProxyContext,
  terminator: Terminator,
  conn: Deno.Conn,
): Promise<void> {
  const started = performance.now();
  const id = ctx.nextConnId();
  const client = formatAddr(conn.remoteAddr);
  const orig = original(conn);
  // The first-bytes deadline was armed at accept; the sweep enforces it.
  const watch = ctx.guard.watchOf(conn);
  const sniffed = await sniffClientHello(conn, watch ?? ctx.limits.handshakeTimeoutMs);
  if (sniffed.hello.kind === "timeout") {
    // Counted and audited (rate-limited) by the sweep that closed it.
    try {
      conn.close();
    } catch { /* closed */ }
    return;
  }
  watch?.arm("decide", ctx.limits.decideTimeoutMs);
  // The original address is not the destination (SNI is; the address may be
  // a shared CDN front), but its port is the one the client dialled.
  await routeTls(ctx, terminator, conn, sniffed, {
    id,
    client,
    mode: "transparent",
    target: orig ? { port: orig.port } : undefined,
    started,
  });
}

/** Serves one connection redirected to the transparent HTTP port. Never rejects. */
export async function handleTransparentHttp(
  ctx: ProxyContext,
  terminator: Terminator,
  conn: Deno.Conn,
): Promise<void> {
  const id = ctx.nextConnId();
  await terminator.hop(conn, new Uint8Array(0), {
    conn: id,
    client: formatAddr(conn.remoteAddr),
    mode: "transparent",
    secure: false,
  });
}
