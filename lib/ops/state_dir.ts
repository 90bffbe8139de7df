/**
 * Where sluice keeps its state (the local CA today): one pure function, so every rule of the
 * lookup order is table-testable without touching the environment.
 *
 * @module
 */

/** The inputs of {@link resolveStateDir}, injected so the function stays pure. */
export interface StateDirInputs {
  /** The value of `--state DIR`, if given. */
  flag?: string;
  /** Reads an environment variable; returns undefined when it is unset. */
  env: (name: string) => string | undefined;
  /** The effective user id, or null where the platform has none (Windows). */
  uid: number | null;
  /** The home directory; defaults to `env("HOME")`. */
  home?: string;
}

/** Thrown by {@link resolveStateDir} when no rule yields a directory. */
export class StateDirError extends Error {
  /**
   * @param message what was missing and what to do
   */
  constructor(message: string) {
    super(message);
    this.name = "StateDirError";
  }
}

/** The system-wide state directory, used when running as root without other hints. */
export const SYSTEM_STATE_DIR = "/var/lib/sluice";

/**
 * Resolve sluice's state directory. The first rule that applies wins:
 *
 * 1. `--state DIR`
 * 2. `$SLUICE_STATE_DIR`
 * 3. `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`; a colon-separated list when the
 *    unit names several directories: the first is ours)
 * 4. `/var/lib/sluice` when running as root (uid 0)
 * 5. `$XDG_STATE_HOME/sluice` (only if it is absolute, as the XDG spec requires)
 * 6. `$HOME/.local/state/sluice`
 *
 * Empty values count as unset, so `SLUICE_STATE_DIR= sluice ...` falls through rather than
 * pointing at the current directory.
 *
 * @param inputs the flag, an environment reader, the uid and optionally the home directory
 * @returns the directory path (not created, not normalized beyond stripping one trailing slash)
 * @throws {StateDirError} when no rule applies (no flag, no variables, not root, no home)
 * @example
 * ```ts
 * import { resolveStateDir } from "./state_dir.ts";
 * const env = (name: string) => ({ HOME: "/home/ada" } as Record<string, string>)[name];
 * resolveStateDir({ env, uid: 1000 }); // "/home/ada/.local/state/sluice"
 * ```
 */
export function resolveStateDir(inputs: StateDirInputs): string {
  const set = (value: string | undefined): string | undefined =>
    value === undefined || value === "" ? undefined : value;

  const flag = set(inputs.flag);
  if (flag !== undefined) return trimSlash(flag);

  const own = set(inputs.env("SLUICE_STATE_DIR"));
  if (own !== undefined) return trimSlash(own);

  const systemd = set(inputs.env("STATE_DIRECTORY")?.split(":")[0]);
  if (systemd !== undefined) return trimSlash(systemd);

  if (inputs.uid === 0) return SYSTEM_STATE_DIR;

  // The XDG Base Directory spec says relative values are invalid and must be ignored.
  const xdg = set(inputs.env("XDG_STATE_HOME"));
  if (xdg !== undefined && xdg.startsWith("/")) return `${trimSlash(xdg)}/sluice`;

  const home = set(inputs.home ?? inputs.env("HOME"));
  if (home !== undefined) return `${trimSlash(home)}/.local/state/sluice`;

  throw new StateDirError(
    "Cannot choose a state directory: HOME is not set and sluice is not running as root; " +
      "pass --state DIR or set SLUICE_STATE_DIR",
  );
}

function trimSlash(path: string): string {
  return path.length > 1 && path.endsWith("/") ? path.slice(0, -1) : path;
}
