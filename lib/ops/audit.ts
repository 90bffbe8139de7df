/**
 * The audit log: one JSON object per line for every decision sluice makes
 * (connections and requests), with fixed field names documented in
 * docs/audit.md. Operational logs go elsewhere; this stream is for people
 * asking "why was this blocked" and for machines that alert on violations.
 *
 * Records hold credential NAMES only. Nothing here ever sees a secret value.
 *
 * @module
 */
import type { Decision } from "../../policy/decide.ts";
import type { OutcomeCode } from "../../policy/outcomes.ts";

/** One audit record. Absent fields are omitted from the line. */
export type AuditRecord = {
  /**
   * "connection" for a connection-level decision, "request" for an HTTP request, "dns" for a DNS
   * query, "token" for an oauth2 credential's token request (sluice's own).
   */
  event: "connection" | "request" | "dns" | "token";
  /** Connection id, shared by a connection's record and its requests' records (not for DNS). */
  conn?: number;
  /** The client's address as ip:port. */
  client?: string;
  mode?: "explicit" | "transparent";
  /** DNS records: transport, query type, response code, and the addresses answered. */
  transport?: "udp" | "tcp";
  qtype?: string;
  rcode?: string;
  addresses?: string[];
  error?: string;
  host?: string;
  port?: number;
  sni?: string;
  tls?: "intercept" | "passthrough" | "none";
  method?: string;
  /** The request path without its query (queries may carry secrets). */
  path?: string;
  /** A gRPC call's method, `package.Service/Method` (its path without the leading slash). */
  rpc?: string;
  verdict: "allow" | "deny";
  /** Machine-readable reason code: a row of the outcome table (policy/outcomes.ts). */
  code: OutcomeCode;
  reason: string;
  /** The deciding rule as written, and its file:line. */
  rule?: string;
  rule_at?: string;
  /** Upstream address actually connected to. */
  address?: string;
  status?: number;
  /** Bytes from the client toward upstream, and back. */
  bytes_up?: number;
  bytes_down?: number;
  duration_ms?: number;
  credentials?: string[];
  violation?: string;
};

/** The fields of a record that its decision gives: the rest of a {@link writeDecided} record. */
export type DecidedFields = "verdict" | "code" | "reason" | "rule" | "rule_at";

/** Where audit lines go. */
export interface AuditSink {
  write(record: AuditRecord): void;
  /**
   * Optional: a record whose verdict, code, reason, rule and rule_at are `decision`'s, the rest
   * in `rest`. A sink that serialises may write that part once per decision
   * ({@link decidedLine}); callers go through {@link writeDecided}, which falls back to `write`.
   */
  writeDecided?(decision: Decision, rest: Omit<AuditRecord, DecidedFields>): void;
  close(): Promise<void>;
}

/**
 * A decision's fields of a record, in the order its line gives them (the rule as `rule` and
 * `rule_at`): the one mapping that writeDecided, the log's kept JSON and forward.ts's records use.
 */
export function decidedFields(decision: Decision): Pick<AuditRecord, DecidedFields> {
  return {
    verdict: decision.verdict,
    code: decision.code,
    reason: decision.reason,
    rule: decision.rule.source,
    rule_at: decision.rule.at,
  };
}

/**
 * Writes a record made of `decision`'s fields ({@link decidedFields}) and `rest`: through the
 * sink's {@link AuditSink.writeDecided} if it has one, else as one record through `write` (the
 * same fields either way).
 */
export function writeDecided(
  sink: AuditSink,
  decision: Decision,
  rest: Omit<AuditRecord, DecidedFields>,
): void {
  if (sink.writeDecided !== undefined) return sink.writeDecided(decision, rest);
  sink.write({ ...rest, ...decidedFields(decision) });
}

const encoder = new TextEncoder();

/**
 * One audit line (no newline): `{"time":…,` spliced before the record's own JSON, the same
 * line as stringifying `{ time, ...record }` without copying the record into a new object first
 * (Deno.bench of a request record: ~1.8 µs → ~0.4 µs with a cached time). Every record has
 * `event`, so its JSON is never `{}`.
 *
 * @param iso the record's time, `Date.prototype.toISOString()`
 */
export function auditLine(record: AuditRecord, iso: string): string {
  return `{"time":"${iso}",${JSON.stringify(record).slice(1)}`;
}

/**
 * A decision's fields as JSON members (`"verdict":…,"code":…,"reason":…,"rule":…,"rule_at":…`),
 * kept per frozen decision object. Why: remembered decisions are frozen and shared
 * (policy/decide.ts), and their reason, rule and file:line were the longest strings of an
 * allowed request's line, the reason with quotes to escape. In the running proxy, stringifying
 * them was ~1.7 µs of the ~3.7 µs a request record cost (bench/request_path_bench.ts with the
 * record timed in the sink, 2026-12-02); a remembered decision's members are now one concat.
 * Only a frozen decision (and rule) is kept: one that can change would leave a stale line, and
 * one made per request would only fill the map.
 */
