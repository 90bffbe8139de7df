/**
 * Name resolution for upstream connections. sluice resolves names itself
 * (never trusting an address the client chose) and checks every address
 * against the policy before connecting.
 *
 * The system resolver goes through getaddrinfo (node:dns `lookup`), so
 * /etc/hosts and nsswitch apply as they do for every other program on the
 * host. `--resolve NAME=ADDR` overrides, like curl's `--resolve`, exist for
 * testing against local servers and for pinning.
 *
 * @module
 */
import { lookup } from "node:dns/promises";
import { LRUCache } from "lru-cache";
import { type Ip, parseIp } from "../../policy/address.ts";

/** Resolves a normalized host name to addresses, in preference order. */
export interface Resolver {
  resolve(name: string): Promise<Ip[]>;
}

/** Raised when a name does not resolve; `code` is the resolver's (ENOTFOUND, EAI_AGAIN, ...). */
export class ResolveError extends Error {
  override name = "ResolveError";
  constructor(readonly host: string, readonly code: string, options?: ErrorOptions) {
    super(`cannot resolve ${host}: ${code}`, options);
  }
}

/** The host's resolver (getaddrinfo): honours /etc/hosts. */
export class SystemResolver implements Resolver {
  async resolve(name: string): Promise<Ip[]> {
    try {
      const results = await lookup(name, { all: true, verbatim: true });
      const out: Ip[] = [];
      for (const r of results) {
        const ip = parseIp(r.address);
        if (ip && !out.some((x) => x.text === ip.text)) out.push(ip);
      }
      if (out.length === 0) throw new ResolveError(name, "ENODATA");
      return out;
    } catch (e) {
      if (e instanceof ResolveError) throw e;
      throw new ResolveError(name, (e as { code?: string }).code ?? "EFAIL", { cause: e });
    }
  }
}

/** Options of {@link CachingResolver}. */
export type CachingResolverOptions = {
  /** How long an answer is reused (getaddrinfo reports no TTL); default 30 s. */
  ttlMs?: number;
  /** Names kept at most; the least recently used go first. Default 10,000. */
  maxNames?: number;
  /** Clock for the TTL, in ms (tests). */
  now?: () => number;
};

/**
 * Remembers another resolver's answers for a short fixed time, and lets concurrent
 * look-ups of one name share a single query.
 *
 * Why: getaddrinfo runs on a thread per call and may query DNS; doing it per request cost
 * more than the rest of a keep-alive request, and a changing answer split the upstream
 * pool (its key includes the address). Safety is unchanged: every address, cached or
 * not, still passes the policy's address decision before sluice connects to it.
 * Failures are not cached: the next request asks again.
 */
export class CachingResolver implements Resolver {
  readonly #inner: Resolver;
  readonly #answers: LRUCache<string, Ip[]>;
  readonly #inflight = new Map<string, Promise<Ip[]>>();

  constructor(inner: Resolver, opts: CachingResolverOptions = {}) {
    this.#inner = inner;
    const now = opts.now;
    this.#answers = new LRUCache<string, Ip[]>({
      max: opts.maxNames ?? 10_000,
      ttl: opts.ttlMs ?? 30_000,
      // Read the clock on every look-up (lru-cache otherwise caches it for 1 ms on a timer).
      ttlResolution: 0,
      ...(now ? { perf: { now } } : {}),
    });
  }

  resolve(name: string): Promise<Ip[]> {
    const cached = this.#answers.get(name);
    if (cached !== undefined) return Promise.resolve(cached);
    const pending = this.#inflight.get(name);
    if (pending !== undefined) return pending;
    const p = this.#inner.resolve(name).then((ips) => {
      this.#answers.set(name, ips);
      return ips;
    }).finally(() => this.#inflight.delete(name));
    this.#inflight.set(name, p);
    return p;
  }
}

/**
 * A resolver with fixed answers for some names, falling back to another
 * resolver for the rest.
 */
export class OverrideResolver implements Resolver {
  readonly #fixed: Map<string, Ip[]>;
  readonly #fallback: Resolver;

  constructor(fixed: Map<string, Ip[]>, fallback: Resolver) {
    this.#fixed = fixed;
    this.#fallback = fallback;
  }

  resolve(name: string): Promise<Ip[]> {
    const f = this.#fixed.get(name);
    return f ? Promise.resolve(f) : this.#fallback.resolve(name);
  }
}

/**
 * Parses `NAME=ADDR[,ADDR...]` overrides as given on the command line.
 *
 * @throws {Error} naming the bad entry
 */
export function parseResolveOverrides(entries: readonly string[]): Map<string, Ip[]> {
  const out = new Map<string, Ip[]>();
  for (const entry of entries) {
    const eq = entry.indexOf("=");
    if (eq <= 0) {
      throw new Error(`--resolve "${entry}": write NAME=ADDRESS, e.g. api.test=127.0.0.1`);
    }
    const name = entry.slice(0, eq).toLowerCase().replace(/\.$/, "");
    const ips = entry.slice(eq + 1).split(",").map((a) => {
      const ip = parseIp(a.trim());
      if (!ip) throw new Error(`--resolve "${entry}": "${a}" is not an IP address`);
      return ip;
    });
    out.set(name, ips);
  }
  return out;
}

/**
 * The resolver sluice's commands use: the host's (getaddrinfo) behind a {@link CachingResolver},
 * with `--resolve NAME=ADDR` overrides in front.
 *
 * @param overrides the `--resolve` entries
 * @throws {Error} naming a bad entry (see {@link parseResolveOverrides})
 */
export function hostResolver(overrides: readonly string[]): Resolver {
  const fixed = parseResolveOverrides(overrides);
  const system = new CachingResolver(new SystemResolver());
  return fixed.size ? new OverrideResolver(fixed, system) : system;
}
