/**
 * `sluice serve`: flags and policy to a running server, plus signal handling.
 *
 * @module
 */
import type { Endpoint } from "../../policy/types.ts";
import { AuditLog } from "../audit.ts";
import { type ListenAddr, startServer } from "../serve.ts";
import { readPolicyFile } from "../policy_file.ts";
import { hostResolver } from "../resolver.ts";
import { obtainCa, stateDirFrom } from "./ca.ts";
import { buildBrokerage } from "../credentials.ts";
import { sdNotify } from "../systemd.ts";
import {
  applyRules,
  DEFAULT_REDIRECT,
  detectBackend,
  hostSetEntries,
  hostSpec,
} from "../enforce.ts";
import { addHostSetElements, type Backend, type Enforcement } from "../netfilter.ts";
import type { Ip } from "../../policy/address.ts";
import { startDnsServer } from "../dns.ts";
import { formatIssue } from "../../policy/mod.ts";

/** Flags of `sluice serve`. */
export type ServeFlags = {
  policy: string;
  proxy?: string;
  transparentHttps?: string;
  transparentHttp?: string;
  state?: string;
  ephemeralCa?: boolean;
  resolve: string[];
  auditLog?: string;
  admin?: string;
  drainTimeout?: string;
  logFormat?: string;
  enforce?: boolean;
};

/** Parses `host:port`, `[v6]:port` or a bare port (loopback). */
export function parseListen(text: string, what: string): ListenAddr {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+))?:?(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new Error(
      `${what} "${text}" is not an address; write host:port or a port, e.g. 127.0.0.1:3128`,
    );
  }
  return { hostname: m[1] ?? m[2] ?? "127.0.0.1", port };
}

function fromEndpoint(e: Endpoint | undefined): ListenAddr | undefined {
  return e ? { hostname: e.hostname ?? "127.0.0.1", port: e.port } : undefined;
}

