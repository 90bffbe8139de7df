/**
 * `sluice run --policy FILE [--user U] [--weak] -- CMD [ARGS...]`: wires
 * lib/run/namespace.ts (namespace, rules), lib/run/state.ts (markers, recovery),
 * lib/run/env.ts + lib/run/trust.ts (the command's environment and CA
 * material), lib/run/init.ts (the sandbox's first process) and
 * lib/gateway/server.ts (the proxy).
 *
 * @module
 */
import { type Credential, formatIssue } from "../../policy/mod.ts";
import { AuditLog, type AuditSink } from "../ops/audit.ts";
import { ephemeralCa, exportCaPem, loadCa } from "../tls/ca.ts";
import { readPolicyFile } from "../gateway/policy_file.ts";
import {
  applyRunRules,
  createNamespace,
  describeEnding,
  exitStatus,
  type RunEnding,
  runNet,
  RunResources,
  RunSummary,
  terminates,
} from "../run/namespace.ts";
import { sh } from "../ops/command.ts";
import { buildChildEnv, caVariables, childPlaceholders, credentialSources } from "../run/env.ts";
import type { InitSpec, InitStatus } from "../run/init.ts";
import { READY_FILE, signalNumber } from "../run/init.ts";
import {
  hostTableName,
  processStart,
  recoverDeadRuns,
  removeMarker,
  writeMarker,
} from "../run/state.ts";
import { writeTrustFiles } from "../run/trust.ts";
import { startGateway } from "../gateway/startup.ts";
import { startTrimmer } from "../ops/memory.ts";
import { parseDataPath } from "../gateway/server.ts";
import { ownTrustSettings } from "../upstream/trust.ts";
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
  clearEnv?: boolean;
  passEnv?: string[];
  /** `--data-path auto|hop|direct` (lib/gateway/server.ts). */
  dataPath?: string;
};

/** Signals sluice passes on to the command (through the sandbox's init). */
const SIGNALS: Deno.Signal[] = [
  "SIGINT",
  "SIGTERM",
  "SIGHUP",
  "SIGQUIT",
  "SIGUSR1",
  "SIGUSR2",
  "SIGWINCH",
];

/**
 * How to start this same program again: the compiled binary, or deno running
 * main.ts. The latter needs Deno's module cache, which it finds through HOME
 * unless told: name it, so a `--user` HOME or `--clear-env` cannot hide it.
 */
function selfCommand(): { argv: string[]; env: Record<string, string> } {
  if (Deno.build.standalone) return { argv: [Deno.execPath()], env: {} };
  const home = Deno.env.get("HOME") ?? "/root";
  const cache = Deno.env.get("DENO_DIR") ??
    `${Deno.env.get("XDG_CACHE_HOME") ?? `${home}/.cache`}/deno`;
  return {
    argv: [Deno.execPath(), "run", "-A", new URL("../../main.ts", import.meta.url).pathname],
    // No update check: it would be a request from inside the sandbox, denied and counted.
    env: { DENO_DIR: cache, DENO_NO_UPDATE_CHECK: "1" },
  };
}

/** The uid, gid, home and name of a user, for `--user`. */
async function lookupUser(
  user: string,
): Promise<{ uid: number; gid: number; home?: string; name: string }> {
  const line = (await sh(["getent", "passwd", user]).catch(() => "")).trim().split("\n")[0];
  if (line) {
    const f = line.split(":");
    return { name: f[0], uid: Number(f[2]), gid: Number(f[3]), home: f[5] || undefined };
  }
  if (/^\d+$/.test(user)) return { name: user, uid: Number(user), gid: Number(user) };
  throw new Error(`--user ${user}: no such user (getent passwd ${user} found nothing)`);
}

/**
 * The sandbox's init (the child of `unshare --fork`) as the host sees it, once it
 * handles signals (it creates READY_FILE then); undefined if unshare ended first.
 */
