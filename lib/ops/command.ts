/**
 * Running a program: the one command runner that netfilter (lib/enforce/netfilter.ts) and
 * `sluice run` (lib/run/) use. {@link denoRunner} never throws for a failing or missing
 * program, it reports a {@link CommandResult}; {@link sh} and {@link trySh} are the two ways
 * callers want that: throw with stderr, or shrug.
 *
 * @module
 */

/** The result of running one command. */
export type CommandResult = { code: number; stdout: string; stderr: string };

/** Runs argv (with optional stdin) and reports how it went; injectable for tests. */
export type CommandRunner = (argv: readonly string[], stdin?: string) => Promise<CommandResult>;

/**
 * Runs argv synchronously: for removal from `error` / `unhandledrejection`
 * handlers, where the process dies before any promise settles.
 */
export type CommandRunnerSync = (argv: readonly string[]) => CommandResult;

const TEXT = new TextDecoder();

function command(argv: readonly string[], stdin: "null" | "piped"): Deno.Command {
  return new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin,
    stdout: "piped",
    stderr: "piped",
  });
}

function result(out: Deno.CommandOutput): CommandResult {
  return { code: out.code, stdout: TEXT.decode(out.stdout), stderr: TEXT.decode(out.stderr) };
}

/** A program that could not be started: an ordinary failure the callers report or tolerate. */
function notStarted(argv: readonly string[], e: unknown): CommandResult {
  return { code: 127, stdout: "", stderr: `${argv[0]}: ${(e as Error).message}` };
}

/** The default runner: Deno.Command, stdout/stderr captured as text. */
export const denoRunner: CommandRunner = async (argv, stdin) => {
  let child: Deno.ChildProcess;
  try {
    child = command(argv, stdin === undefined ? "null" : "piped").spawn();
  } catch (e) {
    return notStarted(argv, e);
  }
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  return result(await child.output());
};

/** The synchronous default runner, for a dying process. */
export const denoRunnerSync: CommandRunnerSync = (argv) => {
  try {
    return result(command(argv, "null").outputSync());
  } catch (e) {
    return notStarted(argv, e);
  }
};

/**
 * Runs a command, throwing with its stderr when it fails.
 *
 * @param argv the program and its arguments
 * @returns its stdout
 * @throws {Error} naming the command and its stderr when it exits non-zero or is missing
 */
export async function sh(argv: string[]): Promise<string> {
  const r = await denoRunner(argv);
  if (r.code !== 0) throw new Error(`${argv.join(" ")} failed: ${r.stderr.trim()}`);
  return r.stdout;
}

/**
 * Runs a command; its stdout, or undefined when it is missing or fails (for optional steps).
 *
 * @param argv the program and its arguments
 * @returns its stdout, or undefined
 */
export async function trySh(argv: string[]): Promise<string | undefined> {
  const r = await denoRunner(argv);
  return r.code === 0 ? r.stdout : undefined;
}
