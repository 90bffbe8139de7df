/**
 * `sluice run --policy FILE [--user U] [--weak] -- CMD [ARGS...]`: wires
 * lib/run.ts (namespace, rules), lib/serve.ts (the proxy) and the child.
 *
 * @module
 */
import { formatIssue } from "../../policy/mod.ts";
import { AuditLog, type AuditSink } from "../audit.ts";
import { ephemeralCa, exportCaPem, loadCa } from "../ca.ts";
import { buildBrokerage } from "../credentials.ts";
import { startDnsServer } from "../dns.ts";
import { readPolicyFile } from "../policy_file.ts";
import { hostResolver } from "../resolver.ts";
import {
  applyRunRules,
  childEnv,
  createNamespace,
  EXIT_SLUICE_FAILED,
  EXIT_VIOLATION,
  runNet,
  RunResources,
  RunSummary,
  sh,
  terminates,
} from "../run.ts";
import { startServer } from "../serve.ts";
import { SYSTEM_BUNDLES, withoutOwnTrustSetting } from "../trust.ts";
import { stateDirFrom } from "./ca.ts";

/** Flags of `sluice run`. */
export type RunFlags = {
  policy: string;
  user?: string;
  weak?: boolean;
  quiet?: boolean;
  state?: string;
  resolve: string[];
  auditLog?: string;
};

const SIGNALS: Deno.Signal[] = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"];

