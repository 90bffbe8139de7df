/**
 * The connection stage for TLS: after the ClientHello is read, decide by SNI
 * (and the CONNECT target or original destination) whether to deny, pass the
 * bytes through untouched, or hand the connection to the terminator.
 *
 * A denied connection that could be intercepted is still terminated with a
 * minted leaf, so the client receives a 403 that names the rule instead of a
 * bare reset; one that cannot (passthrough) gets a TLS access_denied alert.
 *
 * A name that carries a credential's placeholder (the SNI here, the CONNECT
 * target in {@link refuseConnectTarget}) is refused first, before the
 * connection decision and before any resolution: the name would otherwise
 * leave in a DNS query or an upstream ClientHello. It is a credential
 * violation like any other: audited with `violation`, counted, and reported to
 * `ctx.onViolation` (`sluice run`'s block_and_terminate).
 *
 * @module
 */
import type { OutcomeCode } from "../../policy/outcomes.ts";
import { UpstreamError } from "../upstream/client.ts";
import {
  type ConnectionDecision,
  decideConnection,
  type Destination,
  formatDestination,
  parseDestinationHost,
} from "../../policy/mod.ts";
import { refuseNameWithPlaceholder } from "../../policy/plan.ts";
import type { AuditRecord } from "../ops/audit.ts";
import { chooseAddress, connectTcp } from "../upstream/connect.ts";
import type { ProxyContext } from "../gateway/context.ts";
import {
  rawDenial,
  TLS_ACCESS_DENIED_ALERT,
  TLS_UNRECOGNIZED_NAME_ALERT,
} from "../exchange/respond.ts";
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

/** A denial by one of sluice's own settings (not a policy rule): no SNI, not TLS, a deadline. */
export function settingDecision(
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
 * Refuses a CONNECT whose target carries a credential's placeholder, before the CONNECT is
 * decided or answered: `403` with `x-sluice-decision: deny; code=credential-violation`, one
 * `connection` audit line with `violation`, the violations metric, and `ctx.onViolation`.
 *
 * @param target the CONNECT request-target as sent (`host:port`)
 * @param port the port it names (0 when it names none validly)
 * @returns true when the CONNECT was refused (answered, and `conn` closed)
 */
export async function refuseConnectTarget(
  ctx: ProxyContext,
  conn: Deno.Conn,
  info: { id: number; client: string; started: number },
  target: string,
  port: number,
): Promise<boolean> {
  const named = refuseNameWithPlaceholder(
    ctx.policy(),
    ctx.broker().scanner,
    target,
    port,
    "CONNECT target",
  );
  if (!named?.violation) return false;
  const d = named.decision;
  const c = named.violation;
  const m = /^(\[[^\]]*\]|[^:]*)/.exec(target);
  const p = parseDestinationHost(m ? m[1].replace(/^\[(.*)\]$/, "$1") : target);
  const host = p.kind === "invalid" ? (m?.[1] ?? target).toLowerCase() : formatDestination(p);
  const tls = p.kind === "invalid" ? "passthrough" : decideConnection(ctx.policy(), p, port).tls;
  ctx.metrics.connections.inc({ verdict: "deny", mode: "explicit", tls });
  ctx.metrics.violations.inc({ credential: c.name });
  ctx.onViolation?.(c, host);
  await writeQuietly(conn, rawDenial(d));
  try {
    conn.close();
  } catch { /* closed */ }
  ctx.audit.write({
    event: "connection",
    conn: info.id,
    client: info.client,
    mode: "explicit",
    host,
    port: port || undefined,
    verdict: "deny",
    code: d.code,
    reason: d.reason,
    rule: d.rule.source,
    rule_at: d.rule.at,
    violation: c.name,
    status: 403,
    duration_ms: Math.round(performance.now() - info.started),
  });
  return true;
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
  const record: Omit<AuditRecord, "verdict" | "code" | "reason"> = {
    event: "connection",
    conn: info.id,
    client: info.client,
    mode: info.mode,
    host: info.target?.dest ? formatDestination(info.target.dest) : undefined,
    port: info.target?.port ?? 443,
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
  const refuse = async (
    d: ConnectionDecision,
    alert = TLS_ACCESS_DENIED_ALERT,
    extra: Partial<AuditRecord> = {},
  ) => {
    await writeQuietly(conn, alert);
    try {
      conn.close();
    } catch { /* closed */ }
    audit(d, extra);
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

  const port = info.target?.port ?? 443;
  if (hello.sni) {
    // Before anything reads the name: a placeholder in it is a violation whatever the policy
    // says of the host, and whether or not the name is even valid.
    const named = refuseNameWithPlaceholder(
      ctx.policy(),
      ctx.broker().scanner,
      hello.sni,
      port,
      "SNI",
    );
    if (named?.violation) {
      const p = parseDestinationHost(hello.sni);
      const dest = p.kind === "invalid" ? undefined : p;
      const sni = dest ? formatDestination(dest) : hello.sni.toLowerCase();
      record.sni = sni;
      record.host = sni;
      record.port = port;
      // Whether the name could be intercepted decides the answer (a 403 over a minted leaf, or
      // an alert); nothing else of the connection decision is used.
      const tls = dest ? decideConnection(ctx.policy(), dest, port).tls : "passthrough";
      const d: ConnectionDecision = { ...named.decision, inspect: false, tls };
      const c = named.violation;
      ctx.metrics.violations.inc({ credential: c.name });
      ctx.onViolation?.(c, sni);
      if (tls === "intercept" && dest) {
        const r = await terminator.hop(conn, sniffed.bytes, {
          conn: info.id,
          client: info.client,
          mode: info.mode,
          secure: true,
          sni,
          target: { dest, port },
          denied: d,
        });
        return audit(d, { violation: c.name, bytes_up: r.up, bytes_down: r.down });
      }
      return await refuse(d, TLS_ACCESS_DENIED_ALERT, { violation: c.name });
    }
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
    // An upstream that cannot be reached is an upstream failure of an allowed connection
    // (policy/outcomes.ts: `resolve`, `upstream-connect`, `upstream-timeout`), not a denial.
    const failed = (code: OutcomeCode, reason: string) =>
      refuse({ ...decision, code: code as ConnectionDecision["code"], reason }, undefined, {
        code,
      });
    if (!choice.ok) {
      if ("denied" in choice) {
        return await refuse({ ...choice.denied, inspect: false, tls: "passthrough" as const });
      }
      return await failed("resolve", choice.error);
    }
    let upstream: Deno.TcpConn;
    try {
      upstream = await connectTcp(choice.ip, port, ctx.limits.connectTimeoutMs);
    } catch (e) {
      const kind = e instanceof UpstreamError && e.kind === "timeout" ? "timeout" : "connect";
      ctx.metrics.upstreamErrors.inc({ kind });
      return await failed(`upstream-${kind}`, (e as Error).message);
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
