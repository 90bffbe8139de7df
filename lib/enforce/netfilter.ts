/**
 * Applies and removes the rulesets that lib/enforce/nft_render.ts and
 * lib/enforce/iptables_render.ts render, through `nft` / `iptables` / `ip6tables`
 * (Deno.Command). Needs CAP_NET_ADMIN; every function takes `netns` to run
 * inside a named network namespace (tests never touch the host's ruleset).
 *
 * `netns` runs commands through `nsenter --net=/run/netns/<ns>` rather than
 * `ip netns exec`: the latter also remounts /sys, which hides the cgroup2
 * mount that nft needs to resolve `socket cgroupv2` paths.
 *
 * @module
 */
import type { HostSetEntry } from "./nft_render.ts";
import { renderAddElements, renderNft } from "./nft_render.ts";
import { checkTableName, type EnforceSpec } from "./spec.ts";
import type { IptablesRules } from "./iptables_render.ts";
import { renderIptables, renderIptablesRemove } from "./iptables_render.ts";
import {
  type CommandResult,
  type CommandRunner,
  type CommandRunnerSync,
  denoRunner,
  denoRunnerSync,
} from "../ops/command.ts";

/** Options shared by every function here. */
export type NetfilterOptions = {
  /** A namespace under /run/netns (as `ip netns add` creates) to act in. */
  netns?: string;
  /** How to run commands; the default spawns them with Deno.Command. */
  run?: CommandRunner;
  /** How the synchronous removal runs commands; the default is Deno.Command's outputSync. */
  runSync?: CommandRunnerSync;
  /** iptables programs, e.g. `{ v4: "iptables-legacy", v6: "ip6tables-legacy" }`. */
  iptables?: { v4: string; v6: string };
};

/** A backend that can enforce, or none. */
export type Backend = "nftables" | "iptables" | "none";

/** A netfilter command failed. Carries the command, its stderr and, for nft, the failing input line. */
export class NetfilterError extends Error {
  override name = "NetfilterError";
  /** The argv that failed (without the nsenter prefix). */
  command: readonly string[];
  stderr: string;
  /** 1-based line of the nft input that nft complained about, if it said. */
  line?: number;
  lineText?: string;

  constructor(
    message: string,
    details: { command: readonly string[]; stderr: string; line?: number; lineText?: string },
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.command = details.command;
    this.stderr = details.stderr;
    this.line = details.line;
    this.lineText = details.lineText;
  }
}

function prefix(opts: NetfilterOptions | undefined): string[] {
  if (!opts?.netns) return [];
  if (!/^[A-Za-z0-9_.-]+$/.test(opts.netns)) {
    throw new NetfilterError(`netns ${JSON.stringify(opts.netns)} is not a namespace name`, {
      command: [],
      stderr: "",
    });
  }
  return ["nsenter", `--net=/run/netns/${opts.netns}`];
}

function exec(argv: string[], opts?: NetfilterOptions, stdin?: string): Promise<CommandResult> {
  return (opts?.run ?? denoRunner)([...prefix(opts), ...argv], stdin);
}

/**
 * A command sequence whose next command may depend on the last result: it
 * yields argv and is resumed with how that went. Removal is written once as
 * such a sequence and driven either way, so the async path (normal exit) and
 * the sync path (crash handlers) can never drift apart.
 */
type Steps = Generator<string[], void, CommandResult>;

async function drive(steps: Steps, opts?: NetfilterOptions): Promise<void> {
  for (let next = steps.next(); !next.done;) next = steps.next(await exec(next.value, opts));
}

function driveSync(steps: Steps, opts?: NetfilterOptions): void {
  const run = opts?.runSync ?? denoRunnerSync;
  for (let next = steps.next(); !next.done;) {
    next = steps.next(run([...prefix(opts), ...next.value]));
  }
}

/**
 * Chooses the backend: `auto` is nftables when `nft --version` runs, else
 * iptables when `iptables --version` runs. Enforcement that was asked for is
 * never silently dropped: when the chosen (or any, for auto) program is
 * missing this throws rather than returning "none".
 *
 * @throws {NetfilterError} when the preferred backend's program does not run.
 */
export async function detectBackend(
  pref: "auto" | "nftables" | "iptables" | "none",
  opts?: Pick<NetfilterOptions, "run" | "iptables">,
): Promise<Backend> {
  if (pref === "none") return "none";
  const run = opts?.run ?? denoRunner;
  const works = async (argv: string[]) => (await run(argv)).code === 0;
  const ipt = opts?.iptables?.v4 ?? "iptables";
  if (pref !== "iptables" && await works(["nft", "--version"])) return "nftables";
  if (pref !== "nftables" && await works([ipt, "--version"])) return "iptables";
  const wanted = pref === "auto" ? `nft or ${ipt}` : pref === "nftables" ? "nft" : ipt;
  throw new NetfilterError(
    `Cannot enforce: ${wanted} does not run here; install nftables (or iptables), or set enforce.backend: none`,
    { command: [pref === "iptables" ? ipt : "nft", "--version"], stderr: "" },
  );
}