/** Runs the server until SIGINT/SIGTERM. */
export async function runServe(flags: ServeFlags, log: (s: string) => void): Promise<number> {
  const loaded = await readPolicyFile(flags.policy);
  for (const w of loaded.warnings) log(formatIssue(w));
  const policy = loaded.compiled.policy;
  const { ca, origin } = await obtainCa(policy, {
    state: flags.state,
    ephemeral: flags.ephemeralCa,
  });
  const stateDir = stateDirFrom(flags.state);
  const { broker } = await buildBrokerage(loaded.compiled, stateDir);
  const audit = await AuditLog.open(flags.auditLog ?? policy.audit.log);
  const resolver = hostResolver(flags.resolve);
  // With --enforce, redirected traffic needs the transparent listeners (and
  // the DNS listener when enforce.dns is proxy): default them when unset. In
  // gateway mode REDIRECT targets the incoming interface's address, so bind all.
  const enforcing = !!flags.enforce;
  const bindHost = policy.enforce.subjects.interfaces.length ? "0.0.0.0" : "127.0.0.1";
  const orDefault = (e: ListenAddr | undefined, port: number) =>
    e ?? (enforcing ? { hostname: bindHost, port } : undefined);
  const server = await startServer({
    compiled: loaded.compiled,
    broker,
    ca,
    audit,
    resolver,
    proxy: flags.proxy ? parseListen(flags.proxy, "--proxy") : fromEndpoint(policy.listen.proxy) ??
      { hostname: "127.0.0.1", port: 3128 },
    transparentHttps: orDefault(
      flags.transparentHttps
        ? parseListen(flags.transparentHttps, "--transparent-https")
        : fromEndpoint(policy.listen.transparent?.https),
      DEFAULT_REDIRECT.https,
    ),
    transparentHttp: orDefault(
      flags.transparentHttp
        ? parseListen(flags.transparentHttp, "--transparent-http")
        : fromEndpoint(policy.listen.transparent?.http),
      DEFAULT_REDIRECT.http,
    ),
    admin: flags.admin ? parseListen(flags.admin, "--admin") : fromEndpoint(policy.listen.admin),
    onReloadRequest: () => reload("POST /reload"),
    log,
  });
  const dnsAddr = fromEndpoint(policy.listen.dns) ??
    (enforcing && policy.enforce.dns === "proxy"
      ? { hostname: bindHost, port: DEFAULT_REDIRECT.dns! }
      : undefined);
  let enforcement: Enforcement | undefined;
  let backend: Backend = "none";
  // Addresses resolved for host rules with raw ports (github.com:22) go into
  // the enforcement table's address sets, so netfilter lets them through.
  const onResolved = (name: string, ips: Ip[]) => {
    if (!enforcement || backend !== "nftables") return;
    const entries = hostSetEntries(server.policy().policy, name, ips);
    if (entries.length) {
      addHostSetElements(enforcement.table, entries).catch((e) =>
        log(`sluice: host set update failed: ${(e as Error).message}`)
      );
    }
  };
  const dns = dnsAddr
    ? await startDnsServer({
      ...dnsAddr,
      policy: () => server.policy(),
      resolver,
      audit,
      onResolved,
    })
    : undefined;

  // Enforcement goes on only once every listener it redirects to is up, and
  // comes off on every way out: signals, errors, even an uncaught exception.
  const enforceNow = async () => {
    const a = server.addrs;
    const spec = await hostSpec(server.policy().policy, {
      https: a.transparentHttps!.port,
      http: a.transparentHttp!.port,
      dns: dns?.udpAddr.port,
      proxy: a.proxy?.port,
    });
    enforcement = await applyRules(spec, backend) ?? enforcement;
  };
  const removeSync = () => {
    if (!enforcement) return;
    const argv = backend === "nftables"
      ? ["nft", "delete", "table", "inet", enforcement.table]
      : ["sh", "-c", "true"];
    try {
      new Deno.Command(argv[0], { args: argv.slice(1), stderr: "null" }).outputSync();
    } catch { /* best effort on a dying process */ }
  };
  if (enforcing) {
    try {
      backend = await detectBackend(policy.enforce.backend);
      await enforceNow();
    } catch (e) {
      await server.close(0);
      await dns?.close();
      throw e;
    }
    globalThis.addEventListener("error", removeSync);
    globalThis.addEventListener("unhandledrejection", removeSync);
    log(`sluice: enforcing with ${backend} (table ${enforcement?.table ?? "none"})`);
  }

  // Reloads run one at a time; each builds the new policy completely before
  // the swap, so a broken file leaves the running policy in force.
  let chain: Promise<unknown> = Promise.resolve();
  async function reload(why: string): Promise<string | undefined> {
    const run = chain.then(async () => {
      // RELOADING=1 then READY=1 brackets the reload for `systemctl reload`.
      await sdNotify("RELOADING=1");
      try {
        return await reloadOnce();
      } finally {
        await sdNotify("READY=1");
      }
    });
    chain = run;
    return await run;

    async function reloadOnce(): Promise<string | undefined> {
      let next;
      try {
        next = await readPolicyFile(flags.policy);
      } catch (e) {
        server.reloadFailed();
        log(
          `sluice: reload (${why}) refused; the running policy stays in force:\n${
            (e as Error).message
          }`,
        );
        return (e as Error).message;
      }
      try {
        // Credential files are re-read too; a missing one refuses the reload.
        const { broker: nextBroker } = await buildBrokerage(next.compiled, stateDir);
        await server.reload(next.compiled, nextBroker);
        // The new rules replace the old table atomically.
        if (enforcing) await enforceNow();
      } catch (e) {
        log(
          `sluice: reload (${why}) refused; the running policy stays in force:\n${
            (e as Error).message
          }`,
        );
        return (e as Error).message;
      }
      for (const w of next.warnings) log(formatIssue(w));
      log(`sluice: reloaded ${flags.policy} (${why})`);
      return undefined;
    }
  }
  // Signal handlers before anyone is told we are serving: a SIGHUP or SIGTERM that follows the
  // "serving" line or READY=1 at once must reload or drain, not kill the process.
  const stopped = Promise.withResolvers<string>();
  const onSignal = (name: string) => () => stopped.resolve(name);
  const handlers: [Deno.Signal, () => void][] = [
    ["SIGINT", onSignal("SIGINT")],
    ["SIGTERM", onSignal("SIGTERM")],
    ["SIGHUP", () => void reload("SIGHUP")],
  ];
  for (const [sig, h] of handlers) Deno.addSignalListener(sig, h);
  const a = server.addrs;
  const show = (x?: Deno.NetAddr) => (x ? `${x.hostname}:${x.port}` : "off");
  log(
    `sluice: serving ${flags.policy}; proxy ${show(a.proxy)}; transparent https ${
      show(a.transparentHttps)
    }, ` +
      `http ${show(a.transparentHttp)}; dns ${dns ? show(dns.udpAddr) : "off"}; admin ${
        show(a.admin)
      }; CA ${origin}`,
  );
  await sdNotify(`READY=1\nSTATUS=serving ${flags.policy}`);
  const why = await stopped.promise;
  for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  log(`sluice: ${why}, shutting down`);
  await sdNotify("STOPPING=1");
  const drain = flags.drainTimeout === undefined ? 30 : Number(flags.drainTimeout);
  try {
    await server.close(Number.isFinite(drain) && drain >= 0 ? drain * 1000 : 30_000);
    await dns?.close();
  } finally {
    // Rules come off after the drain: redirected clients finish first.
    await enforcement?.remove();
    if (enforcement) log(`sluice: removed netfilter table ${enforcement.table}`);
  }
  return 0;
}
