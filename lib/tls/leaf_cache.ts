/**
 * A bounded cache of minted leaf certificates, shaped for `Deno.listenTls`'s per-handshake
 * resolver: `lookup(serverName)` returns `{ cert, key }` PEM strings, without a promise when it
 * can (always, with the default minter: see `lookup`); `get` is the same as a promise.
 *
 * Minting costs a few milliseconds of CPU, a hit a map lookup, so:
 * - entries live in an LRU of at most `max` names, so a client cycling through names cannot
 *   grow memory without bound (it can still make us mint: the policy should refuse names before
 *   they reach here);
 * - concurrent handshakes for the same name share one minting;
 * - a leaf is re-minted once it is within `renewBeforeMs` of expiry, so no client ever sees an
 *   expired certificate however long sluice runs;
 * - a failed mint is not remembered: the next handshake tries again.
 *
 * Deno 2.9.6's `listenTls` keeps its OWN cache in front of the resolver: it calls the resolver
 * once per server name for the lifetime of the listener and then reuses that answer, a failure
 * included, without bound (ext/tls/tls_key.rs, `TlsKeyResolver`; pinned by
 * test/lib/ca_test.ts). So behind one long-lived listener this cache's renewals and retries
 * reach clients only once the listener is replaced, and a name whose resolution failed stays
 * failed on that listener. The data path has to recycle its internal listener (well within
 * the leaf validity, and after a bounded number of names); this cache then makes the fresh
 * listener's first handshakes cheap.
 *
 * @module
 */
import { LRUCache } from "lru-cache";
import type { CertificateAuthority, MintedLeaf } from "./ca.ts";
import { DEFAULT_LEAF_VALIDITY_HOURS, mintLeafSync, normalizeLeafName } from "./ca.ts";

/** The PEM pair a TLS resolver returns: the chain (leaf first) and the leaf key. */
export type LeafPair = { cert: string; key: string };

/** Mints one leaf; the default is {@link mintLeaf} with the cache's CA. */
export type LeafMinter = (name: string, now: Date) => MintedLeaf | Promise<MintedLeaf>;

/** Options of {@link LeafCache}. */
export interface LeafCacheOptions {
  /** Most names kept; the least recently used is dropped first. Default 10 000. */
  max?: number;
  /** Re-mint a cached leaf this long before it expires. Default one day. */
  renewBeforeMs?: number;
  /** Validity of minted leaves in hours (default that of {@link mintLeaf}: 7 days). */
  validityHours?: number;
  /** The clock, in milliseconds since the epoch; default `Date.now`. */
  now?: () => number;
  /** Replaces the minter (tests count or fail mints with it). */
  mint?: LeafMinter;
}

/** Counters of {@link LeafCache.stats}. */
export interface LeafCacheStats {
  /** `get` calls answered from the cache. */
  hits: number;
  /** `get` calls that had to wait for a mint (their own or a shared one). */
  misses: number;
  /** Mints started. Lower than `misses` when concurrent gets shared one. */
  mints: number;
  /** Names currently cached. */
  size: number;
}

interface Entry {
  pair: LeafPair;
  /** Re-mint from this time on (ms since the epoch). */
  renewAt: number;
}

/** Default bound on cached names. About 1 KiB per entry, so ~10 MB at the bound. */
export const DEFAULT_LEAF_CACHE_MAX = 10_000;
/** Default renewal margin: one day before a leaf expires. */
export const DEFAULT_RENEW_BEFORE_MS = 24 * 60 * 60 * 1000;

/** Leaf certificates by name for one CA, minted on demand and cached. */
export class LeafCache {
  readonly #entries: LRUCache<string, Entry>;
  readonly #inFlight = new Map<string, Promise<LeafPair>>();
  readonly #renewBeforeMs: number;
  readonly #now: () => number;
  readonly #mint: LeafMinter;
  #hits = 0;
  #misses = 0;
  #mints = 0;

