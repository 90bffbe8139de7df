import { assertEquals, assertMatch } from "../../_assert.ts";
import { AuditLog } from "../../../lib/ops/audit.ts";

Deno.test("AuditLog writes one JSON line per record, time first, to a file it appends to", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/audit.jsonl`;
    await Deno.writeTextFile(path, "earlier\n", { mode: 0o600 });
    const log = await AuditLog.open(path, () => new Date("2026-01-02T03:04:05.000Z"));
    log.write({
      event: "request",
      conn: 1,
      mode: "explicit",
      verdict: "deny",
      code: "default",
      reason: "r",
    });
    log.write({
      event: "connection",
      conn: 2,
      mode: "transparent",
      verdict: "allow",
      code: "allow-rule",
      reason: "s",
    });
    await log.close();
    const lines = (await Deno.readTextFile(path)).trimEnd().split("\n");
    assertEquals(lines.length, 3);
    assertEquals(lines[0], "earlier");
    assertMatch(lines[1], /^\{"time":"2026-01-02T03:04:05\.000Z","event":"request","conn":1,/);
    assertEquals(JSON.parse(lines[2]).conn, 2);
    // An existing file keeps its mode; a new one is created without world access.
    assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);
    const fresh = await AuditLog.open(`${dir}/new.jsonl`);
    await fresh.close();
    assertEquals((await Deno.stat(`${dir}/new.jsonl`)).mode! & 0o007, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("AuditLog batches a burst of records into one flush", async () => {
  const log = AuditLog.memory();
  for (let i = 0; i < 100; i++) {
    log.write({
      event: "request",
      conn: i,
      mode: "explicit",
      verdict: "allow",
      code: "allow-rule",
      reason: "",
    });
  }
  assertEquals(log.records.length, 0);
  await new Promise((r) => setTimeout(r, 10));
  assertEquals(log.records.length, 100);
  assertEquals(log.records[99].conn, 99);
});

Deno.test("AuditLog reports records it cannot write instead of throwing from its timer", async () => {
  const dir = await Deno.makeTempDir();
  const log = await AuditLog.open(`${dir}/audit.jsonl`);
  await log.close();
  const errors: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => void errors.push(args.join(" "));
  try {
    // Written after close: the flush on the next macrotask fails; it must not throw.
    log.write({ event: "request", verdict: "allow", code: "allow-rule", reason: "late" });
    await new Promise((r) => setTimeout(r, 20));
  } finally {
    console.error = original;
    await Deno.remove(dir, { recursive: true });
  }
  assertEquals(errors.length, 1);
  assertMatch(errors[0], /^sluice: audit: 1 record\(s\) could not be written: /);
});

Deno.test("AuditLog.close() twice is fine: the server and sluice run both close the log they share", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const log = await AuditLog.open(`${dir}/audit.jsonl`);
    log.write({ event: "request", verdict: "allow", code: "allow-rule", reason: "x" });
    await log.close();
    await log.close();
    assertEquals((await Deno.readTextFile(`${dir}/audit.jsonl`)).split("\n").length, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
