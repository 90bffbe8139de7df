/**
 * Shared by the `sluice run` e2e tests: running sluice and collecting its
 * output with its pid, and what a run of a given sluice process left behind.
 */
import { ROOT, run } from "./_harness.ts";

/** What a `sluice run` printed, how it exited, and the pid of sluice (names its namespace). */
export type RunResult = { code: number; stdout: string; stderr: string; pid: number };

/** Spawns the command and collects its output and pid. */
export async function output(c: Deno.Command): Promise<RunResult> {
  const child = c.spawn();
  const o = await child.output();
  return {
    code: o.code,
    stdout: new TextDecoder().decode(o.stdout),
    stderr: new TextDecoder().decode(o.stderr),
    pid: child.pid,
  };
}

/**
 * `sluice run --policy POLICY --state DIR/state ARGS -- COMMAND` from the source tree,
 * with only `env` in the environment beyond what Deno.Command passes on. A string
 * command runs under `sh -c`.
 */
export function sluiceRunCommand(
  o: { policy: string; dir: string; args?: string[]; env?: Record<string, string> },
  command: string | string[],
): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}main.ts`,
      "run",
      "--policy",
      o.policy,
      "--state",
      `${o.dir}/state`,
      ...(o.args ?? []),
      "--",
      ...(typeof command === "string" ? ["sh", "-c", command] : command),
    ],
    env: o.env ?? {},
    stdout: "piped",
    stderr: "piped",
  });
}

/** Whether a path exists (without following a last symlink). */
export async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/**
 * What the run of sluice process `pid` could have left on the host. Specific to that pid:
 * other tests may be running `sluice run` at the same time.
 */
export async function leftovers(pid: number): Promise<string[]> {
  const found: string[] = [];
  if (new RegExp(`sluice-run-${pid}\\b`).test(await run(["ip", "netns", "list"]))) {
    found.push(`namespace sluice-run-${pid}`);
  }
  if (new RegExp(`\\bslh${pid}\\b`).test(await run(["ip", "-o", "link", "show"]))) {
    found.push("veth left");
  }
  if (new RegExp(`sluice_r${pid}\\b`).test(await run(["nft", "list", "tables"]))) {
    found.push(`table sluice_r${pid}`);
  }
  if (await exists(`/etc/netns/sluice-run-${pid}`)) found.push("/etc/netns entry left");
  if (await exists(`/run/sluice/runs/${pid}.json`)) found.push("marker left");
  return found;
}