  /**
   * @param ca the CA that signs the leaves
   * @param opts bound, renewal margin, validity, clock and minter
   * @throws {RangeError} if `max` is not a positive integer or `renewBeforeMs` is negative
   */
  constructor(ca: CertificateAuthority, opts: LeafCacheOptions = {}) {
    const max = opts.max ?? DEFAULT_LEAF_CACHE_MAX;
    if (!Number.isInteger(max) || max < 1) {
      throw new RangeError(`LeafCache max must be a positive integer, got ${max}`);
    }
    this.#renewBeforeMs = opts.renewBeforeMs ?? DEFAULT_RENEW_BEFORE_MS;
    if (!(this.#renewBeforeMs >= 0)) {
      throw new RangeError(
        `LeafCache renewBeforeMs must be zero or more, got ${this.#renewBeforeMs}`,
      );
    }
    const validityHours = opts.validityHours ?? DEFAULT_LEAF_VALIDITY_HOURS;
    if (this.#renewBeforeMs >= validityHours * 3_600_000) {
      // Every leaf would be due for renewal the moment it was minted: a mint per handshake.
      throw new RangeError(
        `LeafCache renewBeforeMs (${this.#renewBeforeMs}) must be shorter than the leaf ` +
          `validity (${validityHours} h)`,
      );
    }
    this.#entries = new LRUCache<string, Entry>({ max });
    this.#now = opts.now ?? Date.now;
    this.#mint = opts.mint ?? ((name, now) => mintLeafSync(ca, name, { now, validityHours }));
  }

  /**
   * The leaf for `name`: cached if fresh, otherwise minted (once, however many callers ask at
   * the same time). Use it directly as a `Deno.listenTls` SNI resolver.
   *
   * @param name the server name (SNI) or IP literal; case and a trailing dot do not matter
   * @returns the chain PEM (leaf, then CA) and the leaf key PEM
   * @throws {CaError} (as a rejection) for a name that is not a DNS name or IP literal
   *   (including `""`, a client that sent no SNI), or when minting fails
   */
  async get(name: string): Promise<LeafPair> {
    return await this.lookup(name);
  }

  /**
   * {@link get} without a promise where none is needed: a fresh cached leaf, or one the minter
   * made synchronously (the default minter does), is returned as is. The data path's TLS
   * resolvers call this, so a new name costs one signature in the resolver's turn and never an
   * answer that arrives from another thread at a moment Deno's tasks choose. When the answer
   * then reaches Deno is the resolvers' choice, against a race in Deno's own cache
   * (`mintLeafSync` in ./ca.ts): ingress/direct.ts answers on a timer turn, and the hop
   * (ingress/terminator.ts) lets a name's first handshake go alone.
   *
   * @param name as for {@link get}
   * @returns the pair, or a promise of it while an asynchronous minter works
   * @throws {CaError} (synchronously) for a name that is not a DNS name or IP literal, or when a
   *   synchronous mint fails
   */
  lookup(name: string): LeafPair | Promise<LeafPair> {
    const key = normalizeLeafName(name).value;
    const entry = this.#entries.get(key);
    if (entry !== undefined && this.#now() < entry.renewAt) {
      this.#hits++;
      return entry.pair;
    }
    this.#misses++;
    const pending = this.#inFlight.get(key);
    if (pending !== undefined) return pending;
    this.#mints++;
    const minted = this.#mint(key, new Date(this.#now()));
    if (!(minted instanceof Promise)) return this.#store(key, minted);
    // Removed when settled, success or failure: the next caller after that decides afresh, so a
    // failure is retried rather than remembered.
    const later = minted.then((leaf) => this.#store(key, leaf)).finally(() =>
      this.#inFlight.delete(key)
    );
    this.#inFlight.set(key, later);
    return later;
  }

  /**
   * Counters since construction, and the current size.
   *
   * @returns hits, misses, mints and size
   */
  stats(): LeafCacheStats {
    return {
      hits: this.#hits,
      misses: this.#misses,
      mints: this.#mints,
      size: this.#entries.size,
    };
  }

  #store(key: string, leaf: MintedLeaf): LeafPair {
    const pair = { cert: leaf.certPem, key: leaf.keyPem };
    this.#entries.set(key, { pair, renewAt: leaf.notAfter.getTime() - this.#renewBeforeMs });
    return pair;
  }
}