const decidedJson = new WeakMap<Decision, string>();

function decidedMembers(decision: Decision): string {
  let json = decidedJson.get(decision);
  if (json === undefined) {
    json = JSON.stringify(decidedFields(decision)).slice(1, -1);
    if (Object.isFrozen(decision) && Object.isFrozen(decision.rule)) {
      decidedJson.set(decision, json);
    }
  }
  return json;
}

/**
 * The audit line of a {@link writeDecided} record (no newline): the same object as
 * {@link auditLine} of the whole record, with the decision's members first after the time.
 */
export function decidedLine(
  decision: Decision,
  rest: Omit<AuditRecord, DecidedFields>,
  iso: string,
): string {
  return `{"time":"${iso}",${decidedMembers(decision)},${JSON.stringify(rest).slice(1)}`;
}

/**
 * How long a log may hold lines before writing them. A write that finds the last flush at least
 * this long ago is flushed on the next macrotask (sparse traffic, and tests that read the file
 * right after a request, see it at once); lines written within the window share one write.
 * Measured (bench/request_path_bench.ts, one keep-alive client): each sequential request used to
 * cost a timer and a `writeSync` of its own; at ~100 µs per request a 2 ms window put ~19 lines
 * in a write (~35 µs per flush, ~1.5 µs per line).
 */
const FLUSH_WINDOW_MS = 2;
/**
 * Under load (the last write carried at least {@link BUSY_LINES} lines) the window widens to this:
 * ~100 lines per write at 10k requests/s, so the write and its timer cost ~0.5 µs per line, not
 * ~2.5 (CPU profile of bench/request_path_bench.ts, 2026-12-02). A line still waits at most this
 * long, plus a macrotask; a log that quietens returns to the short window after one write.
 */
const BUSY_WINDOW_MS = 10;
const BUSY_LINES = 16;
/**
 * The pending lines' bytes: a 10 ms window at ~15k lines/s of ~450 bytes fits four times over.
 * When it is full the lines in it are written at once, and a line longer than all of it is
 * encoded and written on its own.
 */
const PENDING_BUFFER_BYTES = 256 * 1024;

/**
 * `new Date(ms).toISOString()`, made once per millisecond and, within a second, by patching the
 * milliseconds (`toISOString` costs ~1 µs; it showed in the request path's CPU profile).
 */
export class IsoTime {
  #ms = NaN;
  #text = "";
  #second = NaN;
  #prefix = "";

  /** @param ms milliseconds since the epoch, as `Date.now()` gives them */
  format(ms: number): string {
    if (ms === this.#ms) return this.#text;
    const second = ms - (((ms % 1000) + 1000) % 1000);
    if (second !== this.#second) {
      this.#second = second;
      const iso = new Date(second).toISOString(); // "…T12:34:56.000Z"
      this.#prefix = iso.slice(0, iso.length - 4);
    }
    const milli = ms - second;
    this.#ms = ms;
    this.#text = `${this.#prefix}${milli < 10 ? "00" : milli < 100 ? "0" : ""}${milli}Z`;
    return this.#text;
  }
}

/**
 * Writes records as JSON lines. Lines are batched: a burst of requests costs one write, not one
 * per request, and no line waits more than {@link FLUSH_WINDOW_MS} (plus a macrotask);
 * `close()` flushes what is left.
 */
export class AuditLog implements AuditSink {
  /**
   * The pending lines, already encoded, each with its newline. Why bytes and not the lines'
   * strings: a line is a rope of concatenated pieces, and a string kept for the window survives
   * V8's minor collections, which copy every piece of it, twice, into the old generation. With
   * the proxy's 2 MiB young generation that made each minor GC ~2.6 times as long
   * (bench/request_path_bench.ts --direct, `--trace-gc`: 0.70 ms against 0.27 ms, ~8 µs a
   * request). Bytes in a buffer that outlives the log are not scanned at all.
   */
  #buffer: Uint8Array | undefined;
  #used = 0;
  /** Lines written since the last flush (in `#buffer`, or lost when the log is closed). */
  #lines = 0;
  #scheduled = false;
  #closed = false;
  #lastFlush = -Infinity;
  #window = FLUSH_WINDOW_MS;
  #out: { writeSync(p: Uint8Array): number; close?(): void };
  #now: (() => Date) | undefined;
  readonly #iso = new IsoTime();
  readonly #flushNow = (): void => this.#flush();

  private constructor(
    out: { writeSync(p: Uint8Array): number; close?(): void },
    now: (() => Date) | undefined,
  ) {
    this.#out = out;
    this.#now = now;
  }

