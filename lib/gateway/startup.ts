/**
 * One startup for `sluice serve` and `sluice run`: from a loaded policy to a
 * running gateway, in the one order both need, and one reload.
 *
 *   credentials (brokerage) -> resolver -> server (proxy, transparent,
 *   admin listeners) -> policy DNS listener
 *
 * What differs between the commands stays with them (lib/cli/): where the
 * CA and the audit trail come from, which addresses to bind, enforcement
 * (host rules for serve, the namespace for run), signals and the child.
 *
 * @module
 */
import type { Loaded } from "../../policy/mod.ts";
import type { Credential } from "../../policy/types.ts";
import type { Ip } from "../../policy/address.ts";
import { type Brokerage, buildBrokerage } from "../credentials/brokerage.ts";
import type { Broker } from "../credentials/broker.ts";
import { fileRefreshStore, OAuth2Tokens } from "../credentials/oauth2.ts";
import { type DnsServer, startDnsServer } from "../dns/server.ts";
import type { Limits } from "../ingress/limits.ts";
import type { AuditSink } from "../ops/audit.ts";
import type { CertificateAuthority } from "../tls/ca.ts";
import { hostResolver } from "../upstream/resolver.ts";
import { type DataPath, type ListenAddr, type Server, startServer } from "./server.ts";

/** What a gateway is started from. */
export type GatewayOptions = {
  loaded: Loaded;
  /** Where the placeholder key lives (created on first use), or the key itself. */
  stateDir: string | Uint8Array;
  ca: CertificateAuthority;
  audit: AuditSink;
  /** `--resolve NAME=ADDR` overrides. */
  resolve: readonly string[];
  listen: {
    proxy?: ListenAddr;
    transparentHttps?: ListenAddr;
    transparentHttp?: ListenAddr;
    admin?: ListenAddr;
    dns?: ListenAddr;
  };
  limits?: Partial<Limits>;
  /** SO_REUSEPORT on the data-path listeners (workers share them). */
  reusePort?: boolean;
  /** How intercepted transparent HTTPS is served (see ServerOptions.dataPath). */
  dataPath?: DataPath;
  /** In a worker: the direct path keeps the connections it served (ServerOptions.directScope). */
  directScope?: "all" | "claimed";
  onClaim?: (key: string) => void;
  /** Told of every credential violation (requests, names, DNS questions), after it was blocked. */
  onViolation?: (credential: Credential, host: string) => void;
  /** Told of every address set the policy DNS listener resolved for an allowed name. */
  onResolved?: (name: string, ips: Ip[]) => void;
  onReloadRequest?: () => Promise<string | undefined>;
  log: (message: string) => void;
};

/** A running gateway. */
export type Gateway = {
  server: Server;
  dns?: DnsServer;
  /** The credentials in force (placeholders and secrets for `sluice run`'s child). */
  brokerage(): Brokerage;
  /**
   * Builds the new policy's credentials completely, then swaps policy and broker together;
   * throws (leaving the running ones in force) when the credentials cannot be loaded.
   *
   * @returns a function that puts the previous policy and broker back (when a later step of
   *   the caller's reload, such as applying netfilter rules, fails)
   */
  reload(next: Loaded): Promise<() => Promise<void>>;
  /** Drains and closes the server, then the DNS listener. */
  close(drainMs: number): Promise<void>;
};

/** Starts the gateway: credentials, resolver, server, DNS, in that order. */
export async function startGateway(opts: GatewayOptions): Promise<Gateway> {
  // Token state outlives reloads: an unchanged oauth2 credential keeps its token.
  const tokens = new OAuth2Tokens({
    store: typeof opts.stateDir === "string"
      ? fileRefreshStore(`${opts.stateDir}/oauth2-refresh-tokens.json`)
      : undefined,
  });
  let brokerage = await buildBrokerage(opts.loaded.compiled, opts.stateDir, Deno.env, tokens);
  let compiled = opts.loaded.compiled;
  const resolver = hostResolver([...opts.resolve]);
  const server = await startServer({
    compiled,
    broker: brokerage.broker,
    tokens,
    ca: opts.ca,
    audit: opts.audit,
    resolver,
    ...opts.listen,
    onReloadRequest: opts.onReloadRequest,
    onViolation: opts.onViolation,
    limits: opts.limits,
    reusePort: opts.reusePort,
    dataPath: opts.dataPath,
    directScope: opts.directScope,
    onClaim: opts.onClaim,
    log: opts.log,
  });
  let dns: DnsServer | undefined;
  try {
    dns = opts.listen.dns
      ? await startDnsServer({
        ...opts.listen.dns,
        policy: () => server.policy(),
        resolver,
        audit: opts.audit,
        onResolved: opts.onResolved,
        scanner: () => brokerage.broker.scanner,
        onViolation: (c, name) => {
          server.metrics.violations.inc({ credential: c.name });
          opts.onViolation?.(c, name);
        },
      })
      : undefined;
  } catch (e) {
    await server.close(0);
    throw e;
  }
  const swap = async (c: typeof compiled, b: Brokerage) => {
    await server.reload(c, b.broker);
    compiled = c;
    brokerage = b;
  };
  return {
    server,
    dns,
    brokerage: () => brokerage,
    async reload(next) {
      // Credential files are re-read too; a missing one refuses the reload.
      const nextBrokerage = await buildBrokerage(next.compiled, opts.stateDir, Deno.env, tokens);
      const [prevCompiled, prevBrokerage] = [compiled, brokerage];
      await swap(next.compiled, nextBrokerage);
      return () => swap(prevCompiled, prevBrokerage);
    },
    async close(drainMs) {
      await server.close(drainMs);
      await dns?.close();
    },
  };
}

export type { Broker };