function nftFailure(what: string, argv: string[], text: string, r: CommandResult): NetfilterError {
  const stderr = r.stderr.trim();
  // nft reports `/dev/stdin:LINE:COL-COL: Error: ...` for input read from stdin.
  const m = stderr.match(/(?:\/dev\/stdin|-):(\d+):\d+(?:-\d+)?: Error: ([^\n]*)/);
  const line = m ? Number(m[1]) : undefined;
  const lineText = line ? text.split("\n")[line - 1] : undefined;
  const at = line ? ` at line ${line}: ${lineText?.trim()}` : "";
  return new NetfilterError(
    `${what} failed (exit ${r.code})${at}: ${m ? m[2] : stderr || "no error output"}` +
      (m ? "" : "; is this run as root (CAP_NET_ADMIN)?"),
    { command: argv, stderr, line, lineText },
  );
}

/**
 * Loads nft text (such as `renderNft` output) with `nft -f -` in one transaction.
 *
 * @throws {NetfilterError} with nft's stderr and the failing line of `text`.
 */
export async function applyNft(text: string, opts?: NetfilterOptions): Promise<void> {
  const argv = ["nft", "-f", "-"];
  const r = await exec(argv, opts, text);
  if (r.code !== 0) throw nftFailure("nft -f", argv, text, r);
}

/**
 * Checks nft text without applying it (`nft -c -f -`). nft still needs
 * CAP_NET_ADMIN for that, and cgroup paths must exist.
 *
 * @throws {NetfilterError} as {@link applyNft}.
 */
export async function checkNft(text: string, opts?: NetfilterOptions): Promise<void> {
  const argv = ["nft", "-c", "-f", "-"];
  const r = await exec(argv, opts, text);
  if (r.code !== 0) throw nftFailure("nft -c -f", argv, text, r);
}

function* nftRemoval(table: string): Steps {
  checkTableName(table);
  const argv = ["nft", "delete", "table", "inet", table];
  const r = yield argv;
  if (r.code === 0 || /No such file or directory|does not exist/i.test(r.stderr)) return;
  throw nftFailure(`nft delete table inet ${table}`, argv, "", r);
}

/**
 * Deletes `inet <table>`; a table that does not exist is not an error.
 *
 * @throws {NetfilterError} for any other failure.
 */
export async function removeNft(table: string, opts?: NetfilterOptions): Promise<void> {
  await drive(nftRemoval(table), opts);
}

/**
 * Adds (or refreshes) host-set elements: see `renderAddElements`. nft only.
 *
 * @throws {NetfilterError} e.g. when the table or set does not exist.
 */
export async function addHostSetElements(
  table: string,
  entries: readonly HostSetEntry[],
  opts?: NetfilterOptions & { sets?: { 4: string; 6: string } },
): Promise<void> {
  const text = renderAddElements(table, entries, opts?.sets);
  if (text) await applyNft(text, opts);
}

const IPT_MISSING =
  /No chain\/target\/match|does a matching rule exist|Bad rule|doesn't exist|not exist/i;

function* iptablesRemoval(table: string, opts?: NetfilterOptions): Steps {
  const rules = renderIptablesRemove(table);
  const progs = opts?.iptables ?? { v4: "iptables", v6: "ip6tables" };
  for (const [fam, prog] of [["v4", progs.v4], ["v6", progs.v6]] as const) {
    for (const args of rules[fam]) {
      const argv = [prog, "-w", ...args];
      // A jump may have been inserted more than once: delete until none is left.
      for (let i = 0; i < (args.includes("-D") ? 32 : 1); i++) {
        const r = yield argv;
        if (r.code === 0) continue;
        if (IPT_MISSING.test(r.stderr)) break;
        throw new NetfilterError(
          `${argv.join(" ")} failed (exit ${r.code}): ${r.stderr.trim() || "no error output"}`,
          { command: argv, stderr: r.stderr.trim() },
        );
      }
    }
  }
}

/**
 * Removes every chain sluice may own for `table`, in both families; what does
 * not exist is skipped.
 *
 * @throws {NetfilterError} for failures other than "does not exist".
 */
export async function removeIptables(table: string, opts?: NetfilterOptions): Promise<void> {
  await drive(iptablesRemoval(table, opts), opts);
}

/**
 * Removes sluice's rules for `table` with the given backend, synchronously:
 * the same commands as {@link removeNft} / {@link removeIptables}, for
 * `error` and `unhandledrejection` handlers, after which the process exits
 * without running any more promises. What does not exist is skipped.
 *
 * @throws {NetfilterError} for failures other than "does not exist".
 */
export function removeRulesSync(
  table: string,
  backend: "nftables" | "iptables",
  opts?: NetfilterOptions,
): void {
  driveSync(backend === "nftables" ? nftRemoval(table) : iptablesRemoval(table, opts), opts);
}

/**
 * Applies iptables rules (such as `renderIptables` output): removes the
 * table's chains first, then runs every command. On a failure it removes
 * what it added, so a half-applied ruleset is never left behind.
 *
 * @throws {NetfilterError} naming the command that failed and its stderr.
 */
