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
import type { OutcomeCode } from "../../policy/outcomes.ts";

/** One audit record. Absent fields are omitted from the line. */
export type AuditRecord = {
  /** "connection" for a connection-level decision, "request" for an HTTP request, "dns" for a DNS query. */
  event: "connection" | "request" | "dns";
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

/** Where audit lines go. */
export interface AuditSink {
  write(record: AuditRecord): void;
  close(): Promise<void>;
}

const encoder = new TextEncoder();

/**
 * Writes records as JSON lines. Lines are batched and flushed on the next
 * macrotask so a burst of requests costs one write, not one per request;
 * `close()` flushes what is left.
 */
export class AuditLog implements AuditSink {
  #pending: string[] = [];
  #scheduled = false;
  #closed = false;
  #out: { writeSync(p: Uint8Array): number; close?(): void };
  #now: () => Date;

  private constructor(out: { writeSync(p: Uint8Array): number; close?(): void }, now: () => Date) {
    this.#out = out;
    this.#now = now;
  }

  /**
   * Opens the audit destination: `stderr`, `stdout`, or an absolute file
   * path (opened for append, created 0640).
   */
  static async open(target: string, now: () => Date = () => new Date()): Promise<AuditLog> {
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
    }, () => new Date());
    return Object.assign(log, { records });
  }

  write(record: AuditRecord): void {
    this.#pending.push(JSON.stringify({ time: this.#now().toISOString(), ...record }));
    if (!this.#scheduled) {
      this.#scheduled = true;
      setTimeout(() => this.#flush(), 0);
    }
  }

  #flush(): void {
    this.#scheduled = false;
    if (this.#pending.length === 0) return;
    if (this.#closed) {
      console.error(
        `sluice: audit: ${this.#pending.length} record(s) could not be written: the log is closed`,
      );
      this.#pending = [];
      return;
    }
    const count = this.#pending.length;
    const data = encoder.encode(this.#pending.join("\n") + "\n");
    this.#pending = [];
    try {
      let off = 0;
      while (off < data.length) off += this.#out.writeSync(data.subarray(off));
    } catch (e) {
      // A full disk or a closed log must not take the proxy down; say what was lost, without
      // the records themselves (they are the audit trail, not operational output).
      console.error(
        `sluice: audit: ${count} record(s) could not be written: ${(e as Error)?.message ?? e}`,
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
