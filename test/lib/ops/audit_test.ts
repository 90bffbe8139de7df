import { assert, assertEquals, assertMatch } from "../../_assert.ts";
import {
  AuditLog,
  type AuditRecord,
  type AuditSink,
  decidedLine,
  IsoTime,
  writeDecided,
} from "../../../lib/ops/audit.ts";
import type { Decision } from "../../../policy/mod.ts";

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

/** Decisions whose fields need escaping, or are missing parts a record may omit. */
const decisions: [string, Decision][] = [
  ["a rule's allow", {
    verdict: "allow",
    code: "allow-rule",
    reason: 'GET a.test:443/x is allowed by rule "a.test"',
    rule: { list: "allow", index: 0, source: "a.test", at: "/etc/sluice/p.yaml:3" },
  }],
  ["the default, with quotes, a newline and non-ASCII in the reason", {
    verdict: "deny",
    code: "default",
    reason: 'POST "ü.test"\n\u2028 matched no rule',
    rule: { list: "default", index: -1, source: "default: deny", at: "p.yaml" },
  }],
];

Deno.test("writeDecided writes the record write() would, through AuditLog, a sink without it, and a file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const [name, d] of decisions) {
      const rest = {
        event: "request" as const,
        conn: 7,
        client: "10.0.0.2:5000",
        sni: undefined,
        method: "GET",
        path: "/x",
        host: 'a"b.test',
        address: "10.0.0.9",
        credentials: ["KEY"],
        status: 200,
        bytes_down: 11,
        duration_ms: 0,
      };
      const whole: AuditRecord = {
        ...rest,
        verdict: d.verdict,
        code: d.code,
        reason: d.reason,
        rule: d.rule.source,
        rule_at: d.rule.at,
      };
      const viaLog = AuditLog.memory();
      writeDecided(viaLog, d, { ...rest });
      writeDecided(viaLog, d, { ...rest, conn: 8 });
      await viaLog.close();
      assertEquals(viaLog.records.map(({ time: _, ...r }: AuditRecord & { time?: string }) => r), [
        JSON.parse(JSON.stringify(whole)),
        JSON.parse(JSON.stringify({ ...whole, conn: 8 })),
      ], name);
      // A sink with only write() gets the whole record.
      const seen: AuditRecord[] = [];
      const plain: AuditSink = { write: (r) => void seen.push(r), close: () => Promise.resolve() };
      writeDecided(plain, d, { ...rest });
      assertEquals(JSON.parse(JSON.stringify(seen[0])), JSON.parse(JSON.stringify(whole)), name);
      // A file gets one line: the same object, the time first.
      const path = `${dir}/${d.code}.jsonl`;
      const file = await AuditLog.open(path, () => new Date("2026-01-02T03:04:05.006Z"));
      writeDecided(file, d, { ...rest });
      await file.close();
      const lines = (await Deno.readTextFile(path)).split("\n");
      assertEquals(lines.length, 2, name);
      assertMatch(lines[0], /^\{"time":"2026-01-02T03:04:05\.006Z","verdict":/);
      assertEquals(
        JSON.parse(lines[0]),
        { time: "2026-01-02T03:04:05.006Z", ...JSON.parse(JSON.stringify(whole)) },
        name,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("decidedLine serialises a frozen decision's fields once, and any other every time", () => {
  const base = decisions[0][1];
  const counted = (freeze: boolean) => {
    const seen = { reads: 0 };
    const d = {
      verdict: base.verdict,
      code: base.code,
      get reason() {
        seen.reads++;
        return base.reason;
      },
      rule: { ...base.rule },
    };
    if (freeze) Object.freeze(Object.freeze(d).rule);
    return Object.assign(seen, { d });
  };
  const rest = { event: "request" as const, conn: 1, status: 200 };
  // Frozen, as policy/decide.ts remembers them: read once.
  const frozen = counted(true);
  const first = decidedLine(frozen.d, rest, "T");
  const second = decidedLine(frozen.d, { ...rest, conn: 2 }, "T");
  assertEquals(frozen.reads, 1);
  assertEquals(JSON.parse(first).reason, base.reason);
  assertEquals(JSON.parse(second).conn, 2);
  // Not frozen: it could change, so it is read (and its change written) every time.
  const open = counted(false);
  decidedLine(open.d, rest, "T");
  open.d.rule.source = "changed";
  assertEquals(JSON.parse(decidedLine(open.d, rest, "T")).rule, "changed");
  assertEquals(open.reads, 2);
  // Another object with the same fields is serialised on its own (nothing is keyed by content).
  assertEquals(JSON.parse(decidedLine({ ...base, reason: "other" }, rest, "T")).reason, "other");
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

Deno.test("AuditLog writes a burst larger than its kept buffer, and non-ASCII, byte for byte", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/audit.jsonl`;
    const log = await AuditLog.open(path);
    // ~1,000 lines of ~1 KiB in one flush: past the 256 KiB kept buffer, so encoded on its own.
    const long = "ü→".repeat(400);
    for (let i = 0; i < 1000; i++) {
      log.write({ event: "request", conn: i, verdict: "deny", code: "default", reason: long });
    }
    await new Promise((r) => setTimeout(r, 20));
    // Then small batches through the kept buffer, shorter than what it held before.
    for (let i = 1000; i < 1005; i++) {
      log.write({ event: "request", conn: i, verdict: "deny", code: "default", reason: "ü" });
      await new Promise((r) => setTimeout(r, 3));
    }
    await log.close();
    const lines = (await Deno.readTextFile(path)).trimEnd().split("\n");
    assertEquals(lines.map((l) => JSON.parse(l).conn), Array.from({ length: 1005 }, (_, i) => i));
    assertEquals(JSON.parse(lines[999]).reason, long);
    assertEquals(JSON.parse(lines[1004]).reason, "ü");
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
