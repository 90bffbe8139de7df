/**
 * Runs the first-wave client (_first_wave_client.ts) in a process of its own, as real clients
 * are, and returns what it reports: for each of `names` fresh server names (n0.wave.test, ...),
 * `parallel` TLS connections at once to 127.0.0.1:`port`, each sending one request.
 */
import { assertEquals } from "../_assert.ts";

const CLIENT = new URL("./_first_wave_client.ts", import.meta.url).pathname;

/** How many connections got an HTTP response, and why the others did not. */
export type Wave = { answered: number; failures: Record<string, number> };

export async function firstWaveClient(
  port: number,
  caPath: string,
  names: number,
  parallel: number,
): Promise<Wave> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLIENT, String(port), caPath, String(names), String(parallel)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout).trim());
}
