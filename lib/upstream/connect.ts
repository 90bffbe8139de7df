/**
 * Choosing the upstream address: resolve the name (sluice never trusts an
 * address the client picked), then run every candidate through the policy's
 * address decision (`private` guard, IP/CIDR deny rules) before connecting.
 *
 * @module
 */
import { openTcp } from "./connection.ts";
import type { Ip } from "../../policy/address.ts";
import {
  decideAddress,
  type Decision,
  type Destination,
  formatDestination,
} from "../../policy/mod.ts";
import type { ProxyContext } from "../gateway/context.ts";
import { ResolveError } from "./resolver.ts";

/** An address sluice may connect to, or why there is none. */
export type AddressChoice =
  | { ok: true; ip: Ip; decision: Decision }
  | { ok: false; denied: Decision }
  | { ok: false; error: string; code: "resolve" };

/**
 * Resolves a destination and picks the first address the policy allows. When
 * every address is refused, the first refusal is reported (they usually share
 * a reason).
 */
export async function chooseAddress(
  ctx: ProxyContext,
  dest: Destination,
  port: number,
): Promise<AddressChoice> {
  const compiled = ctx.policy();
  let candidates: Ip[];
  if (dest.kind === "ip") {
    candidates = [dest.ip];
  } else {
    try {
      candidates = await ctx.resolver.resolve(dest.name);
    } catch (e) {
      const code = e instanceof ResolveError ? e.code : (e as Error).message;
      return {
        ok: false,
        code: "resolve",
        error: `cannot resolve ${formatDestination(dest)} (${code})`,
      };
    }
  }
  let firstDenial: Decision | undefined;
  for (const ip of candidates) {
    const d = decideAddress(compiled, ip, port, dest.kind === "name" ? dest.name : undefined);
    if (d.verdict === "allow") return { ok: true, ip, decision: d };
    firstDenial ??= d;
  }
  return { ok: false, denied: firstDenial! };
}

/** Opens a TCP connection with a deadline and TCP_NODELAY (passthrough): see {@link openTcp}. */
export function connectTcp(ip: Ip, port: number, timeoutMs: number): Promise<Deno.TcpConn> {
  return openTcp(ip.text, port, timeoutMs);
}