export async function applyIptables(
  table: string,
  rules: IptablesRules,
  opts?: NetfilterOptions,
): Promise<void> {
  await removeIptables(table, opts);
  const progs = opts?.iptables ?? { v4: "iptables", v6: "ip6tables" };
  for (const [fam, prog] of [["v4", progs.v4], ["v6", progs.v6]] as const) {
    for (const args of rules[fam]) {
      const argv = [prog, "-w", ...args];
      const r = await exec(argv, opts);
      if (r.code === 0) continue;
      const err = new NetfilterError(
        `${argv.join(" ")} failed (exit ${r.code}): ${r.stderr.trim() || "no error output"}`,
        { command: argv, stderr: r.stderr.trim() },
      );
      await removeIptables(table, opts).catch(() => {});
      throw err;
    }
  }
}

/**
 * Resolves user names (or numeric strings, or numbers) to uids with `id -u`.
 *
 * @throws {NetfilterError} naming a user that does not exist.
 */
export async function resolveUids(
  users: readonly (string | number)[],
  opts?: Pick<NetfilterOptions, "run">,
): Promise<number[]> {
  const out: number[] = [];
  for (const u of users) {
    if (typeof u === "number" || /^\d+$/.test(u)) {
      out.push(Number(u));
      continue;
    }
    const argv = ["id", "-u", "--", u];
    const r = await (opts?.run ?? denoRunner)(argv);
    const uid = r.stdout.trim();
    if (r.code !== 0 || !/^\d+$/.test(uid)) {
      throw new NetfilterError(
        `enforce.subjects.users: no user ${
          JSON.stringify(u)
        } on this host; create it or remove it from the policy`,
        { command: argv, stderr: r.stderr.trim() },
      );
    }
    out.push(Number(uid));
  }
  return out;
}

/**
 * Where the cgroup2 root is mounted, relative to /sys/fs/cgroup, from
 * /proc/self/mountinfo: "" on unified hosts, "unified" on hybrid ones. This is
 * the spec's `cgroupPrefix` (nft resolves cgroup paths under /sys/fs/cgroup).
 * Undefined when no cgroup2 is mounted under /sys/fs/cgroup.
 */
export async function detectCgroupPrefix(): Promise<string | undefined> {
  const info = await Deno.readTextFile("/proc/self/mountinfo");
  for (const line of info.split("\n")) {
    const [left, right] = line.split(" - ");
    if (!right?.startsWith("cgroup2 ")) continue;
    const mountPoint = left.split(" ")[4];
    if (mountPoint === "/sys/fs/cgroup") return "";
    if (mountPoint?.startsWith("/sys/fs/cgroup/")) {
      return mountPoint.slice("/sys/fs/cgroup/".length);
    }
  }
  return undefined;
}

/**
 * This process's cgroup v2 path relative to the cgroup2 root ("" for the root
 * cgroup), from the `0::PATH` line of /proc/self/cgroup text; undefined when
 * there is none (no cgroup v2). Paths are relative to the cgroup namespace,
 * as the subject paths and the cgroup2 mount are.
 */
export function parseOwnCgroup(procSelfCgroup: string): string | undefined {
  const line = procSelfCgroup.split("\n").find((l) => l.startsWith("0::"));
  return line?.slice(3).replace(/ \(deleted\)$/, "").replace(/^\/+|\/+$/g, "");
}

/** This process's cgroup v2 path (see {@link parseOwnCgroup}); undefined when unknown. */
export async function ownCgroup(): Promise<string | undefined> {
  try {
    return parseOwnCgroup(await Deno.readTextFile("/proc/self/cgroup"));
  } catch {
    return undefined;
  }
}

/** Applied enforcement; removing it (or disposing it) deletes the rules. */
export type Enforcement = AsyncDisposable & {
  backend: "nftables" | "iptables";
  table: string;
  /** Removes the rules; safe to call more than once. */
  remove(): Promise<void>;
  /**
   * Removes the rules synchronously, for `error` / `unhandledrejection`
   * handlers that cannot await. Throws as `remove()` does.
   */
  removeSync(): void;
};

/**
 * Renders and applies `spec` with the given backend and returns a handle that
 * removes it: `await using e = await enforce(spec, { backend: "nftables" })`.
 *
 * @throws {EnforceSpecError} for an invalid spec, {@link NetfilterError} when applying fails.
 */
export async function enforce(
  spec: EnforceSpec,
  opts: NetfilterOptions & { backend: "nftables" | "iptables" },
): Promise<Enforcement> {
  const table = spec.table || "sluice";
  if (opts.backend === "nftables") await applyNft(renderNft(spec), opts);
  else await applyIptables(table, renderIptables(spec), opts);
  let removed = false;
  const remove = async () => {
    if (removed) return;
    if (opts.backend === "nftables") await removeNft(table, opts);
    else await removeIptables(table, opts);
    removed = true;
  };
  const removeSync = () => {
    if (removed) return;
    removeRulesSync(table, opts.backend, opts);
    removed = true;
  };
  return { backend: opts.backend, table, remove, removeSync, [Symbol.asyncDispose]: remove };
}
