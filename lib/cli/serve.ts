/**
 * `sluice serve`: flags and policy to a running server, plus signal handling.
 *
 * @module
 */
import type { Endpoint } from "../../policy/types.ts";
import { AuditLog } from "../audit.ts";
import { type ListenAddr, startServer } from "../serve.ts";
import { readPolicyFile } from "../policy_file.ts";
import { OverrideResolver, parseResolveOverrides, SystemResolver } from "../resolver.ts";
import { obtainCa, stateDirFrom } from "./ca.ts";
import { buildBrokerage } from "../credentials.ts";
import { sdNotify } from "../systemd.ts";
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
  const overrides = parseResolveOverrides(flags.resolve);
  const resolver = overrides.size
    ? new OverrideResolver(overrides, new SystemResolver())
    : new SystemResolver();
  const server = await startServer({
    compiled: loaded.compiled,
    broker,
    ca,
    audit,
    resolver,
    proxy: flags.proxy ? parseListen(flags.proxy, "--proxy") : fromEndpoint(policy.listen.proxy) ??
      { hostname: "127.0.0.1", port: 3128 },
    transparentHttps: flags.transparentHttps
      ? parseListen(flags.transparentHttps, "--transparent-https")
      : fromEndpoint(policy.listen.transparent?.https),
    transparentHttp: flags.transparentHttp
      ? parseListen(flags.transparentHttp, "--transparent-http")
      : fromEndpoint(policy.listen.transparent?.http),
    admin: flags.admin ? parseListen(flags.admin, "--admin") : fromEndpoint(policy.listen.admin),
    onReloadRequest: () => reload("POST /reload"),
    log,
  });
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
  const a = server.addrs;
  const show = (x?: Deno.NetAddr) => (x ? `${x.hostname}:${x.port}` : "off");
  log(
    `sluice: serving ${flags.policy}; proxy ${show(a.proxy)}; transparent https ${
      show(a.transparentHttps)
    }, ` +
      `http ${show(a.transparentHttp)}; admin ${show(a.admin)}; CA ${origin}`,
  );
  await sdNotify(`READY=1\nSTATUS=serving ${flags.policy}`);
  const stopped = Promise.withResolvers<string>();
  const onSignal = (name: string) => () => stopped.resolve(name);
  const handlers: [Deno.Signal, () => void][] = [
    ["SIGINT", onSignal("SIGINT")],
    ["SIGTERM", onSignal("SIGTERM")],
    ["SIGHUP", () => void reload("SIGHUP")],
  ];
  for (const [sig, h] of handlers) Deno.addSignalListener(sig, h);
  const why = await stopped.promise;
  for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  log(`sluice: ${why}, shutting down`);
  await sdNotify("STOPPING=1");
  const drain = flags.drainTimeout === undefined ? 30 : Number(flags.drainTimeout);
  await server.close(Number.isFinite(drain) && drain >= 0 ? drain * 1000 : 30_000);
  return 0;
}