  /**
   * Opens the audit destination: `stderr`, `stdout`, or an absolute file
   * path (opened for append, created 0640).
   */
  static async open(target: string, now?: () => Date): Promise<AuditLog> {
    if (target === "stderr") return new AuditLog(Deno.stderr, now);
    if (target === "stdout") return new AuditLog(Deno.stdout, now);
    const file = await Deno.open(target, { append: true, create: true, mode: 0o640 });
    return new AuditLog(file, now);
  }

  /** An in-memory log, for tests: records land in `records`. */
  static memory(): AuditLog & { records: AuditRecord[] } {
    const records: AuditRecord[] = [];
    const log = new AuditLog({
      writeSync: (p) => {
        for (const line of new TextDecoder().decode(p).split("\n")) {
          if (line) records.push(JSON.parse(line));
        }
        return p.length;
      },
    }, undefined);
    return Object.assign(log, { records });
  }

  write(record: AuditRecord): void {
    const ms = Date.now();
    // In the running proxy a request record's stringify measured ~3.7 µs, several times the same
    // call in a loop: after the request's other work its code and strings are cold. Records of
    // a remembered decision go through writeDecided, which serialises less.
    this.#append(auditLine(record, this.#time(ms)), 1);
    this.#schedule(ms);
  }

  writeDecided(decision: Decision, rest: Omit<AuditRecord, DecidedFields>): void {
    const ms = Date.now();
    this.#append(decidedLine(decision, rest, this.#time(ms)), 1);
    this.#schedule(ms);
  }

  /**
   * Whole lines another thread serialised with {@link auditLine} (a worker's batch: `\n`
   * between lines, none after the last), written as they are: a worker's records cost the main
   * thread one string, not a structured clone and a stringify each.
   */
  writeLines(lines: string): void {
    if (lines === "") return;
    this.#append(lines, 1);
    this.#schedule(Date.now());
  }

  /** Encodes `text` and its newline behind the pending bytes, writing those first if full. */
  #append(text: string, lines: number): void {
    if (this.#closed) {
      this.#lines += lines; // reported as lost by the flush
      return;
    }
    const buffer = this.#buffer ??= new Uint8Array(PENDING_BUFFER_BYTES);
    let r = encoder.encodeInto(text, buffer.subarray(this.#used));
    // Not all of it fitted, or no room is left for its newline: what is pending goes first.
    if (r.read < text.length || this.#used + r.written >= buffer.length) {
      this.#writeOut();
      if (text.length * 3 + 1 > buffer.length) {
        // Longer than the whole buffer may be (UTF-8 needs at most 3 bytes per UTF-16 unit):
        // its own array, written now, so the log never keeps a burst's size.
        this.#write(encoder.encode(text + "\n"), lines);
        return;
      }
      r = encoder.encodeInto(text, buffer);
    }
    this.#used += r.written;
    buffer[this.#used++] = 0x0a;
    this.#lines += lines;
  }

  #schedule(ms: number): void {
    if (!this.#scheduled) {
      this.#scheduled = true;
      // Date.now() may step back (clock set): then flush at once, never wait longer than the window.
      const since = ms - this.#lastFlush;
      const wait = since >= 0 && since < this.#window ? this.#window - since : 0;
      setTimeout(this.#flushNow, wait);
    }
  }

  #time(ms: number): string {
    return this.#now !== undefined ? this.#now().toISOString() : this.#iso.format(ms);
  }

  #flush(): void {
    this.#scheduled = false;
    this.#lastFlush = Date.now();
    if (this.#lines === 0) return;
    if (this.#closed) {
      console.error(
        `sluice: audit: ${this.#lines} record(s) could not be written: the log is closed`,
      );
      this.#lines = 0;
      return;
    }
    this.#window = this.#lines >= BUSY_LINES ? BUSY_WINDOW_MS : FLUSH_WINDOW_MS;
    this.#writeOut();
  }

  /** Writes the pending bytes (the buffer is free again when writeSync returns). */
  #writeOut(): void {
    const lines = this.#lines;
    this.#lines = 0;
    if (this.#used === 0) return;
    const data = this.#buffer!.subarray(0, this.#used);
    this.#used = 0;
    this.#write(data, lines);
  }

  #write(data: Uint8Array, lines: number): void {
    try {
      let off = 0;
      while (off < data.length) off += this.#out.writeSync(data.subarray(off));
    } catch (e) {
      // A full disk or a closed log must not take the proxy down; say what was lost, without
      // the records themselves (they are the audit trail, not operational output).
      console.error(
        `sluice: audit: ${lines} record(s) could not be written: ${(e as Error)?.message ?? e}`,
      );
    }
  }

  /**
   * Flushes and closes the destination. Idempotent: the server and `sluice run` may both
   * close the log they share, and a second close must not fail a run that succeeded.
   * Records written after close are reported on stderr as lost (never thrown).
   */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#flush();
    this.#closed = true;
    if (this.#out !== Deno.stderr && this.#out !== Deno.stdout) this.#out.close?.();
    return Promise.resolve();
  }
}
