/**
 * `sluice serve --workers N`: the data path in N Web Workers (each its own V8 isolate and
 * thread, all in the one sluice process), every one listening on the same ports with
 * SO_REUSEPORT so the kernel spreads new connections across them.
 *
 * Why threads and not processes: one process keeps one owner for everything that must exist
 * once. The main thread keeps the policy file, the CA, netfilter enforcement and its cleanup,
 * signals, systemd notifications, the admin listener, the policy DNS listener and the one audit
 * log; the workers only carry traffic. (Linux lets only sockets of the same effective user join
 * a SO_REUSEPORT group, so no other user's process can take a share of the connections.)
 *
 * - Policy: the main thread reads and validates the file (and the credentials and upstream CA
 *   files it names); each worker gets the same SOURCE text and compiles it itself. A reload is
 *   validated once in the main thread, then applied by every worker; if one of them cannot
 *   apply it, those that did roll back and the reload is refused: one policy is in force
 *   everywhere, always.
 * - Audit: workers post batches of records; the main thread writes them through its AuditLog,
 *   so lines never interleave. On shutdown every worker drains and flushes before the log
 *   closes.
 * - Metrics: `/metrics` asks every worker for its registry and sums them (worker_metrics.ts).
 * - A worker that dies is logged and restarted; the others keep serving.
 *
 * Over 500 lines: the message protocol, the restart and reload bookkeeping and the services the
 * main thread keeps share one set of state (the slots, the policy in force, the reload version)
 * and read best in one place.
 *
 * @module
 */
import { type Loaded, loadPolicyText } from "../../policy/mod.ts";
import type { CompiledPolicy } from "../../policy/mod.ts";
import { type Brokerage, buildBrokerage } from "../credentials/brokerage.ts";
import { type DnsServer, startDnsServer } from "../dns/server.ts";
import type { Limits } from "../ingress/limits.ts";
import { startAdmin } from "../ops/admin.ts";
import type { AuditLog, AuditSink } from "../ops/audit.ts";
import { Metrics } from "../ops/metrics.ts";
import { exportCaPem } from "../tls/ca.ts";
import { hostResolver } from "../upstream/resolver.ts";
import { loadTrust, useSystemRootsByDefault } from "../upstream/trust.ts";
import { readPolicyFile } from "./policy_file.ts";
import type { GatewayOptions } from "./startup.ts";
import { type DataPath, type ListenAddr, type Server, servesDirect } from "./server.ts";
import { mergeMetrics } from "./worker_metrics.ts";
import { ConnectionGuard, DEFAULT_LIMITS } from "../ingress/limits.ts";
import { DirectWatch, kernelSource } from "../ingress/direct_watch.ts";
import { SocketWatch } from "../tls/socket_watch.ts";

/** The default number of workers is the number of cores, but no more than this. */
export const DEFAULT_MAX_WORKERS = 4;
/** The most `--workers` accepts. */
export const MAX_WORKERS = 64;

/**
 * Parses `--workers N`.
 *
 * @param text the flag's value; undefined for the default
 * @param cores the number of cores (navigator.hardwareConcurrency)
 * @returns the number of workers: N, or by default the cores, at most {@link DEFAULT_MAX_WORKERS}
 * @throws {Error} when N is not a whole number from 1 to {@link MAX_WORKERS}
 */
export function parseWorkers(
  text: string | undefined,
  cores: number = navigator.hardwareConcurrency,
): number {
  if (text === undefined) return Math.max(1, Math.min(cores || 1, DEFAULT_MAX_WORKERS));
  const n = /^\d{1,3}$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!(n >= 1 && n <= MAX_WORKERS)) {
    throw new Error(
      `--workers (or SLUICE_WORKERS) "${text}" is not a whole number from 1 to ${MAX_WORKERS}; ` +
        `e.g. --workers 2`,
    );
  }
  return n;
}

/**
 * Thrown when the worker module itself could not be loaded (e.g. a binary built without
 * `--include lib/gateway/worker_main.ts`): no worker can run, but one thread can.
 */
