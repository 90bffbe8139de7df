/**
 * `sluice serve`: flags and policy to a running server, plus signal handling.
 *
 * @module
 */
import type { Endpoint } from "../../policy/types.ts";
import { AuditLog } from "../ops/audit.ts";
import type { ListenAddr } from "../gateway/server.ts";
import { startGateway } from "../gateway/startup.ts";
import { parseDataPath, type Server } from "../gateway/server.ts";
import {
  parseWorkers,
  type PolicySource,
  readPolicySource,
  startWorkers,
  WorkerLoadError,
} from "../gateway/workers.ts";
import { caPaths } from "../tls/ca.ts";
import type { DnsServer } from "../dns/server.ts";
import type { CompiledPolicy } from "../../policy/mod.ts";
import { obtainCa, stateDirFrom } from "./ca.ts";
import { sdNotify } from "../ops/systemd.ts";
import { startTrimmer } from "../ops/memory.ts";
import {
  applyRules,
  DEFAULT_REDIRECT,
  detectBackend,
  forwardingWarning,
  hostSetEntries,
  hostSpec,
  ownIdentity,
} from "../enforce/host.ts";
import { addHostSetElements, type Backend, type Enforcement } from "../enforce/netfilter.ts";
import { classifyIp, type Ip, parseIp } from "../../policy/address.ts";
import { formatIssue } from "../../policy/mod.ts";
import { checkLimits, DEFAULT_LIMITS, parseLimitFlags } from "../ingress/limits.ts";

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
  /** `--limit NAME=VALUE` (lib/ingress/limits.ts). */
  limit?: string[];
  logFormat?: string;
  enforce?: boolean;
  /** `--data-path auto|hop|direct` (lib/gateway/server.ts). */
  dataPath?: string;
  /** `--workers N` (lib/gateway/workers.ts); default $SLUICE_WORKERS, else cores (at most 4). */
  workers?: string;
};

/** The limits that count connections: each worker keeps its own count. */
const COUNT_LIMITS = [
  ["maxConnections", "connections"],
  ["maxConnectionsPerClient", "per-client"],
  ["reservedConnections", "reserve"],
] as const;

/** What serve runs: one gateway in this thread, or the data path in workers. */
type Running = {
  server: { addrs: Server["addrs"]; policy(): CompiledPolicy; reloadFailed(): void };
  dns?: DnsServer;
  reload(next: PolicySource): Promise<() => Promise<void>>;
  close(drainMs: number): Promise<void>;
  crashForTest?(id: number): void;
};

/** A listen address as written: `hostname` is absent when only a port was given. */
export type ListenSpec = { hostname?: string; port: number };

/** Parses `host:port`, `[v6]:port` or a bare port (no hostname: see {@link bindAddr}). */
export function parseListen(text: string, what: string): ListenSpec {
  // The host and its colon come together: a bare "15443" is a port, not host "1544" port 3.
  const m = /^(?:(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+))?:)?(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new Error(
      `${what} "${text}" is not an address; write host:port or a port, e.g. 127.0.0.1:3128`,
    );
  }
  return { hostname: m[1] ?? m[2], port };
}

function isLoopback(hostname: string): boolean {
  const ip = parseIp(hostname);
  return hostname === "localhost" || (ip !== undefined && classifyIp(ip) === "loopback");
}

/**
 * Where a listener binds. A port alone binds loopback, except for the
 * listeners that redirected traffic lands on (transparent, DNS) in gateway
 * mode: REDIRECT rewrites a guest's connection to the address of the
 * interface it came in on, so those bind every address. An explicit loopback
 * address there would refuse every guest, so it is an error.
 *
 * @param opts.setting how the user wrote it, named in the error:
 *   `listen.transparent.https`, `--transparent-https`.
 * @throws {Error} for a loopback address on a redirected listener in gateway mode.
 */
export function bindAddr(
  spec: ListenSpec,
  opts: { setting: string; gateway: boolean; redirected: boolean },
): ListenAddr {
  if (!opts.gateway || !opts.redirected) {
    return { hostname: spec.hostname ?? "127.0.0.1", port: spec.port };
  }
  if (spec.hostname === undefined) return { hostname: "0.0.0.0", port: spec.port };
  if (isLoopback(spec.hostname)) {
    const portOnly = opts.setting.startsWith("--")
      ? `${opts.setting} ${spec.port}`
      : `${opts.setting}: ${spec.port}`;
    throw new Error(
      `${opts.setting} is ${spec.hostname}:${spec.port}, but enforce.subjects.interfaces makes this a gateway: guests' redirected connections arrive at the address of the interface they come in on, never at loopback, so they would be refused. Write the port alone (${portOnly}) to listen on every address, or the gateway's address on those interfaces`,
    );
  }
  return { hostname: spec.hostname, port: spec.port };
}

