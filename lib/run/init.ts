/**
 * The first process inside a `sluice run` sandbox (`sluice __run-init`),
 * started by lib/cli/run.ts as
 *
 *   ip netns exec NS  unshare --pid --fork --mount --mount-proc --kill-child  sluice __run-init SPEC
 *
 * so it is PID 1 of a fresh PID namespace, in a private mount namespace, in
 * the run's network namespace, still with root's capabilities. Before the
 * command starts it:
 *   1. masks what could hold a real secret or undo the sandbox: the
 *      credential source files and directories, sluice's state directory
 *      and CA key (each covered by an empty read-only mount), and /dev
 *      (replaced by a minimal one: no block devices to read a disk raw);
 *   2. starts the command through `setpriv` with a bounding set that lacks
 *      the capabilities that could change netfilter rules or namespaces,
 *      read other processes' memory, or remove the masks
 *      ({@link DROPPED_CAPABILITIES}), so a command running as root stays
 *      confined; `--user` switches uid/gid there too.
 * Then it forwards signals to the command, waits, and reports how the
 * command ended in the status file (an init cannot re-raise a signal on
 * itself: PID 1 ignores it).
 *
 * The command is PID 2, so it keeps ordinary signal semantics (SIGTERM,
 * SIGSEGV, `kill -USR1 $$` all behave as outside), and every process it
 * leaves behind ends with the run (the namespace ends with its PID 1).
 *
 * @module
 */

/** What the init needs; passed as one JSON argument (no secrets in it). */
export type InitSpec = {
  /** Files to cover with an empty read-only file. */
  hideFiles: string[];
  /** Directories to cover with an empty read-only directory. */
  hideDirs: string[];
  /** Switch to this uid/gid (with the user's groups) before exec. */
  user?: { uid: number; gid: number };
  /** Where to write `{"code": N}` or `{"signal": "SIGSEGV"}` when the command ends. */
  statusFile: string;
  /** A directory of the run (removed by sluice afterwards) for the init's scratch files. */
  workDir: string;
  /** The command and its arguments. */
  argv: string[];
  /** Variables the init needed for itself (e.g. DENO_DIR) that the command must not get. */
  unsetForCommand?: string[];
};

/**
 * Capabilities removed from the command's bounding set, and why each: with
 * any of them a root command could undo its confinement or read a secret.
 */
export const DROPPED_CAPABILITIES: readonly string[] = [
  "net_admin", // change or delete the namespace's netfilter rules, routes, addresses
  "net_raw", // raw sockets: craft packets
  "sys_admin", // mount/umount (remove masks), setns into other namespaces, new namespaces
  "sys_ptrace", // read other processes' memory
  "sys_module", // load kernel modules
  "sys_rawio", // /dev/mem, /proc/kcore, raw device I/O
  "dac_read_search", // open_by_handle_at: open files behind a mask
  "mknod", // create a block device node to read a disk raw
  "bpf", // load BPF programs
  "perfmon", // read kernel and other processes' data through perf
  "syslog", // read kernel logs and pointers
  "sys_boot", // reboot the host
  "mac_admin",
  "mac_override",
];

/** How the command ended, as written to the status file. */
export type InitStatus = { code: number; signal?: undefined; notFound?: boolean } | {
  signal: string;
  code?: number;
  notFound?: undefined;
};

/** The file the init creates in its work directory once it passes signals on. */
export const READY_FILE = "init-ready";

/** Signals the init passes on to the command. */
const FORWARDED: Deno.Signal[] = [
  "SIGHUP",
  "SIGINT",
  "SIGQUIT",
  "SIGTERM",
  "SIGUSR1",
  "SIGUSR2",
  "SIGWINCH",
  "SIGCONT",
  "SIGALRM",
];

/** Device nodes the minimal /dev keeps (bound from the real /dev). */
const DEVICES = ["null", "zero", "full", "random", "urandom", "tty"];