export class WorkerLoadError extends Error {
  override name = "WorkerLoadError";
}

/** A policy as read from its file: the text every worker compiles, and the main thread's result. */
export type PolicySource = { text: string; path: string; loaded: Loaded };

/**
 * Reads and loads a policy file, keeping its text: the exact text validated here is what the
 * workers compile, even if the file changes meanwhile.
 *
 * @throws {PolicyFileError} when the file cannot be read
 * @throws {PolicyError} when the policy is invalid
 */
export async function readPolicySource(path: string): Promise<PolicySource> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    // One wording for unreadable files: readPolicyFile's (it fails the same way).
    await readPolicyFile(path);
    throw new Error(`Cannot read policy ${path}`);
  }
  return { text, path, loaded: loadPolicyText(text, path) };
}

// ------------------------------------------------------------------------------------------
// The messages between the main thread and a worker (worker_main.ts).

/** What a worker needs to start. */
export type WorkerStart = {
  type: "start";
  seq: number;
  /** 1..N, for log lines and test hooks. */
  id: number;
  source: { text: string; path: string };
  stateDir: string;
  /**
   * The CA's files and the fingerprint the main thread loaded: the worker loads the same files
   * (so the private key never travels in a message) and refuses a different CA.
   */
  ca: { cert: string; key: string; fingerprint: string };
  resolve: string[];
  listen: { proxy?: ListenAddr; transparentHttps?: ListenAddr; transparentHttp?: ListenAddr };
  limits: Partial<Limits>;
  dataPath?: DataPath;
  /** Its audit connection ids: local id n is `base + (n - 1) * step + id` (see `globalConn`). */
  conn: { base: number; step: number };
};

/** Main thread to worker. */
export type ToWorker =
  | WorkerStart
  | { type: "reload"; seq: number; source: { text: string; path: string } }
  | { type: "rollback"; seq: number; of: number }
  | { type: "metrics"; seq: number }
  | { type: "close"; seq: number; drainMs: number }
  | { type: "crash" };

/** Worker to main thread. */
export type FromWorker =
  | { type: "reply"; seq: number; ok: true; addrs?: Server["addrs"]; text?: string }
  | { type: "reply"; seq: number; ok: false; error: string }
  | { type: "audit"; lines: string; maxConn: number }
  | { type: "log"; message: string }
  | { type: "claims"; keys: string[] }
  | { type: "fatal"; reason: string };

type Reply = Extract<FromWorker, { type: "reply" }>;
type Request = ToWorker extends infer T ? T extends { seq: number } ? Omit<T, "seq"> : never
  : never;

// ------------------------------------------------------------------------------------------

/** How long a worker may take to start, or to answer a scrape. */
const START_TIMEOUT_MS = 30_000;
const SCRAPE_TIMEOUT_MS = 5_000;
/** How long a worker may take to apply a reload; one that takes longer is restarted. */
const RELOAD_TIMEOUT_MS = 30_000;
/** Restart backoff: doubled after each death soon after a start, up to the maximum. */
const RESTART_MIN_MS = 100;
const RESTART_MAX_MS = 30_000;
/** A worker that lived this long resets the backoff. */
const STABLE_MS = 10_000;

type Slot = {
  id: number;
  worker: Worker;
  pending: Map<number, (r: Reply) => void>;
  ready: boolean;
  dead: boolean;
  /** It sent a message: its module loaded. */
  spoke: boolean;
  startedAt: number;
  /** The reload version the worker started with. */
  startedWith: number;
  /** Where its connection ids start (see `globalConn`). */
  connBase: number;
  /** The last reload it applied by message: its version, and the seq naming the worker's undo. */
  applied?: { version: number; seq: number };
};

/** What {@link startWorkers} needs: `startGateway`'s options, minus what workers build themselves. */
export type WorkersOptions =
  & Pick<
    GatewayOptions,
    | "ca"
    | "resolve"
    | "listen"
    | "limits"
    | "dataPath"
    | "onResolved"
    | "onReloadRequest"
    | "log"
  >
  & {
    count: number;
    source: PolicySource;
    /** The state directory (workers read the placeholder key from it). */
    stateDir: string;
    /** The files the CA was loaded from (workers load them too). */
    caFiles: { cert: string; key: string };
    /** The one audit log: workers' lines arrive serialised (`writeLines`). */
    audit: AuditSink & Pick<AuditLog, "writeLines">;
  };