/** Runs the server until SIGINT/SIGTERM. */
export async function runServe(flags: ServeFlags, log: (s: string) => void): Promise<number> {
  // Bad limits stop the start before anything is read or bound.
  const limits = parseLimitFlags(flags.limit ?? []);
  const dataPath = parseDataPath(flags.dataPath ?? Deno.env.get("SLUICE_DATA_PATH"));
  checkLimits({ ...DEFAULT_LIMITS, ...limits });
  // SLUICE_WORKERS is a default (e.g. a test suite run with one worker), not a choice.
  let workers = parseWorkers(flags.workers ?? Deno.env.get("SLUICE_WORKERS"));
  const source = await readPolicySource(flags.policy);
  const loaded = source.loaded;
  for (const w of loaded.warnings) log(formatIssue(w));
  const policy = loaded.compiled.policy;
  // With --enforce, redirected traffic needs the transparent listeners (and
  // the DNS listener when enforce.dns is proxy): default them when unset.
  // Gateway mode follows the policy, not --enforce (`sluice rules --apply`
  // may have loaded the same redirects). Addresses are settled before
  // anything starts, so a listener guests could not reach stops the start.
  const enforcing = !!flags.enforce;
  const gatewayMode = policy.enforce.subjects.interfaces.length > 0;
  const listen = (o: {
    setting: string;
    endpoint: Endpoint | undefined;
    flag?: { name: string; value: string | undefined };
    fallbackPort?: number;
    redirected: boolean;
  }): ListenAddr | undefined => {
    // A flag overrides the policy's setting; the error names whichever was used.
    const [setting, written]: [string, ListenSpec | undefined] = o.flag?.value
      ? [o.flag.name, parseListen(o.flag.value, o.flag.name)]
      : [o.setting, o.endpoint];
    const spec = written ?? (o.fallbackPort === undefined ? undefined : { port: o.fallbackPort });
    return spec && bindAddr(spec, { setting, gateway: gatewayMode, redirected: o.redirected });
  };
  const addrs = {
    proxy: listen({
      setting: "listen.proxy",
      endpoint: policy.listen.proxy,
      flag: { name: "--proxy", value: flags.proxy },
      fallbackPort: 3128,
      redirected: false,
    }),
    transparentHttps: listen({
      setting: "listen.transparent.https",
      endpoint: policy.listen.transparent?.https,
      flag: { name: "--transparent-https", value: flags.transparentHttps },
      fallbackPort: enforcing ? DEFAULT_REDIRECT.https : undefined,
      redirected: true,
    }),
    transparentHttp: listen({
      setting: "listen.transparent.http",
      endpoint: policy.listen.transparent?.http,
      flag: { name: "--transparent-http", value: flags.transparentHttp },
      fallbackPort: enforcing ? DEFAULT_REDIRECT.http : undefined,
      redirected: true,
    }),
    admin: listen({
      setting: "listen.admin",
      endpoint: policy.listen.admin,
      flag: { name: "--admin", value: flags.admin },
      redirected: false,
    }),
    dns: listen({
      setting: "listen.dns",
      endpoint: policy.listen.dns,
      fallbackPort: enforcing && policy.enforce.dns === "proxy" ? DEFAULT_REDIRECT.dns : undefined,
      redirected: true,
    }),
  };
  const { ca, origin } = await obtainCa(policy, {
    state: flags.state,
    ephemeral: flags.ephemeralCa,
  });
  const stateDir = stateDirFrom(flags.state);
  // Workers load the CA from its files (the key never travels in a message); an ephemeral CA
  // has none, and its key cannot leave this thread.
  const caFiles = policy.tls.ca
    ? { cert: policy.tls.ca.cert, key: policy.tls.ca.key }
    : ca.certPath
    ? caPaths(stateDir)
    : undefined;
  if (workers > 1 && !caFiles) {
    log(`sluice: an ephemeral CA cannot be shared with workers: serving with 1 worker`);
    workers = 1;
  }
  // One token state per credential: workers would each mint (and rotate) their own tokens, and a
  // refresh token rotated by one would be spent for the others.
  const minted = policy.credentials.filter((c) => c.kind === "oauth2").map((c) => c.name);
  if (workers > 1 && minted.length) {
    log(
      `sluice: oauth2 credentials (${
        minted.join(", ")
      }) keep one token state: serving with 1 worker`,
    );
    workers = 1;
  }
  // Connection caps are counted per worker. A cap the user set keeps its meaning unless they
  // also chose the number of workers.
  const counted = COUNT_LIMITS.filter(([key]) => limits[key] !== undefined).map(([, n]) => n);
  if (workers > 1 && counted.length) {
    const which = counted.map((n) => `--limit ${n}`).join(", ");
    if (flags.workers === undefined) {
      log(`sluice: ${which} counts per worker: serving with 1 worker (--workers N: N times it)`);
      workers = 1;
    } else {
      log(`sluice: ${which} applies to each of the ${workers} workers`);
    }
  }
  const audit = await AuditLog.open(flags.auditLog ?? policy.audit.log);
  let enforcement: Enforcement | undefined;
  let backend: Backend = "none";
  // Addresses resolved for host rules with raw ports (github.com:22) go into
  // the enforcement table's address sets, so netfilter lets them through.
  const onResolved = (name: string, ips: Ip[]) => {
    if (!enforcement || backend !== "nftables") return;
    const entries = hostSetEntries(gateway.server.policy().policy, name, ips);
    if (entries.length) {
      addHostSetElements(enforcement.table, entries).catch((e) =>
        log(`sluice: host set update failed: ${(e as Error).message}`)
      );
    }
  };
  // What one thread and the workers are both started with.
  const common = {
    stateDir,
    ca,
    audit,
    resolve: flags.resolve,
    listen: addrs,
    limits,
    dataPath,
    onResolved,
    onReloadRequest: () => reload("POST /reload"),
    log,
  };
  const single = async (): Promise<Running> => {
    // One worker is the single-process server, unchanged.
    const g = await startGateway({ ...common, loaded });
    return { ...g, reload: (next: PolicySource) => g.reload(next.loaded) };
  };
  const gateway: Running = workers > 1
    ? await startWorkers({ ...common, count: workers, source, caFiles: caFiles! }).catch((e) => {
      if (!(e instanceof WorkerLoadError)) throw e;
      // A build without the worker module still serves, in one thread, and says why.
      log(`sluice: ${e.message}; serving with 1 worker`);
      workers = 1;
      return single();
    })
    : await single();
  const { server, dns } = gateway;
  // Once per process, whatever the number of workers: glibc's heap is the process's.
  startTrimmer();

  // Enforcement goes on only once every listener it redirects to is up, and
  // comes off on every way out: signals, errors, even an uncaught exception.
  const self = enforcing ? await ownIdentity() : undefined;
  const enforceNow = async () => {
    const a = server.addrs;
    const current = server.policy().policy;
    const spec = await hostSpec(current, {
      https: a.transparentHttps!.port,
      http: a.transparentHttp!.port,
      dns: dns?.udpAddr.port,
      proxy: a.proxy?.port,
    }, { self });
    enforcement = await applyRules(spec, backend) ?? enforcement;
    // At start and on every reload: a reloaded policy may newly need forwarding.
    const warning = forwardingWarning(current);
    if (warning) log(warning);
  };
  // A dying process runs no more promises: the error handlers remove synchronously.
  const removeSync = () => {
    try {
      enforcement?.removeSync();
    } catch { /* best effort on a dying process */ }
  };
  if (enforcing) {
    try {
      backend = await detectBackend(policy.enforce.backend);
      await enforceNow();
    } catch (e) {
      await gateway.close(0);
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
      let next: PolicySource;
      try {
        next = await readPolicySource(flags.policy);
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
        const rollback = await gateway.reload(next);
        // The new rules replace the old table atomically. If they cannot be applied, the old
        // policy comes back too: policy and rules never disagree.
        if (enforcing) {
          try {
            await enforceNow();
          } catch (e) {
            await rollback();
            throw e;
          }
        }
      } catch (e) {
        log(
          `sluice: reload (${why}) refused; the running policy stays in force:\n${
            (e as Error).message
          }`,
        );
        return (e as Error).message;
      }
      for (const w of next.loaded.warnings) log(formatIssue(w));
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
  // Test only: SIGUSR2 makes worker 1 throw an uncaught error (test/e2e/workers_test.ts).
  if (gateway.crashForTest && Deno.env.get("SLUICE_TEST_WORKER_CRASH") === "1") {
    handlers.push(["SIGUSR2", () => gateway.crashForTest?.(1)]);
  }
  for (const [sig, h] of handlers) Deno.addSignalListener(sig, h);
  const a = server.addrs;
  const show = (x?: Deno.NetAddr) => (x ? `${x.hostname}:${x.port}` : "off");
  if (workers > 1) log(`sluice: ${workers} workers share the data-path ports (SO_REUSEPORT)`);
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
  // SIGINT and SIGTERM stay handled until the drain is over: a second one (a second Ctrl-C, or
  // `deno task` passing on the one its process group already got) must not kill the process
  // mid-drain, losing audit lines and leaving netfilter rules behind. SIGKILL is the way to
  // force it.
  const [hup] = handlers.filter(([sig]) => sig === "SIGHUP");
  Deno.removeSignalListener(hup[0], hup[1]);
  log(`sluice: ${why}, shutting down`);
  await sdNotify("STOPPING=1");
  const drain = flags.drainTimeout === undefined ? 30 : Number(flags.drainTimeout);
  try {
    await gateway.close(Number.isFinite(drain) && drain >= 0 ? drain * 1000 : 30_000);
  } finally {
    // Rules come off after the drain: redirected clients finish first.
    await enforcement?.remove();
    if (enforcement) log(`sluice: removed netfilter table ${enforcement.table}`);
    for (const [sig, h] of handlers) if (sig !== "SIGHUP") Deno.removeSignalListener(sig, h);
  }
  return 0;
}
