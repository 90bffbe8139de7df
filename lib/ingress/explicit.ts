/**
 * The explicit proxy listener (HTTP_PROXY / HTTPS_PROXY): `CONNECT host:port`
 * tunnels, decided on the target before sluice answers, and absolute-form
 * plain HTTP requests, which go to the request stage like any other.
 *
 * @module
 */
import { decideConnection, formatDestination, parseDestinationHost } from "../../policy/mod.ts";
import { formatAddr, type ProxyContext } from "../gateway/context.ts";
import { parseRequestHead } from "../http1/request.ts";
import { rawDenial, rawError } from "../exchange/respond.ts";
import { refuseConnectTarget, routeTls } from "./route.ts";
import { sniffClientHello } from "./sniff.ts";
import type { Terminator } from "./terminator.ts";

const ESTABLISHED = new TextEncoder().encode("HTTP/1.1 200 Connection established\r\n\r\n");

async function send(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  try {
    let off = 0;
    while (off < bytes.length) off += await conn.write(bytes.subarray(off));
  } catch { /* client gone */ }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* closed */ }
}

/** The first read's buffer: a CONNECT head fits; a silent or slow client holds only this. */
const FIRST_READ = 1024;

/**
 * Reads a request head. The deadline is the watch's (armed at accept, enforced by the sweep,
 * which closes `conn`). Returns the head result and every byte read.
 */
async function readHead(conn: Deno.Conn, ctx: ProxyContext) {
  const limit = ctx.limits.maxHeaderBytes;
  const watch = ctx.guard.watchOf(conn);
  let buf = new Uint8Array(FIRST_READ);
  let len = 0;
  while (true) {
    if (len === buf.length) {
      const bigger = new Uint8Array(Math.min(buf.length * 4, limit + 4096));
      bigger.set(buf);
      buf = bigger;
    }
    const n = await conn.read(buf.subarray(len)).catch(() => null);
    if (n === null) {
      return {
        kind: watch?.expired ? "timeout" as const : "eof" as const,
        bytes: buf.subarray(0, len),
      };
    }
    len += n;
    const r = parseRequestHead(buf.subarray(0, len), { maxHeaderBytes: limit });
    if (r.kind !== "incomplete") {
      return { kind: "head" as const, result: r, bytes: buf.subarray(0, len) };
    }
  }
}

/** Serves one connection accepted on the explicit proxy port. Never rejects. */
export async function handleExplicit(
  ctx: ProxyContext,
  terminator: Terminator,
  conn: Deno.Conn,
): Promise<void> {
  const started = performance.now();
  const id = ctx.nextConnId();
  const client = formatAddr(conn.remoteAddr);
  const read = await readHead(conn, ctx);
  if (read.kind !== "head") {
    closeQuietly(conn);
    return;
  }
  const r = read.result;
  if (r.kind === "invalid") {
    await send(conn, rawError(r.status, "Bad Request", "invalid-request", r.reason));
    closeQuietly(conn);
    ctx.audit.write({
      event: "request",
      conn: id,
      client,
      mode: "explicit",
      verdict: "deny",
      code: "invalid-request",
      reason: r.reason,
      status: r.status,
    });
    return;
  }
  if (r.kind !== "ok") return closeQuietly(conn);
  const head = r.head;

  if (head.method !== "CONNECT") {
    // Absolute-form HTTP: the request stage decides each request on this connection.
    await terminator.hop(conn, read.bytes.slice(), {
      conn: id,
      client,
      mode: "explicit",
      secure: false,
    });
    return;
  }

  // CONNECT authority: host:port, IPv6 in brackets.
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(head.target);
  const port = m ? Number(m[2]) : 0;
  const dest = m ? parseDestinationHost(m[1]) : undefined;
  // A credential's placeholder in the target: a violation, before it is decided or answered.
  if (await refuseConnectTarget(ctx, conn, { id, client, started }, head.target, port)) return;
  if (!m || !dest || dest.kind === "invalid" || port < 1 || port > 65535) {
    const reason = `CONNECT target "${head.target}" is not host:port`;
    await send(conn, rawError(400, "Bad Request", "invalid-request", reason));
    closeQuietly(conn);
    ctx.audit.write({
      event: "connection",
      conn: id,
      client,
      mode: "explicit",
      verdict: "deny",
      code: "invalid-request",
      reason,
      status: 400,
    });
    return;
  }
  const decision = decideConnection(ctx.policy(), dest, port);
  if (decision.verdict === "deny") {
    ctx.metrics.connections.inc({ verdict: "deny", mode: "explicit", tls: decision.tls });
    await send(conn, rawDenial(decision));
    closeQuietly(conn);
    ctx.audit.write({
      event: "connection",
      conn: id,
      client,
      mode: "explicit",
      host: formatDestination(dest),
      port,
      verdict: "deny",
      code: decision.code,
      reason: decision.reason,
      rule: decision.rule.source,
      rule_at: decision.rule.at,
      status: 403,
      duration_ms: Math.round(performance.now() - started),
    });
    return;
  }
  await send(conn, ESTABLISHED);
  // Bytes the client pipelined after the CONNECT head belong to the tunnel (copied: the head's
  // buffer is not kept for the tunnel's life).
  const rest = read.bytes.slice(head.headerBytes);
  const watch = ctx.guard.watchOf(conn);
  watch?.arm("connect", ctx.limits.connectIdleMs);
  const sniffed = await sniffClientHello(
    conn,
    watch ?? ctx.limits.connectIdleMs,
    rest.length ? rest : undefined,
  );
  if (sniffed.hello.kind === "timeout") {
    // Counted and audited (rate-limited) by the sweep that closed it.
    closeQuietly(conn);
    return;
  }
  watch?.arm("decide", ctx.limits.decideTimeoutMs);
  if (sniffed.hello.kind === "invalid" && sniffed.bytes.length > 0 && sniffed.bytes[0] !== 0x16) {
    // Plain HTTP inside the tunnel (ws://, http:// through CONNECT): decide per request.
    await terminator.hop(conn, sniffed.bytes, {
      conn: id,
      client,
      mode: "explicit",
      secure: false,
      target: { dest, port },
    });
    return;
  }
  await routeTls(ctx, terminator, conn, sniffed, {
    id,
    client,
    mode: "explicit",
    target: { dest, port },
    started,
  });
}