/** A running set of workers, shaped like the parts of a `Gateway` that `serve` uses. */
export type Workers = {
  server: {
    addrs: Server["addrs"];
    policy(): CompiledPolicy;
    reloadFailed(): void;
  };
  dns?: DnsServer;
  /**
   * Validates `next` in the main thread, then has every worker apply it; refuses (throws, with
   * the running policy in force in every worker) when any step fails.
   *
   * @returns a function that puts the previous policy back in every worker
   */
  reload(next: PolicySource): Promise<() => Promise<void>>;
  /** Drains every worker (their audit records written), then closes admin, DNS and the audit log. */
  close(drainMs: number): Promise<void>;
  /** Test only: makes worker `id` throw an uncaught error (needs SLUICE_TEST_WORKER_CRASH=1). */
  crashForTest(id: number): void;
};

/**
 * Starts the admin listener, N workers and the DNS listener.
 *
 * @throws the first worker's start error (a port in use, a credential that cannot be loaded)
 */
export async function startWorkers(opts: WorkersOptions): Promise<Workers> {
  // The same trust settings the workers' servers use, to validate reloads here first.
  const trustOptions = { systemInDefaultStore: useSystemRootsByDefault() };
  let source = opts.source;
  // What the workers will load is checked here first, so a start fails as a single server's
  // would, with the same error.
  let brokerage: Brokerage = await buildBrokerage(source.loaded.compiled, opts.stateDir);
  await loadTrust(source.loaded.compiled, trustOptions);
  let generation = 1;
  let lastReloadOk = 1;
  /** Bumped by every reload that workers applied (a restarted worker records which it got). */
  let version = 0;
  // The main thread's registry: the policy's and the process's figures, the DNS listener's
  // violations; the workers' registries are added to it at every scrape.
  const metrics = new Metrics({
    activeConnections: () => 0,
    leafCache: () => ({ hits: 0, misses: 0, size: 0 }),
    policyGeneration: () => generation,
    lastReloadOk: () => lastReloadOk,
  });
  // The direct data path in workers: the kernel lists every worker's connections to every
  // thread (fds are per process), so each worker keeps the connections it served (it claims
  // them) and this thread the others: their handshake and first head, under the caps
  // (lib/ingress/direct_watch.ts).
  const kernel = opts.listen.transparentHttps && SocketWatch.available()
    ? new SocketWatch()
    : undefined;
  const limits: Limits = { ...DEFAULT_LIMITS, ...opts.limits };
  const direct = {
    guard: undefined as ConnectionGuard | undefined,
    watch: undefined as DirectWatch | undefined,
  };
  // Watched here when the workers serve it directly (the same decision as theirs).
  const isDirect = (c: CompiledPolicy) =>
    kernel !== undefined && servesDirect(opts.dataPath ?? "auto", c, true);
  const watchDirect = (on: boolean, afterHop: boolean) => {
    if (!on) {
      direct.watch?.close();
      direct.guard?.close();
      direct.watch = direct.guard = undefined;
      return;
    }
    if (direct.watch || !kernel || !bound.transparentHttps) return;
    const addr = bound.transparentHttps as Deno.NetAddr;
    const guard = new ConnectionGuard({ limits, metrics, audit: opts.audit });
    const watch = new DirectWatch({
      guard,
      limits,
      scope: "unclaimed",
      port: () => addr.port,
      source: kernelSource(kernel, addr.hostname),
    });
    if (afterHop) watch.leaveExisting();
    watch.start();
    Object.assign(direct, { guard, watch });
  };
  const slots = new Map<number, Slot>();
  const restartTimers = new Map<number, ReturnType<typeof setTimeout>>();
  const backoff = new Map<number, number>();
  let closing = false;
  let seq = 1;
  // Every worker numbers its connections from 1. In the audit trail a connection id must name
  // one connection: worker k of N gets k, k+N, k+2N... above a base, and a restarted worker's
  // base lies above every id written so far, so no id is ever given twice.
  // The worker maps its ids (worker_main.ts, `globalConn` there) and reports the highest.
  let maxConn = 0;
  // Restarts and reloads take turns, so a worker never starts with a policy a reload is
  // about to replace or undo behind its back.
  let turn: Promise<unknown> = Promise.resolve();
  const inTurn = <T>(f: () => Promise<T>): Promise<T> => {
    const run = turn.then(f, f);
    turn = run.catch(() => {});
    return run;
  };

  const call = (slot: Slot, msg: Request, timeoutMs?: number): Promise<Reply> => {
    const n = seq++;
    const { promise, resolve } = Promise.withResolvers<Reply>();
    let timer: ReturnType<typeof setTimeout> | undefined;
    slot.pending.set(n, (r) => {
      clearTimeout(timer);
      slot.pending.delete(n);
      resolve(r);
    });
    if (timeoutMs !== undefined) {
      timer = setTimeout(
        () =>
          slot.pending.get(n)?.({
            type: "reply",
            seq: n,
            ok: false,
            error: `worker ${slot.id} did not answer within ${timeoutMs} ms`,
          }),
        timeoutMs,
      );
    }
    if (slot.dead) {
      slot.pending.get(n)!({ type: "reply", seq: n, ok: false, error: `worker ${slot.id} exited` });
    } else {
      slot.worker.postMessage({ ...msg, seq: n } as ToWorker);
    }
    return promise;
  };

  const died = (slot: Slot, reason: string) => {
    if (slot.dead) return;
    slot.dead = true;
    slot.worker.terminate();
    for (const [n, settle] of [...slot.pending]) {
      settle({ type: "reply", seq: n, ok: false, error: `worker ${slot.id} exited: ${reason}` });
    }
    if (slots.get(slot.id) === slot && slot.ready && !closing) {
      const firstLine = reason.split("\n")[0];
      opts.log(`sluice: worker ${slot.id} exited: ${firstLine}; restarting`);
      const lived = Date.now() - slot.startedAt;
      const delay = lived >= STABLE_MS ? 0 : (backoff.get(slot.id) ?? RESTART_MIN_MS);
      if (lived < STABLE_MS) backoff.set(slot.id, Math.min(delay * 2, RESTART_MAX_MS));
      else backoff.delete(slot.id);
      restart(slot.id, delay);
    }
  };

  /** Where every worker after the first binds: the first one's ports (a port 0 resolved). */
  let bound: WorkerStart["listen"] = {
    proxy: opts.listen.proxy,
    transparentHttps: opts.listen.transparentHttps,
    transparentHttp: opts.listen.transparentHttp,
  };

  const startSlot = async (id: number): Promise<Server["addrs"]> => {
    const worker = new Worker(new URL("./worker_main.ts", import.meta.url), {
      type: "module",
      name: `sluice worker ${id}`,
    });
    const slot: Slot = {
      id,
      worker,
      pending: new Map(),
      ready: false,
      dead: false,
      spoke: false,
      startedAt: Date.now(),
      startedWith: version,
      connBase: Math.ceil(maxConn / opts.count) * opts.count,
    };
    slots.set(id, slot);
    worker.onmessage = (e: MessageEvent<FromWorker>) => {
      const m = e.data;
      slot.spoke = true;
      if (m.type === "audit") {
        // Serialised in the worker, ids already global: one string to write here.
        if (m.maxConn > maxConn) maxConn = m.maxConn;
        opts.audit.writeLines(m.lines);
      } else if (m.type === "claims") {
        for (const key of m.keys) direct.watch?.claim(key);
      } else if (m.type === "reply") slot.pending.get(m.seq)?.(m);
      else if (m.type === "log") opts.log(m.message);
      else if (m.type === "fatal") died(slot, m.reason);
    };
    // What the worker's own handlers could not catch (a module that fails to load): never let
    // it reach the process's uncaught-error path, which would end every worker.
    worker.onerror = (e) => {
      e.preventDefault();
      died(slot, e.message);
    };
    const reply = await call(slot, {
      type: "start",
      id,
      source: { text: source.text, path: source.path },
      stateDir: opts.stateDir,
      ca: { ...opts.caFiles, fingerprint: opts.ca.fingerprintSha256 },
      resolve: [...opts.resolve],
      listen: bound,
      limits: opts.limits ?? {},
      dataPath: opts.dataPath,
      conn: { base: slot.connBase, step: opts.count },
    }, START_TIMEOUT_MS);
    if (!reply.ok) {
      slot.dead = true;
      worker.terminate();
      if (!slot.spoke) throw new WorkerLoadError(`worker ${id} could not load: ${reply.error}`);
      throw new Error(`worker ${id} could not start: ${reply.error}`);
    }
    slot.ready = true;
    return reply.addrs ?? {};
  };

  const restart = (id: number, delayMs: number) => {
    const timer = setTimeout(() => {
      restartTimers.delete(id);
      inTurn(async () => {
        if (closing) return;
        try {
          await startSlot(id);
          opts.log(`sluice: worker ${id} restarted`);
        } catch (e) {
          const delay = backoff.get(id) ?? RESTART_MIN_MS;
          backoff.set(id, Math.min(delay * 2, RESTART_MAX_MS));
          opts.log(`sluice: ${(e as Error).message}; retrying in ${delay} ms`);
          restart(id, delay);
        }
      });
    }, delayMs);
    restartTimers.set(id, timer);
  };

  const live = () => [...slots.values()].filter((s) => s.ready && !s.dead);

  const closeWorkers = async (drainMs: number) => {
    closing = true;
    for (const t of restartTimers.values()) clearTimeout(t);
    restartTimers.clear();
    await Promise.all(
      live().map(async (s) => {
        const r = await call(s, { type: "close", drainMs }, drainMs + 15_000);
        if (!r.ok) opts.log(`sluice: worker ${s.id} did not drain: ${r.error}`);
      }),
    );
    for (const s of slots.values()) {
      s.dead = true;
      s.worker.terminate();
    }
  };

  // The first worker binds what was asked (a port 0 becomes a port); the others join its ports.
  try {
    const first = await startSlot(1);
    bound = {
      proxy: first.proxy,
      transparentHttps: first.transparentHttps,
      transparentHttp: first.transparentHttp,
    };
    await Promise.all(Array.from({ length: opts.count - 1 }, (_, i) => startSlot(i + 2)));
  } catch (e) {
    await closeWorkers(0);
    throw e;
  }
  watchDirect(isDirect(source.loaded.compiled), false);
  const addrs: Server["addrs"] = {
    proxy: bound.proxy as Deno.NetAddr | undefined,
    transparentHttps: bound.transparentHttps as Deno.NetAddr | undefined,
    transparentHttp: bound.transparentHttp as Deno.NetAddr | undefined,
  };

  let admin: { addr: Deno.NetAddr; close(): Promise<void> } | undefined;
  let dns: DnsServer | undefined;
  try {
    if (opts.listen.admin) {
      admin = startAdmin(opts.listen.admin, {
        healthy: () => !closing,
        metrics: async () => {
          const replies = await Promise.all(
            live().map((s) => call(s, { type: "metrics" }, SCRAPE_TIMEOUT_MS)),
          );
          const texts = replies.flatMap((r) => (r.ok && r.text !== undefined ? [r.text] : []));
          return mergeMetrics(metrics.render(), texts);
        },
        caPem: () => exportCaPem(opts.ca),
        reload: opts.onReloadRequest ?? (() => Promise.resolve("reload is not available")),
      });
      addrs.admin = admin.addr;
    }
    dns = opts.listen.dns
      ? await startDnsServer({
        ...opts.listen.dns,
        policy: () => source.loaded.compiled,
        resolver: hostResolver([...opts.resolve]),
        audit: opts.audit,
        onResolved: opts.onResolved,
        scanner: () => brokerage.broker.scanner,
        onViolation: (c) => metrics.violations.inc({ credential: c.name }),
      })
      : undefined;
  } catch (e) {
    await admin?.close();
    await closeWorkers(0);
    throw e;
  }

  const refused = () => {
    lastReloadOk = 0;
    metrics.reloads.inc({ result: "failed" });
  };

  /** Has every live worker apply `next`; on any failure, those that did roll back. */
  const apply = async (next: PolicySource): Promise<number> => {
    const v = ++version;
    const text = { text: next.text, path: next.path };
    const targets = live();
    const replies = await Promise.all(
      targets.map(async (s) => {
        const r = await call(s, { type: "reload", source: text }, RELOAD_TIMEOUT_MS);
        // A worker that did not answer may still apply it later: start it afresh instead.
        if (!r.ok && !s.dead && /did not answer/.test(r.error)) died(s, r.error);
        return r;
      }),
    );
    // The seq of each worker's reload names the undo it holds.
    const applied = targets.flatMap((
      s,
      i,
    ) => (replies[i].ok ? [[s, replies[i].seq] as const] : []));
    const failed = targets.flatMap((s, i) => {
      const r = replies[i];
      return r.ok ? [] : [`worker ${s.id}: ${r.error}`];
    });
    if (failed.length === 0) {
      for (const [s, n] of applied) s.applied = { version: v, seq: n };
      return v;
    }
    for (const [s, n] of applied) {
      const r = await call(s, { type: "rollback", of: n });
      if (!r.ok) {
        opts.log(`sluice: worker ${s.id} could not roll back: ${r.error}; restarting it`);
        died(s, `rollback failed: ${r.error}`);
      }
    }
    throw new Error(failed.join("\n"));
  };

  return {
    server: {
      addrs,
      policy: () => source.loaded.compiled,
      reloadFailed: refused,
    },
    dns,
    reload: (next) =>
      inTurn(async () => {
        let nextBrokerage: Brokerage;
        let v: number;
        try {
          // Everything a worker could trip over is checked here first: the policy (already
          // loaded), its credentials and its upstream CA files.
          nextBrokerage = await buildBrokerage(next.loaded.compiled, opts.stateDir);
          await loadTrust(next.loaded.compiled, trustOptions);
          v = await apply(next);
        } catch (e) {
          refused();
          throw e;
        }
        const prev = { source, brokerage };
        const wasDirect = isDirect(source.loaded.compiled);
        watchDirect(isDirect(next.loaded.compiled), !wasDirect);
        source = next;
        brokerage = nextBrokerage;
        generation++;
        lastReloadOk = 1;
        metrics.reloads.inc({ result: "ok" });
        return () =>
          inTurn(async () => {
            watchDirect(isDirect(prev.source.loaded.compiled), !isDirect(source.loaded.compiled));
            source = prev.source;
            brokerage = prev.brokerage;
            generation++;
            metrics.reloads.inc({ result: "ok" });
            const prevText = { text: prev.source.text, path: prev.source.path };
            await Promise.all(
              live().map(async (s) => {
                const r = s.applied?.version === v
                  ? await call(s, { type: "rollback", of: s.applied.seq })
                  // Started with the new policy after it was applied: give it the old one.
                  : s.startedWith >= v
                  ? await call(s, { type: "reload", source: prevText })
                  : undefined;
                if (r && !r.ok) {
                  opts.log(`sluice: worker ${s.id} could not roll back: ${r.error}; restarting it`);
                  died(s, `rollback failed: ${r.error}`);
                }
              }),
            );
          });
      }),
    async close(drainMs) {
      await closeWorkers(drainMs);
      watchDirect(false, false);
      kernel?.close();
      await admin?.close();
      await dns?.close();
      await opts.audit.close();
    },
    crashForTest(id) {
      const s = slots.get(id);
      if (s && !s.dead) s.worker.postMessage({ type: "crash" } satisfies ToWorker);
    },
  };
}
