import { assertEquals, assertThrows } from "../../_assert.ts";
import { makeLogger, resolveLogFormat } from "../../../lib/ops/log.ts";

/** [name, flag, terminal, format] */
const formats: [string, string | undefined, boolean, string][] = [
  ["chooses text on a terminal", undefined, true, "text"],
  ["chooses json when not a terminal", undefined, false, "json"],
  ["treats auto like no flag", "auto", false, "json"],
  ["obeys an explicit text", "text", false, "text"],
  ["obeys an explicit json", "json", true, "json"],
];
for (const [name, flag, tty, want] of formats) {
  Deno.test(`resolveLogFormat() ${name}`, () => assertEquals(resolveLogFormat(flag, tty), want));
}

Deno.test("resolveLogFormat() names a bad flag", () => {
  const e = assertThrows(() => resolveLogFormat("xml", true), Error);
  assertEquals(e.message, '--log-format "xml" is not text, json or auto');
});

Deno.test("makeLogger() writes one JSON object per line in json format", () => {
  const lines: string[] = [];
  makeLogger("json", (l) => lines.push(l))("reloaded\nsecond line", { generation: 2 });
  const obj = JSON.parse(lines[0]);
  assertEquals([lines.length, obj.msg, obj.generation], [1, "reloaded\nsecond line", 2]);
});