/** Runs CMD under the policy; returns the exit status for sluice. */
export async function runRun(
  flags: RunFlags,
  cmd: string[],
  log: (s: string) => void,
): Promise<number> {
  if (cmd.length === 0) {
    log("sluice run: no command given; write: sluice run --policy FILE -- CMD [ARGS...]");
    return 2;
  }
  const root = Deno.uid() === 0;
  if (!flags.weak && !root) {
    log(
      "sluice run: creating a network namespace and netfilter rules needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN).\n" +
        "  Run it with sudo, or add --weak to only set HTTP(S)_PROXY and the CA variables (NOTHING is enforced then).",
    );
    return EXIT_SLUICE_FAILED;
  }
  const res = new RunResources();
  let child: Deno.ChildProcess | undefined;
  let terminatedFor: string | undefined;
  let summary: RunSummary | undefined;
  const forward = SIGNALS.map((sig) => [sig, () => child?.kill(sig)] as const);
  const stopping = { now: false };
  try {
    const loaded = await readPolicyFile(flags.policy);
    for (const w of loaded.warnings) log(formatIssue(w));
    const policy = loaded.compiled.policy;
    const { broker, placeholders } = await buildBrokerage(
      loaded.compiled,
      stateDirFrom(flags.state),
    );
    const ca = policy.tls.ca
      ? await loadCa(policy.tls.ca.cert, policy.tls.ca.key)
      : await ephemeralCa();
    // The audit trail goes where --audit-log or a policy file path says; a
    // policy's "stderr" would interleave with the command's own output, so
    // then only the summary is printed.
    const target = flags.auditLog ??
      (policy.audit.log.startsWith("/") ? policy.audit.log : undefined);
    const sink: AuditSink | undefined = target ? await AuditLog.open(target) : undefined;
    summary = new RunSummary(sink);
    const resolver = hostResolver(flags.resolve);

    // The CA bundle CMD trusts: the system roots plus sluice's CA.
    const tmp = await Deno.makeTempDir({ prefix: "sluice-run-" });
    res.add(() => Deno.remove(tmp, { recursive: true }));
    await Deno.chmod(tmp, 0o755);
    let system = "";
    for (const p of SYSTEM_BUNDLES) {
      system = await Deno.readTextFile(p).catch(() => "");
      if (system) break;
    }
    const bundle = `${tmp}/ca-bundle.pem`;
    await Deno.writeTextFile(bundle, `${system.trimEnd()}\n${exportCaPem(ca)}`, { mode: 0o644 });

    const net = flags.weak ? undefined : runNet(Deno.pid);
    if (net) await createNamespace(net, res);
    const host = net?.hostAddr ?? "127.0.0.1";
    const onViolation = (c: { name: string; onViolation: string }) => {
      if (c.onViolation === "block_and_terminate" && child && !terminatedFor) {
        terminatedFor = c.name;
        log(
          `sluice: credential ${c.name} was headed to a host outside its scope; ending the command`,
        );
        try {
          child.kill("SIGTERM");
        } catch { /* already gone */ }
        setTimeout(() => {
          try {
            child?.kill("SIGKILL");
          } catch { /* already gone */ }
        }, 5000);
      }
    };
    const server = await startServer({
      compiled: loaded.compiled,
      broker,
      ca,
      audit: summary,
      resolver,
      proxy: { hostname: host, port: 0 },
      transparentHttps: net ? { hostname: host, port: 0 } : undefined,
      transparentHttp: net ? { hostname: host, port: 0 } : undefined,
      onViolation: (c) => {
        if (terminates(c)) onViolation(c);
      },
      log,
    });
    res.add(() => server.close(2000));
    const a = server.addrs;
    if (net) {
      const dns = await startDnsServer({
        hostname: host,
        port: 0,
        policy: () => server.policy(),
        resolver,
        audit: summary,
      });
      res.add(() => dns.close());
      await applyRunRules(
        net,
        {
          proxy: a.proxy!.port,
          https: a.transparentHttps!.port,
          http: a.transparentHttp!.port,
          dns: dns.udpAddr.port,
        },
        loaded.compiled,
        res,
      );
    } else {
      log(
        "sluice run --weak: NOTHING IS ENFORCED. The command only gets HTTP(S)_PROXY and the CA variables;\n" +
          "  it can ignore them and reach anything the host can. Run without --weak (as root) to enforce.",
      );
    }

    let argv = cmd;
    if (flags.user) {
      const uid = (await sh(["id", "-u", "--", flags.user])).trim();
      const gid = (await sh(["id", "-g", "--", flags.user])).trim();
      argv = ["setpriv", `--reuid=${uid}`, `--regid=${gid}`, "--init-groups", "--", ...argv];
    }
    if (net) argv = ["ip", "netns", "exec", net.ns, ...argv];
    const env = childEnv(
      withoutOwnTrustSetting(Deno.env.toObject()),
      placeholders,
      bundle,
      net ? undefined : `http://${host}:${a.proxy!.port}`,
    );
    for (const [sig, h] of forward) Deno.addSignalListener(sig, h);
    try {
      child = new Deno.Command(argv[0], {
        args: argv.slice(1),
        env,
        clearEnv: true,
        stdin: "inherit",
        stdout: "inherit",
        stderr: "inherit",
      })
        .spawn();
    } catch (e) {
      log(`sluice run: cannot start ${cmd[0]}: ${(e as Error).message}`);
      return 127;
    }
    const status = await child.status;
    stopping.now = true;
    const code = terminatedFor
      ? EXIT_VIOLATION
      : status.signal
      ? 128 + signalNumber(status.signal)
      : status.code;
    if (!flags.quiet) {
      log(
        summary.render(
          status.code,
          terminatedFor ? `ended by sluice: credential ${terminatedFor} violation` : undefined,
        ),
      );
    }
    return code;
  } catch (e) {
    log(`sluice run: ${(e as Error).message}`);
    return EXIT_SLUICE_FAILED;
  } finally {
    for (const [sig, h] of forward) {
      try {
        Deno.removeSignalListener(sig, h);
      } catch { /* not added */ }
    }
    const errors = await res.release();
    for (const e of errors) log(`sluice run: cleanup: ${e}`);
    await summary?.close();
  }
}

function signalNumber(sig: Deno.Signal): number {
  const n: Partial<Record<Deno.Signal, number>> = {
    SIGHUP: 1,
    SIGINT: 2,
    SIGQUIT: 3,
    SIGKILL: 9,
    SIGTERM: 15,
  };
  return n[sig] ?? 0;
}
