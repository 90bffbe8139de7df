/**
 * The summary of bench/peers.sh: reads the raw per-round rows and prints one markdown table of
 * medians, the memory table and the targets.
 *
 *   deno run --allow-read bench/peers/summarize.ts RAW.tsv MEMORY.tsv SYSTEMS RATE IDLE WORKERS
 *
 * RAW.tsv (one row per round, system and scenario; a header line starting with "round"):
 *   round system scenario rps p50_ms p99_ms mib_s errors cpu_us_req rss_mib note
 * MEMORY.tsv: system start_mib after_mib fresh_mib idle_mib idle_note
 *
 * Every figure is the median over the rounds in which the system produced one. "x squid" is
 * computed WITHIN each round (the system's req/s over squid's in the same round) and then the
 * median of those per-round ratios is taken, so drift between rounds does not bias the ratio;
 * "p99 added" likewise is the system's p99 minus direct's p99 in the same round. The `--workers`
 * rows are compared with squid running the same number of workers.
 *
 * @module
 */

const [rawPath, memPath, systemsArg = "", rateArg = "1000", idleArg = "1000", workersArg = "2"] =
  Deno.args;
if (!rawPath || !memPath) {
  console.error("usage: summarize.ts RAW.tsv MEMORY.tsv SYSTEMS RATE IDLE WORKERS");
  Deno.exit(2);
}

interface Row {
  round: number;
  system: string;
  scenario: string;
  rps?: number;
  p50?: number;
  p99?: number;
  mib?: number;
  errors?: number;
  cpu?: number;
  note: string;
}

const num = (s: string | undefined): number | undefined => {
  if (s === undefined || s === "" || s === "-") return undefined;
  const n = Number(s);
  return Number.isFinite(n) ? n : undefined;
};

const rows: Row[] = [];
for (const line of Deno.readTextFileSync(rawPath).split("\n")) {
  if (line === "" || line.startsWith("round\t")) continue;
  const f = line.split("\t");
  rows.push({
    round: Number(f[0]),
    system: f[1],
    scenario: f[2],
    rps: num(f[3]),
    p50: num(f[4]),
    p99: num(f[5]),
    mib: num(f[6]),
    errors: num(f[7]),
    cpu: num(f[8]),
    note: f[10] ?? "",
  });
}

const workers = workersArg;
const label = (sys: string): string =>
  ({
    "floor": "floor (pool)",
    "floor-fetch": "floor (fetch)",
    "sluice-hop": "sluice (hop)",
    "sluice-workers": `sluice --workers ${workers}`,
    "squid-workers": `squid workers ${workers}`,
  } as Record<string, string>)[sys] ?? sys;
/** The squid a system is compared with: the one with the same number of workers. */
const reference = (sys: string): string => sys.endsWith("-workers") ? "squid-workers" : "squid";

function median(xs: number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
const fmt = (n: number | undefined, digits = 0): string =>
  n === undefined ? "-" : n.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });

// Systems in the order asked for (plus any the raw file has that were not asked for, such as the
// direct baseline of the latency scenario), scenarios in the order the script runs them.
const systems = [
  ...new Set([...systemsArg.split(/\s+/).filter(Boolean), ...rows.map((r) => r.system)]),
]
  .filter((s) => rows.some((r) => r.system === s));
const scenarioRank = (s: string): number =>
  ["all", "keep-alive", "new-conn", "1MB"].indexOf(s) >= 0
    ? ["all", "keep-alive", "new-conn", "1MB"].indexOf(s)
    : s.startsWith("sni-")
    ? 4
    : s.startsWith("latency@")
    ? 5
    : s === "h2"
    ? 6
    : 7;
const rounds = [...new Set(rows.map((r) => r.round))].sort((a, b) => a - b);
const at = (round: number, sys: string, scen: string): Row | undefined =>
  rows.find((r) =>
    r.round === round && r.system === sys && r.scenario === scen && r.rps !== undefined
  );

interface Summary {
  system: string;
  scenario: string;
  rps?: number;
  min?: number;
  max?: number;
  ratio?: number;
  ratioN: number;
  cpu?: number;
  p99?: number;
  added?: number;
  errors: number;
  valid: number;
  note: string;
}
const summaries: Summary[] = [];
for (const sys of systems) {
  const scens = [...new Set(rows.filter((r) => r.system === sys).map((r) => r.scenario))]
    .sort((a, b) => scenarioRank(a) - scenarioRank(b));
  for (const scen of scens) {
    const mine = rows.filter((r) => r.system === sys && r.scenario === scen);
    const valid = mine.filter((r) => r.rps !== undefined);
    const ratios: number[] = [];
    const added: number[] = [];
    for (const round of rounds) {
      const r = at(round, sys, scen);
      if (!r) continue;
      const ref = at(round, reference(sys), scen);
      // A fixed-rate scenario's req/s is the rate, not a capacity: no ratio there.
      if (!scen.startsWith("latency@") && ref?.rps && r.rps !== undefined) {
        ratios.push(r.rps / ref.rps);
      }
      const direct = at(round, "direct", scen);
      if (scen.startsWith("latency@") && r.p99 !== undefined && direct?.p99 !== undefined) {
        added.push(r.p99 - direct.p99);
      }
    }
    const rps = valid.map((r) => r.rps!);
    // Why rounds failed, and the clients' first errors, once each.
    const notes = [...new Set(mine.map((r) => r.note).filter(Boolean))];
    summaries.push({
      system: sys,
      scenario: scen,
      rps: median(rps),
      min: rps.length ? Math.min(...rps) : undefined,
      max: rps.length ? Math.max(...rps) : undefined,
      ratio: sys === reference(sys) ? undefined : median(ratios),
      ratioN: ratios.length,
      cpu: median(valid.flatMap((r) => r.cpu === undefined ? [] : [r.cpu])),
      p99: median(valid.flatMap((r) => r.p99 === undefined ? [] : [r.p99])),
      added: sys === "direct" ? undefined : median(added),
      errors: mine.reduce((s, r) => s + (r.errors ?? 0), 0),
      valid: valid.length,
      note: notes.join("; "),
    });
  }
}

