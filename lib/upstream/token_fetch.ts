/**
 * How sluice posts an oauth2 credential's token request (lib/credentials/oauth2.ts): through
 * its own upstream client, so the token endpoint is reached as any upstream is. The
 * connection is decided by the policy in force (the endpoint must be allowed, its address must
 * pass the private guard), resolved by sluice's resolver and verified with `tls.upstream`'s trust.
 * The answer's body is read up to 64 KiB; it holds the token, so nothing here logs it.
 *
 * @module
 */
import { decideConnection, tokenEndpoint } from "../../policy/decide.ts";
import type { TokenFetch } from "../credentials/oauth2.ts";
import type { ProxyContext } from "../gateway/context.ts";
import type { UpstreamPool } from "./client.ts";
import { chooseAddress } from "./connect.ts";

/** The most of a token endpoint's answer sluice reads. */
const MAX_TOKEN_RESPONSE = 64 * 1024;

/** The token fetcher for a running gateway. */
export function tokenFetch(ctx: ProxyContext, pool: UpstreamPool): TokenFetch {
  return async (cred, req) => {
    const at = tokenEndpoint(cred.oauth2!);
    if (!at) throw new Error(`${cred.oauth2!.tokenUrl} has no valid host`);
    const d = decideConnection(ctx.policy(), at.dest, at.port);
    if (d.verdict === "deny") throw new Error(`the network policy denies it (${d.reason})`);
    const choice = await chooseAddress(ctx, at.dest, at.port);
    if (!choice.ok) {
      throw new Error("denied" in choice ? choice.denied.reason : choice.error);
    }
    const host = at.dest.kind === "name" ? at.dest.name : at.dest.ip.text;
    const trust = ctx.trust().forHost(host);
    const body = new TextEncoder().encode(req.form);
    const res = await pool.request(
      {
        host,
        port: at.port,
        address: choice.ip.text,
        tls: true,
        caCerts: trust.caCerts.length ? trust.caCerts : undefined,
        verify: trust.verify,
      },
      {
        method: "POST",
        path: at.path,
        headers: [["host", at.authority], ...req.headers],
        body,
        bodyLength: body.length,
      },
      ctx.signal,
    );
    if (res.whole) return { status: res.status, body: res.whole };
    const chunks: Uint8Array<ArrayBuffer>[] = [];
    let size = 0;
    if (res.body) {
      for await (const c of res.body) {
        size += c.length;
        if (size > MAX_TOKEN_RESPONSE) {
          throw new Error(`its answer is longer than ${MAX_TOKEN_RESPONSE} bytes`);
        }
        chunks.push(c as Uint8Array<ArrayBuffer>);
      }
    }
    return { status: res.status, body: new Uint8Array(await new Blob(chunks).arrayBuffer()) };
  };
}
