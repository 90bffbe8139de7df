/**
 * The connection stage for TLS: after the ClientHello is read, decide by SNI
 * (and the CONNECT target or original destination) whether to deny, pass the
 * bytes through untouched, or hand the connection to the terminator.
 *
 * A denied connection that could be intercepted is still terminated with a
 * minted leaf, so the client receives a 403 that names the rule instead of a
 * bare reset; one that cannot (passthrough) gets a TLS access_denied alert.
 *
 * @module
 */
import {
  type ConnectionDecision,
  decideConnection,
  type Destination,
  formatDestination,
  parseDestinationHost,
} from "../policy/mod.ts";
import type { AuditRecord } from "./audit.ts";
import { chooseAddress, connectTcp } from "./connect.ts";
import type { ProxyContext } from "./context.ts";
import { TLS_ACCESS_DENIED_ALERT, TLS_UNRECOGNIZED_NAME_ALERT } from "./respond.ts";
import type { SniffResult } from "./sniff.ts";
import { splice } from "./splice.ts";
import type { Terminator } from "./terminator.ts";

/** Who the connection is and where it was headed before its ClientHello was read. */
export type ConnInfo = {
  id: number;
  client: string;
  mode: "explicit" | "transparent";
  /** The CONNECT target, or the port of the netfilter original destination. */
  target?: { dest?: Destination; port: number };
  started: number;
};

function settingDecision(
  ctx: ProxyContext,
  code: ConnectionDecision["code"],
  reason: string,
): ConnectionDecision {
  const compiled = ctx.policy();
  return {
    verdict: "deny",
    code,
    reason,
    rule: { ...compiled.defaultRef, source: "sluice data path", at: "sluice" },
    inspect: false,
    tls: "passthrough",
  };
}

async function writeQuietly(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  try {
    await conn.write(bytes);
  } catch { /* the client left */ }
}

/**
 * Routes one TLS connection whose ClientHello has been sniffed. Resolves
 * when the connection is over; never rejects.
 */
export async function routeTls(
  ctx: ProxyContext,
  terminator: Terminator,
  conn: Deno.Conn,
  sniffed: SniffResult,
  info: ConnInfo,
): Promise<void> {
  const record: AuditRecord = {
    event: "connection",
    conn: info.id,
    client: info.client,
    mode: info.mode,
    host: info.target?.dest ? formatDestination(info.target.dest) : undefined,
    port: info.target?.port ?? 443,
    verdict: "deny",
    code: "",
    reason: "",
  };
  const audit = (d: ConnectionDecision, extra: Partial<AuditRecord> = {}) => {
    ctx.metrics.connections.inc({ verdict: d.verdict, mode: info.mode, tls: d.tls });
    ctx.audit.write({
      ...record,
      verdict: d.verdict,
      code: d.code,
      reason: d.reason,
      rule: d.rule.source,
      rule_at: d.rule.at,
      tls: d.tls,
      duration_ms: Math.round(performance.now() - info.started),
      ...extra,
    });
  };
  const refuse = async (d: ConnectionDecision, alert = TLS_ACCESS_DENIED_ALERT) => {
    await writeQuietly(conn, alert);
    try {
      conn.close();
    } catch { /* closed */ }
    audit(d);
  };

  const hello = sniffed.hello;
  if (hello.kind !== "ok") {
    const d = hello.kind === "timeout"
      ? settingDecision(
        ctx,
        "timeout",
        `no TLS ClientHello within ${ctx.limits.handshakeTimeoutMs} ms`,
      )
      : hello.kind === "eof"
      ? settingDecision(ctx, "not-tls", "the client closed before sending a TLS ClientHello")
      : settingDecision(
        ctx,
        "not-tls",
        `not a TLS ClientHello: ${"reason" in hello ? hello.reason : "incomplete"}`,
      );
    return await refuse(d);
  }

  let sniDest: Destination | undefined;
  if (hello.sni) {
    const p = parseDestinationHost(hello.sni);
    if (p.kind === "invalid") {
      return await refuse(
        settingDecision(ctx, "missing-sni", `invalid SNI "${hello.sni}": ${p.reason}`),
      );
    }
    sniDest = p;
    record.sni = formatDestination(p);
  }
  const target = info.target;
  if (
    sniDest && target?.dest && target.dest.kind === "name" &&
    formatDestination(sniDest) !== formatDestination(target.dest)
  ) {
    return await refuse(settingDecision(
      ctx,
      "host-mismatch",
      `the TLS server name ${formatDestination(sniDest)} differs from the CONNECT target ${
        formatDestination(target.dest!)
      }`,
    ));
  }
  const dest = sniDest ?? target?.dest;
  if (!dest) {
    return await refuse(
      settingDecision(
        ctx,
        "missing-sni",
        "the TLS ClientHello has no server name (SNI), so the destination is unknown",
      ),
      TLS_UNRECOGNIZED_NAME_ALERT,
    );
  }
  const port = target?.port ?? 443;
  record.host = formatDestination(dest);
  record.port = port;
  const decision = decideConnection(ctx.policy(), dest, port);

  if (decision.verdict === "deny") {
    if (decision.tls === "intercept" && sniDest) {
      // Terminate anyway so the client reads a 403 naming the rule.
      const r = await terminator.hop(conn, sniffed.bytes, {
        conn: info.id,
        client: info.client,
        mode: info.mode,
        secure: true,
        sni: formatDestination(sniDest),
        target: { dest, port },
        denied: decision,
      });
      return audit(decision, { bytes_up: r.up, bytes_down: r.down });
    }
    return await refuse(decision);
  }

  if (decision.tls === "passthrough") {
    const choice = await chooseAddress(ctx, dest, port);
    if (!choice.ok) {
      const d = "denied" in choice
        ? { ...choice.denied, inspect: false, tls: "passthrough" as const }
        : settingDecision(ctx, "not-tls", choice.error);
      return await refuse(d);
    }
    let upstream: Deno.TcpConn;
    try {
      upstream = await connectTcp(choice.ip, port, ctx.limits.connectTimeoutMs);
    } catch (e) {
      return await refuse({ ...decision, verdict: "deny", reason: (e as Error).message });
    }
    const r = await splice(conn, upstream, sniffed.bytes, ctx.limits.idleTimeoutMs);
    return audit(decision, {
      address: `${choice.ip.text}:${port}`,
      bytes_up: r.aToB,
      bytes_down: r.bToA,
    });
  }

  if (!sniDest) {
    return await refuse(
      settingDecision(
        ctx,
        "missing-sni",
        `the client sent no server name (SNI) for ${
          formatDestination(dest)
        }, so no certificate can be chosen; ` +
          "connect by host name, or list the destination in tls.passthrough",
      ),
      TLS_UNRECOGNIZED_NAME_ALERT,
    );
  }
  ctx.metrics.handshakes.inc();
  const r = await terminator.hop(conn, sniffed.bytes, {
    conn: info.id,
    client: info.client,
    mode: info.mode,
    secure: true,
    sni: formatDestination(sniDest),
    target: { dest, port },
  });
  audit(decision, { bytes_up: r.up, bytes_down: r.down });
}
