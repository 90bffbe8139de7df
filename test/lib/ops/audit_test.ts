import { assert, assertEquals, assertMatch } from "../../_assert.ts";
import { AuditLog, IsoTime } from "../../../lib/ops/audit.ts";

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

Deno.test("AuditLog writes the line JSON.stringify({ time, ...record }) gives, field order included", async () => {
  const log = AuditLog.memory();
  const lines: string[] = [];
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/audit.jsonl`;
    const file = await AuditLog.open(path, () => new Date("2026-01-02T03:04:05.006Z"));
    const record = {
      event: "request" as const,
      conn: 3,
      client: "10.0.0.2:5000",
      sni: undefined,
      host: 'a"b\n.test',
      verdict: "deny" as const,
      code: "default" as const,
      reason: "no rule",
      credentials: ["KEY"],
    };
    file.write(record);
    log.write(record);
    await file.close();
    await log.close();
    lines.push(...(await Deno.readTextFile(path)).split("\n"));
    assertEquals(lines, [
      JSON.stringify({ time: "2026-01-02T03:04:05.006Z", ...record }),
      "",
    ]);
    assertEquals(log.records.length, 1);
    assertEquals(log.records[0].host, 'a"b\n.test');
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("AuditLog under load batches lines for at most a few ms, and close() loses none", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/audit.jsonl`;
    const log = await AuditLog.open(path);
    // A first record on a quiet log goes out on the next macrotask.
    log.write({ event: "request", conn: 0, verdict: "allow", code: "allow-rule", reason: "" });
    await new Promise((r) => setTimeout(r, 0));
    assertEquals((await Deno.readTextFile(path)).split("\n").length, 2);
    // Busy: records written right after a flush wait for the window, then go out together.
    for (let i = 1; i <= 50; i++) {
      log.write({ event: "request", conn: i, verdict: "allow", code: "allow-rule", reason: "" });
      if (i % 10 === 0) await new Promise((r) => setTimeout(r, 0));
    }
    await new Promise((r) => setTimeout(r, 20));
    let lines = (await Deno.readTextFile(path)).trimEnd().split("\n");
    assertEquals(lines.map((l) => JSON.parse(l).conn), Array.from({ length: 51 }, (_, i) => i));
    // Whatever is pending at close is written, as whole lines.
    for (let i = 51; i < 60; i++) {
      log.write({ event: "request", conn: i, verdict: "allow", code: "allow-rule", reason: "" });
    }
    await log.close();
    const text = await Deno.readTextFile(path);
    assert(text.endsWith("\n"));
    lines = text.trimEnd().split("\n");
    assertEquals(lines.map((l) => JSON.parse(l).conn), Array.from({ length: 60 }, (_, i) => i));
    // The default clock: a valid ISO time on every line.
    assertMatch(lines[59], /^\{"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z","event":"request",/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("IsoTime.format() is toISOString, across milliseconds, seconds, years and the epoch", () => {
  const iso = new IsoTime();
  const cases: [string, number][] = [
    ["the epoch", 0],
    ["one ms in", 1],
    ["two-digit ms", 42],
    ["three-digit ms", 999],
    ["the next second", 1000],
    ["same ms twice", 1000],
    ["back within the second", 1005],
    ["a minute's last ms", 59_999],
    ["today", Date.UTC(2026, 11, 2, 7, 30, 15, 7)],
    ["a leap day", Date.UTC(2028, 1, 29, 23, 59, 59, 999)],
    ["after year 9999", Date.UTC(10000, 0, 1, 0, 0, 0, 5)],
    ["before the epoch", -1],
    ["a clock set back", 1_700_000_000_123],
  ];
  for (const [name, ms] of cases) assertEquals(iso.format(ms), new Date(ms).toISOString(), name);
  // A run of consecutive milliseconds, as a busy log sees them.
  for (let ms = 1_764_000_000_000 - 1500; ms < 1_764_000_000_000 + 1500; ms++) {
    assertEquals(iso.format(ms), new Date(ms).toISOString(), String(ms));
  }
});