async function readyInit(unsharePid: number, workDir: string): Promise<number | undefined> {
  for (let i = 0; i < 3000; i++) {
    const text = await Deno.readTextFile(`/proc/${unsharePid}/task/${unsharePid}/children`)
      .catch(() => undefined);
    if (text === undefined) return undefined; // unshare is gone
    const pid = Number(text.trim().split(/\s+/)[0]);
    if (pid && (await Deno.lstat(`${workDir}/${READY_FILE}`).then(() => true, () => false))) {
      return pid;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return undefined;
}

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
    return exitStatus({ kind: "failed" });
  }
  const res = new RunResources();
  let audit: AuditSink | undefined;
  let summary: RunSummary | undefined;
  /** Written in the run's temp dir while the gateway starts: settled before the dir is removed. */
  let trustFiles: ReturnType<typeof writeTrustFiles> | undefined;
  let signalTarget: ((sig: Deno.Signal) => void) | undefined;
  let terminatedFor: string | undefined;
  let killTimer: ReturnType<typeof setTimeout> | undefined;
  // With a terminal, Ctrl-C and Ctrl-\ reach the command directly (same process group):
  // forwarding them too would deliver each twice. sluice itself keeps running until the
  // command is gone.
  const tty = Deno.stdin.isTerminal();
  // A signal that arrives while the sandbox is being set up stops the run before the
  // command starts (as if the command had been killed by it at once).
  let early: Deno.Signal | undefined;
  const forward = SIGNALS.map((sig) =>
    [sig, () => {
      if (signalTarget) {
        if (!(tty && (sig === "SIGINT" || sig === "SIGQUIT"))) signalTarget(sig);
      } else early ??= sig;
    }] as const
  );
  for (const [sig, h] of forward) Deno.addSignalListener(sig, h);
  const marker = { written: false };
  try {
    const loaded = await readPolicyFile(flags.policy);
    for (const w of loaded.warnings) log(formatIssue(w));
    const policy = loaded.compiled.policy;
    const stateDir = stateDirFrom(flags.state);
    const ca = policy.tls.ca
      ? await loadCa(policy.tls.ca.cert, policy.tls.ca.key)
      : await ephemeralCa();
    // The audit trail goes where --audit-log or a policy file path says; a
    // policy's "stderr" would interleave with the command's own output, so
    // then only the summary is printed.
    const target = flags.auditLog ??
      (policy.audit.log.startsWith("/") ? policy.audit.log : undefined);
    audit = target ? await AuditLog.open(target) : undefined;
    summary = new RunSummary(audit);

    const tmp = await Deno.makeTempDir({ prefix: "sluice-run-" });
    res.add(() => Deno.remove(tmp, { recursive: true }));
    await Deno.chmod(tmp, 0o755);
    const net = flags.weak ? undefined : runNet(Deno.pid);
    const hostTable = net ? hostTableName(net) : "";
    if (net) {
      // Leftovers of runs that were killed go first; then this run's marker, before
      // anything exists, so a kill at any later point is recoverable.
      for (const ns of await recoverDeadRuns()) log(`sluice run: removed leftovers of ${ns}`);
      const start = (await processStart(Deno.pid)) ?? "";
      await writeMarker({ pid: Deno.pid, start, net, hostTable, tmp });
      marker.written = true;
    }
    trustFiles = writeTrustFiles(tmp, exportCaPem(ca));
    if (net) await createNamespace(net, res);
    const host = net?.hostAddr ?? "127.0.0.1";
    // Every violation (a request, a name, a DNS question) may end the command.
    const onViolation = (c: Credential) => {
      if (!terminates(c) || !signalTarget || terminatedFor) return;
      terminatedFor = c.name;
      log(
        `sluice: credential ${c.name} was headed to a host outside its scope; ending the command`,
      );
      signalTarget("SIGTERM");
      killTimer = setTimeout(() => signalTarget?.("SIGKILL"), 5000);
    };
    // Freed native memory goes back to the system, as under `sluice serve` (lib/ops/memory.ts).
    startTrimmer();
    // The same startup as `sluice serve` (lib/gateway/startup.ts), on the host side of the veth.
    const gateway = await startGateway({
      loaded,
      stateDir,
      ca,
      audit: summary,
      resolve: flags.resolve,
      listen: {
        proxy: { hostname: host, port: 0 },
        transparentHttps: net ? { hostname: host, port: 0 } : undefined,
        transparentHttp: net ? { hostname: host, port: 0 } : undefined,
        dns: net ? { hostname: host, port: 0 } : undefined,
      },
      onViolation,
      dataPath: parseDataPath(flags.dataPath ?? Deno.env.get("SLUICE_DATA_PATH")),
      log,
    });
    const { placeholders, secrets } = gateway.brokerage();
    // The server closes the audit sink it was given (the summary, which closes the log).
    res.add(() => gateway.close(2000));
    const a = gateway.server.addrs;
    const dns = gateway.dns;
    if (net && dns) {
      const ipForwardBefore = await applyRunRules(
        net,
        {
          proxy: a.proxy!.port,
          https: a.transparentHttps!.port,
          http: a.transparentHttp!.port,
          dns: dns.udpAddr.port,
        },
        loaded.compiled,
        hostTable,
        res,
      );
      if (ipForwardBefore !== undefined) {
        const start = (await processStart(Deno.pid)) ?? "";
        await writeMarker({ pid: Deno.pid, start, net, hostTable, tmp, ipForwardBefore });
      }
    } else {
      log(
        "sluice run --weak: NOTHING IS ENFORCED. The command only gets HTTP(S)_PROXY and the CA variables;\n" +
          "  it can ignore them and reach anything the host can. Run without --weak (as root) to enforce.",
      );
    }

    const user = flags.user ? await lookupUser(flags.user) : undefined;
    const base = Deno.env.toObject();
    if (user) {
      // The command's own home and name, as a login would give them.
      if (user.home) base.HOME = user.home;
      base.USER = base.LOGNAME = user.name;
    }
    const trust = await trustFiles;
    const { env, withheld } = buildChildEnv({
      base,
      sourceVariables: credentialSources(loaded.compiled.policy, "env"),
      secretValues: [
        ...[...secrets.values()].map((s) => s.reveal()),
        ...gateway.brokerage().broker.clientCerts.revealKeys(),
        ...gateway.brokerage().material.map((v) => v.reveal()),
      ],
      placeholders: childPlaceholders(loaded.compiled.policy, placeholders),
      ca: caVariables(trust, base.JAVA_TOOL_OPTIONS),
      clear: flags.clearEnv,
      pass: flags.passEnv,
      proxy: net ? undefined : `http://${host}:${a.proxy!.port}`,
      ownSettings: ownTrustSettings(),
    });
    if (withheld.length && !flags.quiet) {
      log(`sluice run: withheld from the command (they hold a secret): ${withheld.join(", ")}`);
    }

    let ending: RunEnding;
    if (early) {
      ending = { kind: "signal", signal: early, number: signalNumber(early) ?? 0 };
    } else if (net) {
      const statusFile = `${tmp}/status.json`;
      const spec: InitSpec = {
        hideFiles: [
          ...credentialSources(loaded.compiled.policy, "file"),
          ...(policy.tls.ca ? [policy.tls.ca.key] : []),
        ],
        hideDirs: [
          stateDir,
          ...(Deno.env.get("CREDENTIALS_DIRECTORY")
            ? [Deno.env.get("CREDENTIALS_DIRECTORY")!]
            : []),
        ].filter((d) => !`${tmp}/`.startsWith(`${d.replace(/\/+$/, "")}/`)),
        user: user ? { uid: user.uid, gid: user.gid } : undefined,
        statusFile,
        workDir: tmp,
        argv: cmd,
      };
      const self = selfCommand();
      spec.unsetForCommand = Object.keys(self.env).filter((k) => env[k] === undefined);
      // setpriv --pdeathsig: if sluice dies (even by SIGKILL), the sandbox goes with it
      // (unshare --kill-child passes the signal on to the init, whose end ends the namespace).
      const argv = [
        "setpriv",
        "--pdeathsig=SIGKILL",
        "--",
        "ip",
        "netns",
        "exec",
        net.ns,
        "unshare",
        "--pid",
        "--fork",
        "--mount",
        "--mount-proc",
        "--kill-child=SIGKILL",
        "--",
        ...self.argv,
        "__run-init",
        JSON.stringify(spec),
      ];
      const child = new Deno.Command(argv[0], {
        args: argv.slice(1),
        env: { ...self.env, ...env },
        clearEnv: true,
        stdin: "inherit",
        stdout: "inherit",
        stderr: "inherit",
      }).spawn();
      // Signals wait until the init handles them: PID 1 would drop them before.
      const init = readyInit(child.pid, tmp);
      signalTarget = (sig) => {
        // SIGKILL goes to unshare, which kills the init with it; the rest to the init,
        // which passes them on to the command.
        if (sig === "SIGKILL") {
          try {
            child.kill("SIGKILL");
          } catch { /* already gone */ }
          return;
        }
        void init.then((pid) => {
          try {
            if (pid) Deno.kill(pid, sig);
          } catch { /* already gone */ }
        });
      };
      const status = await child.status;
      let reported: InitStatus | undefined;
      try {
        reported = JSON.parse(await Deno.readTextFile(statusFile));
      } catch { /* the init did not get that far */ }
      ending = terminatedFor
        ? { kind: "terminated", credential: terminatedFor }
        : reported?.signal
        ? { kind: "signal", signal: reported.signal, number: signalNumber(reported.signal) ?? 0 }
        : reported?.notFound
        ? { kind: "not-found" }
        : reported
        ? { kind: "exited", code: reported.code! }
        : status.signal
        ? { kind: "signal", signal: status.signal, number: signalNumber(status.signal) ?? 0 }
        : status.code === 125
        ? { kind: "failed" }
        : { kind: "exited", code: status.code };
    } else {
      let child: Deno.ChildProcess;
      try {
        child = new Deno.Command(cmd[0], {
          args: cmd.slice(1),
          env,
          clearEnv: true,
          stdin: "inherit",
          stdout: "inherit",
          stderr: "inherit",
        }).spawn();
      } catch (e) {
        const notFound = e instanceof Deno.errors.NotFound;
        log(`sluice run: ${cmd[0]}: ${notFound ? "command not found" : (e as Error).message}`);
        ending = notFound ? { kind: "not-found" } : { kind: "failed" };
        if (!flags.quiet) log(summary.render(describeEnding(ending)));
        return exitStatus(ending);
      }
      signalTarget = (sig) => {
        try {
          child.kill(sig);
        } catch { /* already gone */ }
      };
      const status = await child.status;
      ending = terminatedFor
        ? { kind: "terminated", credential: terminatedFor }
        : status.signal
        ? { kind: "signal", signal: status.signal, number: signalNumber(status.signal) ?? 0 }
        : { kind: "exited", code: status.code };
    }
    signalTarget = undefined;
    clearTimeout(killTimer);
    if (!flags.quiet) log(summary.render(describeEnding(ending)));
    return exitStatus(ending);
  } catch (e) {
    log(`sluice run: ${(e as Error).message}`);
    if (summary && !flags.quiet) log(summary.render(describeEnding({ kind: "failed" })));
    return exitStatus({ kind: "failed" });
  } finally {
    // The signal handlers (forwarding to a command that has ended: nothing) stay until the
    // cleanup below is done, so that a second Ctrl-C cannot kill sluice with its namespace and
    // rules half removed.
    await trustFiles?.catch(() => undefined);
    const errors = await res.release();
    for (const e of errors) log(`sluice run: cleanup: ${e}`);
    // Closed here too in case the server never started; AuditLog.close is idempotent.
    await summary?.close();
    if (marker.written) await removeMarker(Deno.pid);
    for (const [sig, h] of forward) {
      try {
        Deno.removeSignalListener(sig, h);
      } catch { /* not added */ }
    }
  }
}
