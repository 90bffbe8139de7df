/**
 * Metrics in the Prometheus text exposition format (version 0.0.4), served on
 * the admin listener's `/metrics`. A small registry rather than a client
 * library: sluice needs counters, gauges and one histogram, and nothing here
 * may ever carry a secret (labels are verdicts, modes, error kinds and
 * credential NAMES).
 *
 * @module
 */

type Labels = Record<string, string>;

function labelKey(labels: Labels): string {
  const keys = Object.keys(labels).sort();
  if (keys.length === 0) return "";
  return "{" + keys.map((k) => `${k}="${escapeLabel(labels[k])}"`).join(",") + "}";
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

abstract class Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: "counter" | "gauge" | "histogram",
  ) {}
  abstract lines(): string[];
  header(): string[] {
    return [
      `# HELP ${this.name} ${this.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}`,
      `# TYPE ${this.name} ${this.type}`,
    ];
  }
}

/** A monotonically increasing count, per label set. */
export class Counter extends Metric {
  readonly #values = new Map<string, number>();
  constructor(name: string, help: string) {
    super(name, help, "counter");
  }
  inc(labels: Labels = {}, by = 1): void {
    const k = labelKey(labels);
    this.#values.set(k, (this.#values.get(k) ?? 0) + by);
  }
  /**
   * One label set of this counter, its key built once: for a hot path with a few fixed label
   * sets (building the key sorts, escapes and joins: ~0.5 µs per `inc`, measured in
   * bench/request_path_bench.ts). The series shows in the exposition from its first `inc`.
   */
  series(labels: Labels = {}): { inc(by?: number): void } {
    const k = labelKey(labels);
    const values = this.#values;
    return { inc: (by = 1) => void values.set(k, (values.get(k) ?? 0) + by) };
  }
  get(labels: Labels = {}): number {
    return this.#values.get(labelKey(labels)) ?? 0;
  }
  lines(): string[] {
    return [...this.#values].sort().map(([k, v]) => `${this.name}${k} ${v}`);
  }
}

/** A value that goes up and down, or is read at scrape time through `collect`. */
export class Gauge extends Metric {
  readonly #values = new Map<string, number>();
  #collect?: () => [Labels, number][];
  constructor(name: string, help: string, collect?: () => [Labels, number][]) {
    super(name, help, "gauge");
    this.#collect = collect;
  }
  set(value: number, labels: Labels = {}): void {
    this.#values.set(labelKey(labels), value);
  }
  lines(): string[] {
    const entries: [string, number][] = this.#collect
      ? this.#collect().map(([l, v]) => [labelKey(l), v])
      : [...this.#values];
    return entries.sort().map(([k, v]) => `${this.name}${k} ${v}`);
  }
}

/** A histogram with fixed buckets (seconds), per label set. */
export class Histogram extends Metric {
  readonly #buckets: number[];
  readonly #series = new Map<
    string,
    { labels: Labels; counts: number[]; sum: number; count: number }
  >();
  constructor(name: string, help: string, buckets: number[]) {
    super(name, help, "histogram");
    this.#buckets = [...buckets].sort((a, b) => a - b);
  }
  observe(value: number, labels: Labels = {}): void {
    this.#record(labelKey(labels), labels, value);
  }
  /**
   * One label set of this histogram, its key built once (see {@link Counter.series}). The
   * series shows in the exposition from its first `observe`.
   */
  series(labels: Labels = {}): { observe(value: number): void } {
    const k = labelKey(labels);
    return { observe: (value) => this.#record(k, labels, value) };
  }
  #record(k: string, labels: Labels, value: number): void {
    let s = this.#series.get(k);
    if (!s) {
      s = { labels, counts: this.#buckets.map(() => 0), sum: 0, count: 0 };
      this.#series.set(k, s);
    }
    for (let i = 0; i < this.#buckets.length; i++) if (value <= this.#buckets[i]) s.counts[i]++;
    s.sum += value;
    s.count++;
  }
  lines(): string[] {
    const out: string[] = [];
    for (const [, s] of [...this.#series].sort()) {
      this.#buckets.forEach((b, i) =>
        out.push(`${this.name}_bucket${labelKey({ ...s.labels, le: String(b) })} ${s.counts[i]}`)
      );
      out.push(`${this.name}_bucket${labelKey({ ...s.labels, le: "+Inf" })} ${s.count}`);
      out.push(`${this.name}_sum${labelKey(s.labels)} ${s.sum}`);
      out.push(`${this.name}_count${labelKey(s.labels)} ${s.count}`);
    }
    return out;
  }
}

/** Every metric sluice exports. One instance per running server. */
export class Metrics {
  readonly requests = new Counter(
    "sluice_requests_total",
    "HTTP requests decided, by verdict and mode.",
  );
  readonly connections = new Counter(
    "sluice_connections_total",
    "Connections decided, by verdict, mode and tls.",
  );
  readonly violations = new Counter(
    "sluice_credential_violations_total",
    "Placeholders headed to hosts outside their credential's scope, by credential name.",
  );
  readonly credentialUses = new Counter(
    "sluice_credential_uses_total",
    "Requests on which sluice used a credential (substituted, injected or presented), by credential name.",
  );
  readonly tokenRequests = new Counter(
    "sluice_oauth2_token_requests_total",
    "Token requests sluice made for oauth2 credentials, by credential name and result (ok, error).",
  );
  readonly upstreamErrors = new Counter(
    "sluice_upstream_errors_total",
    "Upstream failures, by kind.",
  );
  readonly handshakes = new Counter(
    "sluice_tls_handshakes_total",
    "Client TLS connections handed to the terminator.",
  );
  readonly reloads = new Counter("sluice_reloads_total", "Policy reloads, by result.");
  readonly refused = new Counter(
    "sluice_connections_refused_total",
    "Connections refused at accept by a limit, by code (limit-total, limit-per-client, limit-reserve) and mode.",
  );
  readonly deadlines = new Counter(
    "sluice_deadline_closes_total",
    "Connections closed because the deadline of their stage passed, by stage.",
  );
  readonly duration = new Histogram(
    "sluice_request_duration_seconds",
    "Time from receiving a request to sending its response head, by verdict.",
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  );
  readonly all: Metric[];

  constructor(gauges: {
    activeConnections: () => number;
    leafCache: () => { hits: number; misses: number; size: number };
    policyGeneration: () => number;
    lastReloadOk: () => number;
    /** Connections held now, by stage (lib/ingress/limits.ts). */
    stages?: () => [string, number][];
    /** Distinct client addresses holding connections now. */
    clients?: () => number;
  }) {
    this.all = [
      this.requests,
      this.connections,
      this.violations,
      this.credentialUses,
      this.tokenRequests,
      this.upstreamErrors,
      this.handshakes,
      this.reloads,
      this.refused,
      this.deadlines,
      this.duration,
      new Gauge(
        "sluice_active_connections",
        "Client connections being served now.",
        () => [[{}, gauges.activeConnections()]],
      ),
      new Gauge(
        "sluice_connections_by_stage",
        "Client connections held now, by the stage whose deadline applies.",
        () => (gauges.stages?.() ?? []).map(([stage, n]) => [{ stage }, n]),
      ),
      new Gauge(
        "sluice_connection_clients",
        "Distinct client addresses (IPv6: /64) holding connections now.",
        () => [[{}, gauges.clients?.() ?? 0]],
      ),
      new Gauge(
        "sluice_leaf_cache",
        "Leaf certificate cache: hits and misses since start, and entries now.",
        () => {
          const s = gauges.leafCache();
          return [[{ stat: "hits" }, s.hits], [{ stat: "misses" }, s.misses], [
            { stat: "size" },
            s.size,
          ]];
        },
      ),
      new Gauge(
        "sluice_policy_generation",
        "Policy generation in force (1 at start, +1 per successful reload).",
        () => [[{}, gauges.policyGeneration()]],
      ),
      new Gauge(
        "sluice_last_reload_success",
        "1 if the last reload succeeded (or none happened), 0 if it failed.",
        () => [[{}, gauges.lastReloadOk()]],
      ),
      new Gauge(
        "process_resident_memory_bytes",
        "Resident set size of the sluice process.",
        () => [[{}, Deno.memoryUsage().rss]],
      ),
      new Gauge(
        "sluice_js_memory_bytes",
        "V8 memory: heap in use, heap reserved, and external (buffers held by JS objects).",
        () => {
          const m = Deno.memoryUsage();
          return [[{ kind: "heap_used" }, m.heapUsed], [{ kind: "heap_total" }, m.heapTotal], [
            { kind: "external" },
            m.external,
          ]];
        },
      ),
    ];
  }

  /** The exposition text for `/metrics`. */
  render(): string {
    return this.all.flatMap((m) => [...m.header(), ...m.lines()]).join("\n") + "\n";
  }
}
