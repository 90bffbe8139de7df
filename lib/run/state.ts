/**
 * What a `sluice run` leaves on the host while it runs, written down so that
 * a run killed with SIGKILL (or a host power cut mid-run) can be cleaned up
 * by the next `sluice run`.
 *
 * Each run writes a marker `/run/sluice/runs/<pid>.json` (tmpfs: it goes
 * away on reboot, exactly like the namespaces it describes) BEFORE it
 * creates anything, naming everything it will create. A run removes its own
 * marker after its cleanup. At start, every run looks at the markers: one
 * whose process is gone (no such pid, or the pid now belongs to a process
 * that started at another time) describes a dead run, whose leftovers are
 * removed: its processes, namespace, veth, host table, /etc/netns entry and
 * temp directory. Runs that are still alive are never touched.
 *
 * @module
 */
import { type RunNet, runNet } from "./namespace.ts";
import { trySh } from "../ops/command.ts";
import { statField } from "../ops/proc_stat.ts";

/** Where markers live. Root-only (0700). */
export const RUN_STATE_DIR = "/run/sluice/runs";

/** One run's marker. */
export type RunMarker = {
  pid: number;
  /** The process's start time (clock ticks since boot, /proc/PID/stat field 22): tells pid reuse apart. */
  start: string;
  net: RunNet;
  /** The run's host nftables table. */
  hostTable: string;
  /** The run's temp directory. */
  tmp?: string;
  /** ip_forward before this run set it, when it did. */
  ipForwardBefore?: string;
};

/** The start time of a live process, or undefined when there is none. */
export async function processStart(pid: number): Promise<string | undefined> {
  try {
    return statField(await Deno.readTextFile(`/proc/${pid}/stat`), 22);
  } catch {
    return undefined;
  }
}

/** Writes (or rewrites) this run's marker. */
export async function writeMarker(m: RunMarker, dir = RUN_STATE_DIR): Promise<void> {
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = `${dir}/.${m.pid}.json.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(m), { mode: 0o600 });
  await Deno.rename(tmp, `${dir}/${m.pid}.json`);
}

/** Removes this run's marker. */
export async function removeMarker(pid: number, dir = RUN_STATE_DIR): Promise<void> {
  await Deno.remove(`${dir}/${pid}.json`).catch(() => {});
}

/** Removes everything a dead run's marker names; each step tolerates absence. */
export async function removeLeftovers(m: RunMarker): Promise<void> {
  // Processes first: a namespace whose processes still run cannot disappear.
  const pids = ((await trySh(["ip", "netns", "pids", m.net.ns])) ?? "").split(/\s+/).filter(
    Boolean,
  );
  for (const p of pids) {
    try {
      Deno.kill(Number(p), "SIGKILL");
    } catch { /* gone */ }
  }
  await trySh(["ip", "netns", "del", m.net.ns]);
  await trySh(["ip", "link", "del", m.net.hostIf]);
  await trySh(["nft", "delete", "table", "inet", m.hostTable]);
  await Deno.remove(`/etc/netns/${m.net.ns}`, { recursive: true }).catch(() => {});
  if (m.tmp) await Deno.remove(m.tmp, { recursive: true }).catch(() => {});
}

/**
 * Cleans up after every dead run: those with a marker, and namespaces named
 * like a run (`sluice-run-PID`) whose process is gone (left by versions
 * without markers).
 *
 * @returns the namespaces cleaned up, for a log line
 */
export async function recoverDeadRuns(dir = RUN_STATE_DIR): Promise<string[]> {
  const cleaned: string[] = [];
  const live: RunMarker[] = [];
  const dead: RunMarker[] = [];
  const seen = new Set<string>();
  try {
    for await (const e of Deno.readDir(dir)) {
      if (!/^\d+\.json$/.test(e.name)) continue;
      let m: RunMarker;
      try {
        m = JSON.parse(await Deno.readTextFile(`${dir}/${e.name}`));
      } catch {
        continue;
      }
      seen.add(m.net.ns);
      ((await processStart(m.pid)) === m.start ? live : dead).push(m);
    }
  } catch { /* no directory: no markers */ }
  for (const m of dead) {
    await removeLeftovers(m);
    // ip_forward goes back only when no live run also depends on it.
    if (m.ipForwardBefore !== undefined && !live.some((l) => l.ipForwardBefore !== undefined)) {
      await Deno.writeTextFile("/proc/sys/net/ipv4/ip_forward", m.ipForwardBefore).catch(() => {});
    }
    await removeMarker(m.pid, dir);
    cleaned.push(m.net.ns);
  }
  for (const line of ((await trySh(["ip", "netns", "list"])) ?? "").split("\n")) {
    const match = /^sluice-run-(\d+)\b/.exec(line);
    if (!match || seen.has(`sluice-run-${match[1]}`)) continue;
    const pid = Number(match[1]);
    if (await processStart(pid)) continue; // some process has that pid: leave it
    const net = runNet(pid);
    await removeLeftovers({ pid, start: "", net, hostTable: hostTableName(net) });
    cleaned.push(net.ns);
  }
  return cleaned;
}

/** The host-side table of a run (nft table names are at most 20 characters here). */
export function hostTableName(net: RunNet): string {
  return `sluice_r${net.ns.replace(/\D/g, "")}`.slice(0, 20);
}
