/**
 * The entry point of one `sluice serve --workers N` worker (a Web Worker: its own isolate and
 * thread in the sluice process). It runs the data path only: the explicit and transparent
 * listeners, bound with SO_REUSEPORT next to the other workers' (lib/gateway/workers.ts says
 * what stays in the main thread and why).
 *
 * From the main thread it receives the policy SOURCE and compiles it itself (a compiled policy
 * is not structured-cloneable), loads the CA from the same files the main thread loaded (the key
 * never travels in a message), and builds its own credentials from the policy as
 * `startGateway` does. To the main thread it sends audit records (it never writes the audit
 * file), log lines, and its metrics when asked.
 *
 * @module
 */
/// <reference lib="deno.worker" />
import { type Decision, loadPolicyText } from "../../policy/mod.ts";
import {
  auditLine,
  type AuditRecord,
  type AuditSink,
  type DecidedFields,
  decidedLine,
  IsoTime,
} from "../ops/audit.ts";
import { loadCa } from "../tls/ca.ts";
import { type Gateway, startGateway } from "./startup.ts";
import type { FromWorker, ToWorker, WorkerStart } from "./workers.ts";

/** Records per message at most; below that, one message per macrotask. */
const AUDIT_BATCH = 256;

const post = (m: FromWorker) => self.postMessage(m);

/**
 * The worker's audit sink: each record gets its global connection id and is serialised here
 * ({@link auditLine}, with the time it was written), and the lines are posted to the main
 * thread in batches, which writes them through its one AuditLog as they are: lines from
 * different workers never interleave, and the main thread pays one string per batch, not a
 * structured clone and a stringify per record. Records written after `close()` are still
 * posted: the main thread closes the real log only after every worker said it was done.
 */
class PostedAudit implements AuditSink {
  #batch: string[] = [];
  #scheduled = false;
  #maxConn = 0;
  readonly #iso = new IsoTime();
  /** Local connection id n is `base + (n - 1) * step + id` in the audit trail. */
  conn = { base: 0, step: 1, id: 1 };

  write(record: AuditRecord): void {
    this.#renumber(record);
    this.#batch.push(auditLine(record, this.#time()));
    this.#queued();
  }

  writeDecided(decision: Decision, rest: Omit<AuditRecord, DecidedFields>): void {
    this.#renumber(rest);
    this.#batch.push(decidedLine(decision, rest, this.#time()));
    this.#queued();
  }

  #renumber(record: { conn?: number }): void {
    if (record.conn !== undefined) {
      record.conn = this.conn.base + (record.conn - 1) * this.conn.step + this.conn.id;
      if (record.conn > this.#maxConn) this.#maxConn = record.conn;
    }
  }

  #time(): string {
    return this.#iso.format(Date.now());
  }

  #queued(): void {
    if (this.#batch.length >= AUDIT_BATCH) return this.flush();
    if (!this.#scheduled) {
      this.#scheduled = true;
      setTimeout(() => this.flush(), 0);
    }
  }

  flush(): void {
    this.#scheduled = false;
    if (this.#batch.length === 0) return;
    post({ type: "audit", lines: this.#batch.join("\n"), maxConn: this.#maxConn });
    this.#batch = [];
  }

  close(): Promise<void> {
    this.flush();
    return Promise.resolve();
  }
}

const audit = new PostedAudit();

/**
 * The direct-path connections this worker served first (their peer keys), posted to the main
 * thread once per macrotask: it leaves them to this worker (lib/ingress/direct_watch.ts).
 */
let claims: string[] = [];
const claim = (key: string) => {
  if (claims.length === 0) {
    setTimeout(() => {
      post({ type: "claims", keys: claims });
      claims = [];
    }, 0);
  }
  claims.push(key);
};
let gateway: Gateway | undefined;
let id = 0;
/** The undo of the latest applied reload, by the seq of its message. */
const rollbacks = new Map<number, () => Promise<void>>();

// A failure nothing caught ends this worker: tell the main thread (which restarts it) and keep
// the error out of the process's own uncaught-error path, which would stop every worker.
const fatal = (reason: unknown) => {
  audit.flush();
  post({ type: "fatal", reason: (reason as Error)?.stack ?? String(reason) });
};
self.addEventListener("error", (e) => {
  e.preventDefault();
  fatal(e.error ?? e.message);
});
self.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  fatal(e.reason);
});

async function start(m: WorkerStart): Promise<void> {
  id = m.id;
  audit.conn = { base: m.conn.base, step: m.conn.step, id: m.id };
  const loaded = loadPolicyText(m.source.text, m.source.path);
  const ca = await loadCa(m.ca.cert, m.ca.key);
  if (ca.fingerprintSha256 !== m.ca.fingerprint) {
    throw new Error(
      `the CA in ${m.ca.cert} changed since sluice started (${ca.fingerprintSha256}, ` +
        `started with ${m.ca.fingerprint}); restart sluice to use the new CA everywhere`,
    );
  }
  gateway = await startGateway({
    loaded,
    stateDir: m.stateDir,
    ca,
    audit,
    resolve: m.resolve,
    listen: m.listen,
    limits: m.limits,
    reusePort: true,
    dataPath: m.dataPath,
    directScope: "claimed",
    onClaim: claim,
    log: (message) => post({ type: "log", message }),
  });
}

self.onmessage = async (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  try {
    switch (m.type) {
      case "start":
        await start(m);
        post({ type: "reply", seq: m.seq, ok: true, addrs: gateway!.server.addrs });
        break;
      case "reload": {
        // Test only: this worker cannot apply reloads, so the others must roll back theirs.
        if (Deno.env.get("SLUICE_TEST_WORKER_RELOAD_FAIL") === String(id)) {
          throw new Error("test reload failure (SLUICE_TEST_WORKER_RELOAD_FAIL)");
        }
        const rollback = await gateway!.reload(loadPolicyText(m.source.text, m.source.path));
        // Only the latest reload can be undone: older undos would keep old policies alive.
        rollbacks.clear();
        rollbacks.set(m.seq, rollback);
        post({ type: "reply", seq: m.seq, ok: true });
        break;
      }
      case "rollback": {
        const undo = rollbacks.get(m.of);
        rollbacks.delete(m.of);
        if (!undo) throw new Error(`no reload ${m.of} to roll back`);
        await undo();
        post({ type: "reply", seq: m.seq, ok: true });
        break;
      }
      case "metrics":
        post({ type: "reply", seq: m.seq, ok: true, text: gateway!.server.metrics.render() });
        break;
      case "close":
        await gateway?.close(m.drainMs);
        audit.flush();
        post({ type: "reply", seq: m.seq, ok: true });
        break;
      case "crash":
        // Test only (SLUICE_TEST_WORKER_CRASH=1): an uncaught error, as a bug would throw it.
        if (Deno.env.get("SLUICE_TEST_WORKER_CRASH") === "1") {
          setTimeout(() => {
            throw new Error("test crash (SLUICE_TEST_WORKER_CRASH)");
          }, 0);
        }
        break;
    }
  } catch (err) {
    if ("seq" in m) post({ type: "reply", seq: m.seq, ok: false, error: (err as Error).message });
  }
};
