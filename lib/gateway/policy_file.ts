/**
 * Reading a policy file from disk: the one I/O step in front of the pure
 * `policy/` loader, so every caller (check, explain, serve, reload) reports
 * missing files and invalid policies the same way.
 *
 * @module
 */
import { type Loaded, loadPolicyText, PolicyError } from "../../policy/mod.ts";

/** Thrown when the policy file itself cannot be read (as opposed to being invalid). */
export class PolicyFileError extends Error {
  override name = "PolicyFileError";
}

/**
 * Reads and loads a policy file.
 *
 * @throws {PolicyFileError} when the file cannot be read
 * @throws {PolicyError} when the policy is invalid (every problem listed)
 */
export async function readPolicyFile(path: string): Promise<Loaded> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    const what = e instanceof Deno.errors.NotFound
      ? "no such file"
      : e instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : e instanceof Deno.errors.IsADirectory
      ? "it is a directory"
      : (e as Error).message;
    throw new PolicyFileError(`Cannot read policy ${path}: ${what}`, { cause: e });
  }
  return loadPolicyText(text, path);
}

export { PolicyError };
