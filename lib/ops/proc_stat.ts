/**
 * Reading a line of `/proc/PID/stat` (proc(5)): the one place its fields are counted.
 *
 * Field 2, the command name, is in parentheses and may itself hold spaces and parentheses, so
 * the fields are split after its last `)`, not on every space.
 *
 * @module
 */

/**
 * Field `n` of a `/proc/PID/stat` line, numbered as proc(5) numbers them (3 is the state, 14
 * utime, 15 stime, 22 starttime); undefined for a field the line does not have, and for the pid
 * and the name (fields 1 and 2), which nothing here reads.
 *
 * ```ts
 * import { statField } from "./proc_stat.ts";
 * statField("42 (a b) S 1 2 3", 4); // "1"
 * ```
 */
export function statField(stat: string, n: number): string | undefined {
  const close = stat.lastIndexOf(")");
  if (close < 0 || n < 3) return undefined;
  // Field 3 is the first after the name.
  return stat.slice(close + 2).trimEnd().split(" ")[n - 3];
}