async function mount(args: string[]): Promise<void> {
  const out = await new Deno.Command("mount", { args, stderr: "piped", stdout: "null" }).output();
  if (!out.success) {
    throw new Error(`mount ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

async function kind(path: string): Promise<"file" | "dir" | undefined> {
  try {
    const s = await Deno.stat(path);
    return s.isDirectory ? "dir" : "file";
  } catch {
    return undefined;
  }
}

/** Covers each path with an empty read-only file or directory. */
async function hide(spec: InitSpec): Promise<void> {
  const empty = await Deno.makeTempDir({ dir: spec.workDir, prefix: "mask-" });
  const emptyFile = `${empty}/empty`;
  await Deno.writeTextFile(emptyFile, "", { mode: 0o444 });
  for (const p of [...spec.hideFiles, ...spec.hideDirs]) {
    const k = await kind(p);
    if (k === "file") await mount(["--bind", "-o", "ro", emptyFile, p]);
    else if (k === "dir") {
      await mount(["-t", "tmpfs", "-o", "ro,size=4k,mode=0555", "sluice-masked", p]);
    }
  }
}

/** Replaces /dev with a tmpfs holding only the character devices a command needs. */
async function minimalDev(workDir: string): Promise<void> {
  const dev = await Deno.makeTempDir({ dir: workDir, prefix: "dev-" });
  await mount(["-t", "tmpfs", "-o", "nosuid,noexec,mode=0755,size=64k", "sluice-dev", dev]);
  for (const d of DEVICES) {
    if (!(await kind(`/dev/${d}`))) continue;
    await Deno.writeTextFile(`${dev}/${d}`, "");
    await mount(["--bind", `/dev/${d}`, `${dev}/${d}`]);
  }
  for (const d of ["pts", "shm", "mqueue"]) {
    if ((await kind(`/dev/${d}`)) !== "dir") continue;
    await Deno.mkdir(`${dev}/${d}`);
    await mount(["--rbind", `/dev/${d}`, `${dev}/${d}`]);
  }
  const links: [string, string][] = [
    ["fd", "/proc/self/fd"],
    ["stdin", "/proc/self/fd/0"],
    ["stdout", "/proc/self/fd/1"],
    ["stderr", "/proc/self/fd/2"],
    ["ptmx", "pts/ptmx"],
  ];
  for (const [name, target] of links) await Deno.symlink(target, `${dev}/${name}`);
  await mount(["--move", dev, "/dev"]);
}

/** Finds the command on PATH as the shell would; undefined when not found. */
async function lookup(cmd: string, path: string | undefined): Promise<string | undefined> {
  const candidates = cmd.includes("/")
    ? [cmd]
    : (path ?? "/usr/local/bin:/usr/bin:/bin").split(":").map((d) => `${d || "."}/${cmd}`);
  for (const c of candidates) {
    try {
      const s = await Deno.stat(c);
      if (s.isFile) return c;
    } catch { /* next */ }
  }
  return undefined;
}

/**
 * Runs as PID 1 of the sandbox; returns the exit status for the init.
 *
 * @param specJson the {@link InitSpec} as JSON
 */
export async function runInit(specJson: string): Promise<number> {
  const spec = JSON.parse(specJson) as InitSpec;
  const report = (s: InitStatus) => Deno.writeTextFileSync(spec.statusFile, JSON.stringify(s));
  // Handlers first: PID 1 ignores every signal it has no handler for, so until they exist
  // sluice holds signals back (it waits for READY_FILE). Signals that arrive before the
  // command exists are passed on as soon as it does.
  let child: Deno.ChildProcess | undefined;
  const early: Deno.Signal[] = [];
  const deliver = (sig: Deno.Signal) => {
    if (!child) return void early.push(sig);
    try {
      child.kill(sig);
    } catch { /* already gone */ }
  };
  // With a terminal, Ctrl-C and Ctrl-\ already reach the command (same process group):
  // forwarding them too would deliver each twice.
  const tty = Deno.stdin.isTerminal();
  const forwarded = FORWARDED.filter((s) => !(tty && (s === "SIGINT" || s === "SIGQUIT")));
  const handlers = forwarded.map((sig) => [sig, () => deliver(sig)] as const);
  for (const [sig, h] of handlers) Deno.addSignalListener(sig, h);
  Deno.writeTextFileSync(`${spec.workDir}/${READY_FILE}`, "");
  try {
    await hide(spec);
    await minimalDev(spec.workDir);
  } catch (e) {
    console.error(`sluice run: cannot set up the sandbox: ${(e as Error).message}`);
    return 125;
  }
  for (const name of spec.unsetForCommand ?? []) Deno.env.delete(name);
  if (!(await lookup(spec.argv[0], Deno.env.get("PATH")))) {
    console.error(`sluice run: ${spec.argv[0]}: command not found`);
    report({ code: 127, notFound: true });
    return 127;
  }
  const args = [`--bounding-set=${DROPPED_CAPABILITIES.map((c) => `-${c}`).join(",")}`];
  if (spec.user) {
    args.push(`--reuid=${spec.user.uid}`, `--regid=${spec.user.gid}`, "--init-groups");
  }
  try {
    child = new Deno.Command("setpriv", {
      args: [...args, "--", ...spec.argv],
      stdin: "inherit",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
  } catch (e) {
    console.error(`sluice run: cannot start ${spec.argv[0]}: ${(e as Error).message}`);
    return 125;
  }
  for (const sig of early.splice(0)) deliver(sig);
  const status = await child.status;
  for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  if (status.signal) {
    report({ signal: status.signal });
    return 128 + (signalNumber(status.signal) ?? 0);
  }
  report({ code: status.code });
  return status.code;
}

/** Linux signal numbers (x86-64, arm64, and most other architectures) by name. */
export const SIGNAL_NUMBERS: Readonly<Record<string, number>> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGTRAP: 5,
  SIGABRT: 6,
  SIGIOT: 6,
  SIGBUS: 7,
  SIGFPE: 8,
  SIGKILL: 9,
  SIGUSR1: 10,
  SIGSEGV: 11,
  SIGUSR2: 12,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
  SIGSTKFLT: 16,
  SIGCHLD: 17,
  SIGCONT: 18,
  SIGSTOP: 19,
  SIGTSTP: 20,
  SIGTTIN: 21,
  SIGTTOU: 22,
  SIGURG: 23,
  SIGXCPU: 24,
  SIGXFSZ: 25,
  SIGVTALRM: 26,
  SIGPROF: 27,
  SIGWINCH: 28,
  SIGIO: 29,
  SIGPOLL: 29,
  SIGPWR: 30,
  SIGSYS: 31,
};

/** The number of a signal by name; undefined for a name this table does not know. */
export function signalNumber(name: string): number | undefined {
  return SIGNAL_NUMBERS[name];
}
