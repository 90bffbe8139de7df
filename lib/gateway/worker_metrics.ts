/**
 * One `/metrics` for `sluice serve --workers N`: every worker renders its own registry
 * (lib/ops/metrics.ts) and the main thread sums them here, so a scrape sees the same families,
 * names, labels and order as a single worker would print.
 *
 * Pure: text in, text out. Counters, gauges and histogram buckets (with `_sum` and `_count`) are
 * summed series by series; the families in {@link MAIN_ONLY} are facts about the process or
 * the policy, not about one worker's traffic, so the main thread's value stands alone.
 *
 * @module
 */

/**
 * Families taken from the main thread only: it owns the policy (generation, reload results)
 * and the process (resident memory is one number for all threads, which every worker would
 * report again).
 */
export const MAIN_ONLY: ReadonlySet<string> = new Set([
  "sluice_policy_generation",
  "sluice_last_reload_success",
  "sluice_reloads_total",
  "process_resident_memory_bytes",
]);

type Family = {
  name: string;
  header: string[];
  type: string;
  /** Sample name plus its label text (exactly as printed), to value. */
  samples: Map<string, number>;
};

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** Parses exposition text into families in order of appearance. */
function parse(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  let current: Family | undefined;
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const help = /^# HELP (\S+)/.exec(line);
    if (help) {
      current = { name: help[1], header: [line], type: "untyped", samples: new Map() };
      families.set(current.name, current);
      continue;
    }
    const type = /^# TYPE (\S+) (\S+)/.exec(line);
    if (type && current?.name === type[1]) {
      current.header.push(line);
      current.type = type[2];
      continue;
    }
    const m = SAMPLE.exec(line);
    if (!m || !current) continue;
    const key = m[1] + (m[2] ?? "");
    current.samples.set(key, (current.samples.get(key) ?? 0) + Number(m[3]));
  }
  return families;
}

/** A histogram sample's place: its series (labels without `le`), then bucket, sum, count. */
function histogramOrder(family: string, key: string): [string, number, number] {
  const brace = key.indexOf("{");
  const name = brace < 0 ? key : key.slice(0, brace);
  const labels = brace < 0 ? "" : key.slice(brace);
  let le = Infinity;
  const rest: string[] = [];
  for (const [, k, v] of labels.matchAll(LABEL)) {
    if (k === "le") le = v === "+Inf" ? Infinity : Number(v);
    else rest.push(`${k}="${v}"`);
  }
  const series = rest.length ? `{${rest.join(",")}}` : "";
  const part = name === `${family}_bucket` ? 0 : name === `${family}_sum` ? 1 : 2;
  return [series, part, le];
}

/**
 * Sums several renderings of the metrics registry into one.
 *
 * @param main the main thread's rendering: it fixes the families, their order and help text,
 *   and alone supplies the {@link MAIN_ONLY} families
 * @param workers each worker's rendering
 * @returns exposition text, ending in a newline
 */
export function mergeMetrics(main: string, workers: readonly string[]): string {
  const merged = parse(main);
  for (const text of workers) {
    for (const [name, family] of parse(text)) {
      const into = merged.get(name);
      if (!into) {
        merged.set(name, family);
        continue;
      }
      if (MAIN_ONLY.has(name)) continue;
      for (const [k, v] of family.samples) into.samples.set(k, (into.samples.get(k) ?? 0) + v);
    }
  }
  const out: string[] = [];
  for (const f of merged.values()) {
    out.push(...f.header);
    const keys = [...f.samples.keys()];
    if (f.type === "histogram") {
      const order = new Map(keys.map((k) => [k, histogramOrder(f.name, k)]));
      keys.sort((a, b) => {
        const [sa, pa, la] = order.get(a)!;
        const [sb, pb, lb] = order.get(b)!;
        return sa < sb ? -1 : sa > sb ? 1 : pa - pb || la - lb;
      });
    } else {
      // As the registry sorts its own series (lib/ops/metrics.ts).
      keys.sort();
    }
    for (const k of keys) out.push(`${k} ${f.samples.get(k)}`);
  }
  return out.join("\n") + "\n";
}
