/**
 * Running a recipe's text: in its own session (setsid), so a timeout or a Ctrl-C reaches every
 * process the recipe started (deno task, sluice, npm), as a terminal's would.
 *
 * @module
 */

/** What a finished script did. */
export type Ran = { code: number; stdout: string; stderr: string; timedOut: boolean };

/** How to run one script. */
export type ScriptOptions = {
  /** The shell and its flags, e.g. `["sh"]`, or `["bash", "--noprofile", "--norc", "-eo", "pipefail"]` as Actions does. */
  shell: string[];
  cwd: string;
  /** The whole environment (nothing is inherited). */
  env: Record<string, string>;
  timeoutMs?: number;
};

/** Signals the script's whole process group. */
export async function signalGroup(pid: number, signal: "INT" | "TERM" | "KILL"): Promise<void> {
  await new Deno.Command("kill", { args: [`-${signal}`, "--", `-${pid}`], stderr: "null" })
    .output();
}

function spawn(script: string, o: ScriptOptions, stdout: "piped" | "null" = "piped") {
  return new Deno.Command("setsid", {
    args: [...o.shell, "-c", script],
    cwd: o.cwd,
    env: o.env,
    clearEnv: true,
    stdin: "null",
    stdout,
    stderr: "piped",
  }).spawn();
}

/** Runs `script` to its end (or kills its group after `timeoutMs`, default 45 s). */
export async function runScript(script: string, o: ScriptOptions): Promise<Ran> {
  const child = spawn(script, o);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    signalGroup(child.pid, "TERM");
    setTimeout(() => signalGroup(child.pid, "KILL"), 5000);
  }, o.timeoutMs ?? 45_000);
  try {
    const out = await child.output();
    const dec = new TextDecoder();
    return {
      code: out.code,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
      timedOut,
    };
  } finally {
    clearTimeout(timer);
  }
}

/** A script left running in the background (a server), with its stderr collected as it comes. */
export type Background = {
  /** Everything on stderr so far. */
  stderr(): string;
  /** Waits until stderr matches `re`; throws with stderr when the script ends first or after `ms`. */
  waitFor(re: RegExp, ms: number): Promise<void>;
  /** Sends `signal` to the whole group and returns the exit status (KILL after 10 s). */
  stop(signal: "INT" | "TERM"): Promise<number>;
};

/** Starts `script` in the background; its stdout is discarded. */
export function startScript(script: string, o: ScriptOptions): Background {
  const child = spawn(script, o, "null");
  let text = "";
  let ended = false;
  const pump = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) text += chunk;
    ended = true;
  })();
  const status = child.status;
  return {
    stderr: () => text,
    async waitFor(re, ms) {
      const end = Date.now() + ms;
      while (!re.test(text)) {
        if (ended || Date.now() > end) {
          await signalGroup(child.pid, "KILL");
          await status;
          await pump;
          throw new Error(
            `waiting for ${re} ${ended ? "but the script ended" : "timed out"}:\n${text}`,
          );
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async stop(signal) {
      await signalGroup(child.pid, signal);
      const kill = setTimeout(() => signalGroup(child.pid, "KILL"), 10_000);
      const s = await status;
      clearTimeout(kill);
      await pump;
      return s.code;
    },
  };
}