const out: string[] = [];
out.push(
  "| system | scenario | req/s (median) | req/s min–max | x squid | CPU µs/req | p99 ms | p99 added ms | errors | rounds | note |",
);
out.push("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
for (const s of summaries) {
  if (s.scenario === "all" && s.valid === 0) { // n/a, or rounds that did not start / failed sanity
    const failed = new Set(
      rows.filter((r) => r.system === s.system && r.scenario === "all").map((r) => r.round),
    ).size;
    const na = s.note.startsWith("n/a");
    out.push(
      `| ${label(s.system)} | all | ${s.note || "n/a"} | - | - | - | - | - | - | ${
        na ? "-" : `failed ${failed}/${rounds.length}`
      } | |`,
    );
    continue;
  }
  out.push(
    `| ${label(s.system)} | ${s.scenario} | ${fmt(s.rps)} | ${
      s.valid ? `${fmt(s.min)}–${fmt(s.max)}` : "-"
    } | ${s.ratio === undefined ? "-" : `${s.ratio.toFixed(2)}x`} | ${fmt(s.cpu)} | ${
      fmt(s.p99, 2)
    } | ${fmt(s.added, 2)} | ${s.errors} | ${s.valid}/${rounds.length} | ${s.note} |`,
  );
}

out.push("");
out.push(
  `x squid: req/s over squid's in the same round, median over rounds (the --workers rows: over squid workers ${workers}). ` +
    `CPU µs/req: user+system time of the system's whole process tree in the window / requests served, median. ` +
    `p99 added: the fixed-rate p99 minus direct's in the same round, median. 1MB: req/s = MiB/s.`,
);

const memory = (() => {
  try {
    return Deno.readTextFileSync(memPath).split("\n").filter(Boolean).map((l) => l.split("\t"))
      .sort((a, b) => systems.indexOf(a[0]) - systems.indexOf(b[0]));
  } catch {
    return [];
  }
})();
if (memory.length) {
  out.push("");
  out.push(
    `| system | RSS at start MiB | after scenarios MiB | fresh process MiB | fresh + ${idleArg} idle conns MiB | idle conns |`,
  );
  out.push("|---|---:|---:|---:|---:|---|");
  for (const m of memory) {
    out.push(`| ${label(m[0])} | ${m[1]} | ${m[2]} | ${m[3]} | ${m[4]} | ${m[5]} |`);
  }
}

// Targets (issue 14), for every sluice variant that ran.
const get = (sys: string, scen: string): Summary | undefined =>
  summaries.find((s) => s.system === sys && s.scenario === scen);
const target = (
  name: string,
  v: number | undefined,
  want: string,
  met: (v: number) => boolean,
  unit = "x",
) =>
  out.push(
    `  ${name.padEnd(48)} ${
      (v === undefined ? "n/a" : `${v.toFixed(2)}${unit}`).padStart(12)
    }  (target ${want})${v === undefined ? "" : met(v) ? " met" : " NOT met"}`,
  );
const sluices = systems.filter((s) => s.startsWith("sluice") && get(s, "keep-alive") !== undefined);
if (sluices.length) {
  out.push("");
  out.push("Targets (medians of per-round ratios):");
  for (const sys of sluices) {
    const ref = label(reference(sys));
    out.push(`${label(sys)}:`);
    // Issue 14's targets: one worker against one squid; --workers N against squid workers N.
    const workers = sys.includes("workers");
    const ka = workers ? 1.6 : 1.3;
    target(
      `keep-alive req/s vs ${ref}`,
      get(sys, "keep-alive")?.ratio,
      `>= ${ka}x`,
      (v) => v >= ka,
    );
    const cpu = get(sys, "keep-alive")?.cpu, refCpu = get(reference(sys), "keep-alive")?.cpu;
    target(
      `keep-alive CPU us/req vs ${ref}'s`,
      cpu !== undefined && refCpu ? cpu / refCpu : undefined,
      "<= 0.8x",
      (v) => v <= 0.8,
    );
    target(`new-connection req/s vs ${ref}`, get(sys, "new-conn")?.ratio, ">= 6x", (v) => v >= 6);
    target(`1 MB MiB/s vs ${ref}`, get(sys, "1MB")?.ratio, ">= 3x", (v) => v >= 3);
    target(
      `p99 added over direct at ${rateArg} req/s`,
      get(sys, `latency@${rateArg}/s`)?.added,
      "< 2 ms",
      (v) => v < 2,
      " ms",
    );
    const idle = num(memory.find((m) => m[0] === sys)?.[4]);
    target(
      `RSS with ${idleArg} idle connections`,
      idle,
      "< 120 MB",
      (v) => v * 1.048576 < 120,
      " MiB",
    );
  }
}
console.log(out.join("\n"));
