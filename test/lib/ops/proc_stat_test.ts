import { assertEquals } from "../../_assert.ts";
import { statField } from "../../../lib/ops/proc_stat.ts";

const LINE = "4242 (deno) S 1 4242 4242 0 -1 4194560 100 0 0 0 731 88 0 0 20 0 9 0 123456 " +
  "1000 2000\n";
const ODD = "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 999 1 2";

const cases: [string, string, number, string | undefined][] = [
  ["leaves the pid and the name (fields 1, 2) alone", LINE, 2, undefined],
  ["reads the state (field 3)", LINE, 3, "S"],
  ["reads utime and stime (fields 14, 15)", LINE, 14, "731"],
  ["reads stime (field 15)", LINE, 15, "88"],
  ["reads starttime (field 22)", LINE, 22, "123456"],
  ["does not count the trailing newline as a field", LINE, 24, "2000"],
  ["is undefined past the last field", LINE, 25, undefined],
  ["counts fields after a name with spaces and parentheses", ODD, 14, "5"],
  ["reads the state after such a name", ODD, 3, "R"],
  ["is undefined for a line with no name", "garbage", 3, undefined],
];
for (const [name, line, n, want] of cases) {
  Deno.test(`statField() ${name}`, () => assertEquals(statField(line, n), want));
}

Deno.test("statField() reads this process's own line", () => {
  const line = Deno.readTextFileSync("/proc/self/stat");
  assertEquals(/^[A-Za-z]$/.test(statField(line, 3) ?? ""), true);
  assertEquals(/^\d+$/.test(statField(line, 22) ?? ""), true);
});
