/**
 * Credential brokering on the data path: find placeholders in requests,
 * replace them with real values toward the hosts a credential is scoped to,
 * inject configured headers, and put placeholders back where an upstream
 * echoes a real value in its response. Pure logic, no I/O.
 *
 * How a request is handled (the proxy's order):
 *   1. {@link Broker.scanRequest} on the head: which credentials' placeholders
 *      appear, and where. Any placeholder counts, in any place, whatever the
 *      credential's `in` says.
 *   2. `decideCredentials(compiled, dest, port, [...found.keys()])`: found
 *      credentials not scoped to the destination are violations: block (403).
 *   3. {@link Broker.rewriteRequest} with the scoped (`substitute`) names:
 *      replaces placeholders in the places each credential's `in` lists and
 *      sets `inject` headers. A placeholder of a scoped credential found in a
 *      place its `in` does not list is NOT a violation (the value may go to
 *      that host); it is forwarded unchanged, as the placeholder.
 *   4. The body, through {@link Broker.requestBodyStream} (streaming; see its
 *      doc for what a violation found mid-body can and cannot prevent), or
 *      for bodies small enough to buffer first, {@link Broker.rewriteBody},
 *      which finds violations before a single byte is sent and yields the new
 *      Content-Length.
 *   5. The response: {@link Broker.responseScrubber} (lib/credentials/scrub.ts) over every
 *      loaded credential, whatever was substituted on this request: each real
 *      value, raw or encoded, in the status line, every header and every body
 *      (decoded when content-encoded) is replaced by its placeholder.
 *
 * Matching: placeholders and secrets are byte patterns found with a
 * multi-pattern Horspool search (shift table over the shortest pattern's
 * length), leftmost first, longest at a position, never overlapping. Streams
 * hold back the last `longest pattern - 1` bytes of each chunk so a pattern
 * split across chunks is still found, and a placeholder is always detected
 * before any of its bytes are passed on.
 *
 * Why one file of ~900 lines: every operation of the broker (scan, substitute, scan bodies,
 * rewrite streams) shares the per-credential entries built once in its constructor.
 *
 * @module
 */
import { concatBytes } from "../bytes.ts";
import type { Credential } from "../../policy/types.ts";
import {
  decodeBasic,
  type Found,
  type Place,
  PlaceholderScanner,
} from "../../policy/placeholders.ts";
import { type ResponseParts, type ScrubbedResponse, Scrubber, scrubResponse } from "./scrub.ts";
import { Matcher } from "./scrub.ts";
import { MIN_SECRET_LENGTH, SecretError, type SecretValue } from "./secrets.ts";
import { type ClientCerts, NO_CLIENT_CERTS } from "./client_certs.ts";
import type { OAuth2Tokens, TokenCell } from "./oauth2.ts";
import { type AwsKeys, type AwsPlaceholders, awsPlaceholders } from "./sigv4.ts";

/** The oauth2 credentials' token cells (lib/credentials/oauth2.ts), and their registry. */
export type BrokerTokens = { tokens: OAuth2Tokens; cells: ReadonlyMap<string, TokenCell> };

/** Header fields as the upstream client takes them: latin1 byte strings. */
export type HeaderFields = readonly [string, string][];

export type { Found, Place };

/** A request head after {@link Broker.rewriteRequest}. */
export type RewrittenRequest = {
  /** The origin-form request target (path and query) with placeholders replaced. */
  target: string;
  /** A fresh list; injected fields are appended at the end. */
  headers: [string, string][];
  /** Credentials whose placeholder was replaced somewhere in the head (names only). */
  substituted: string[];
  /** Credentials whose `inject` header was set (names only). */
  injected: string[];
};

/** A buffered body after {@link Broker.rewriteBody}. */
export type RewrittenBody = {
  /** The body to send (its length is the new Content-Length). */
  body: Uint8Array;
  /** Every credential whose placeholder appears in the body. */
  found: string[];
  /** Found credentials not in the allowed set: the request must not be sent. */
  violations: string[];
  /** Allowed credentials with `body` in `in` whose placeholder was replaced. */
  substituted: string[];
};

/**
 * A placeholder turned up in a request body bound for a host outside its
 * credential's scope. The message names the credential, never a value.
 */
export class CredentialViolationError extends Error {
  /** The credential whose placeholder was found. */
  readonly credential: string;

  /** @param credential the credential's name */
  constructor(credential: string) {
    super(
      `the request body holds the placeholder of credential ${credential}, ` +
        "which may not be sent to this host; the request was aborted",
    );
    this.name = "CredentialViolationError";
    this.credential = credential;
  }
}

/**
 * Bodies up to this size are worth buffering before forwarding, so that a
 * violation is found before anything reaches the upstream (see
 * {@link Broker.rewriteBody}). A recommendation for the caller; nothing here
 * enforces it.
 */
export const BUFFERED_BODY_LIMIT = 1 << 20;

const EMPTY = new Uint8Array(0);

// ---------------------------------------------------------------------------------------------
// Multi-pattern byte search: one matcher for placeholders and secrets (lib/credentials/scrub.ts `Matcher`)

/**
 * What to do with a match: replacement bytes, or null to pass the matched
 * bytes on unchanged. Throwing fails the whole operation (for a stream: the
 * stream errors, and nothing of that chunk is passed on).
 */
export type OnMatch = (index: number) => Uint8Array | null;

/** Where the last {@link rewriteUpTo} stopped: bytes from there on are undecided. */
let lastCut = 0;

/** Copies `src[a, b)` to `dst` at `o`; a plain loop beats creating a subarray for short runs. */
function copyRange(src: Uint8Array, a: number, b: number, dst: Uint8Array, o: number): void {
  if (b - a > 32) {
    dst.set(src.subarray(a, b), o);
  } else {
    for (let i = a; i < b; i++) dst[o++] = src[i];
  }
}

/** Rewrites `buf[0, lastCut)`; matches may start only before `limit`. */
function rewriteUpTo(
  set: Matcher,
  onMatch: OnMatch,
  buf: Uint8Array,
  limit: number,
): Uint8Array {
  // Kept runs as [from, to) offsets and their replacements: no subarray per match.
  let marks: number[] | null = null;
  let reps: Uint8Array[] | null = null;
  let size = 0;
  let emitFrom = 0;
  let pos = 0;
  for (;;) {
    const i = set.find(buf, pos, limit, buf.length);
    if (i < 0) break;
    const s = set.lastStart;
    pos = s + set.patterns[i].length;
    const rep = onMatch(i);
    if (rep !== null) {
      (marks ??= []).push(emitFrom, s);
      (reps ??= []).push(rep);
      size += s - emitFrom + rep.length;
      emitFrom = pos;
    }
  }
  const cut = Math.min(buf.length, Math.max(pos, limit, 0));
  lastCut = cut;
  if (marks === null || reps === null) return buf.subarray(0, cut);
  const out = new Uint8Array(size + cut - emitFrom);
  let o = 0;
  for (let k = 0; k < reps.length; k++) {
    const a = marks[2 * k], b = marks[2 * k + 1];
    copyRange(buf, a, b, out, o);
    o += b - a;
    const rep = reps[k];
    copyRange(rep, 0, rep.length, out, o);
    o += rep.length;
  }
  copyRange(buf, emitFrom, cut, out, o);
  return out;
}

/**
 * Rewrites a whole buffer: every match, leftmost-longest and non-overlapping,
 * goes through `onMatch`.
 *
 * @returns the input itself when nothing was replaced, else a new buffer
 */
export function rewriteBytes(set: Matcher, onMatch: OnMatch, bytes: Uint8Array): Uint8Array {
  return rewriteUpTo(set, onMatch, bytes, bytes.length);
}

/**
 * The streaming form of {@link rewriteBytes}: the output is exactly what
 * rewriteBytes would give for the concatenated input, however it is chunked.
 * Holds back at most `set.max - 1` bytes between chunks; never buffers
 * more. Output chunks may alias input chunks: the producer must not reuse a
 * chunk's buffer after enqueueing it.
 *
 * @returns a transform stream
 */
export function rewriteStream(
  set: Matcher,
  onMatch: OnMatch,
): TransformStream<Uint8Array, Uint8Array> {
  return new TransformStream(rewriteTransformer(set, onMatch));
}

/**
 * The transformer behind {@link rewriteStream}, for callers (and tests) that
 * drive it synchronously. Holds state: one per body.
 *
 * @returns a fresh transformer
 */
export function rewriteTransformer(
  set: Matcher,
  onMatch: OnMatch,
): Transformer<Uint8Array, Uint8Array> & {
  transform(chunk: Uint8Array, c: { enqueue(b: Uint8Array): void }): void;
  flush(c: { enqueue(b: Uint8Array): void }): void;
} {
  let tail = EMPTY;
  return {
    transform(chunk, controller) {
      const buf = tail.length ? concatBytes([tail, chunk]) : chunk;
      // Hold back only a tail that could still begin a placeholder: a chunk that cannot (a
      // gRPC message, a line of an interactive stream) goes on whole, at once, so a client
      // waiting for the answer to what it just sent is not left waiting on sluice.
      const out = rewriteUpTo(set, onMatch, buf, buf.length - set.holdLength(buf, 0, buf.length));
      const cut = lastCut;
      // A copy: the tail must survive the producer reusing its chunk.
      tail = cut === buf.length ? EMPTY : buf.slice(cut);
      if (out.length) controller.enqueue(out);
    },
    flush(controller) {
      if (!tail.length) return;
      const out = rewriteUpTo(set, onMatch, tail, tail.length);
      tail = EMPTY;
      if (out.length) controller.enqueue(out);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The broker

/** Everything the broker knows about one credential, computed once. */
type Entry = {
  index: number;
  name: string;
  /** False for an oauth2 credential with no token yet: its placeholder is left as it is. */
  ready: boolean;
  placeholder: string;
  /** encodeURIComponent(placeholder), when it differs (fixed placeholders may need escaping). */
  placeholderEncoded: string | null;
  placeholderBytes: Uint8Array;
  secretBytes: Uint8Array;
  /** The UTF-8 bytes as a latin1 string: what goes in a header field. */
  secretHeader: string;
  /** Percent-encoded (encodeURIComponent) for the path and the query. */
  secretUrl: string;
  header: boolean;
  query: boolean;
  path: boolean;
  body: boolean;
  inject: { name: string; lower: string; value: string } | null;
};

/** Names, or credentials as `decideCredentials` returns them. */
export type CredentialNames = Iterable<string | Pick<Credential, "name">>;

/** Upper bound on cached per-credential-subset matchers; past it, the cache starts over. */
const CACHE_LIMIT = 256;

/**
 * Builds the broker for one loaded policy. Call again on reload.
 *
 * Refuses (SecretError, listing every problem, names only) when a credential
 * has no placeholder or no value, when two placeholders are equal or one
 * contains another, when a real value contains any placeholder or any
 * placeholder contains a real value (substitution and scrubbing would undo
 * each other), or when a value bound for a header holds CR, LF or NUL.
 *
 * @param creds the policy's credentials
 * @param placeholders credential name to placeholder ({@link placeholdersFor})
 * @param secrets credential name to value ({@link loadSecrets})
 * @returns the broker
 * @throws {SecretError} as above
 */
export function makeBroker(
  creds: readonly Credential[],
  placeholders: ReadonlyMap<string, string>,
  secrets: ReadonlyMap<string, SecretValue>,
  clientCerts: ClientCerts = NO_CLIENT_CERTS,
  oauth?: BrokerTokens,
  aws: ReadonlyMap<string, AwsKeys> = new Map(),
): Broker {
  const problems: string[] = [];
  for (const c of creds) {
    if (!placeholders.get(c.name)) problems.push(`credential ${c.name}: no placeholder was given`);
    if (c.kind === "oauth2") {
      if (!oauth?.cells.get(c.name)) problems.push(`credential ${c.name}: no token source`);
    } else if (c.kind === "aws_sigv4") {
      if (!aws.get(c.name)) problems.push(`credential ${c.name}: no keys were loaded`);
    } else if (!secrets.get(c.name)) problems.push(`credential ${c.name}: no value was loaded`);
  }
  if (problems.length) throw new SecretError(problems);
  for (const a of creds) {
    const pa = placeholders.get(a.name)!;
    // An oauth2 credential's tokens are checked as they arrive (tokenProblem).
    const sa = secrets.get(a.name)?.reveal();
    if (sa !== undefined && (a.in.includes("header") || a.inject) && /[\r\n\0]/.test(sa)) {
      problems.push(
        `credential ${a.name}: the value contains a line break or NUL, which cannot go in a header`,
      );
    }
    for (const b of creds) {
      const pb = placeholders.get(b.name)!;
      if (a !== b && pa.includes(pb)) {
        problems.push(
          pa === pb
            ? `credential ${a.name}: its placeholder is the same as credential ${b.name}'s`
            : `credential ${a.name}: its placeholder contains credential ${b.name}'s placeholder`,
        );
      }
      if (sa === undefined) continue;
      if (sa.includes(pb)) {
        problems.push(
          `credential ${a.name}: the value contains the placeholder of credential ${b.name}; ` +
            "change the value or give one of them a fixed placeholder",
        );
      } else if (pb.includes(sa)) {
        problems.push(
          `credential ${a.name}: the value appears inside the placeholder of credential ${b.name}; ` +
            "use a longer value or another fixed placeholder",
        );
      }
    }
  }
  if (problems.length) throw new SecretError(problems);
  const broker = new Broker(creds, placeholders, secrets, clientCerts, oauth, aws);
  if (oauth) oauth.tokens.check = (_name, token) => tokenProblem(token, placeholders);
  return broker;
}

/** Why a minted access token cannot be used (the rules makeBroker applies to static values). */
function tokenProblem(
  token: string,
  placeholders: ReadonlyMap<string, string>,
): string | null {
  if (token.length < MIN_SECRET_LENGTH) {
    return `the access token is shorter than ${MIN_SECRET_LENGTH} characters`;
  }
  for (const [other, p] of placeholders) {
    if (token.includes(p) || p.includes(token)) {
      return `the access token and the placeholder of credential ${other} overlap`;
    }
  }
  return null;
}

const encoder = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** A credential's entry; `secret` null: an oauth2 credential without a token yet. */
function entryFor(
  c: Credential,
  index: number,
  placeholder: string,
  secret: SecretValue | null,
): Entry {
  const secretBytes = secret?.revealBytes() ?? EMPTY;
  const secretHeader = latin1(secretBytes);
  const enc = encodeURIComponent(placeholder);
  return {
    index,
    name: c.name,
    ready: secret !== null,
    placeholder,
    placeholderEncoded: enc === placeholder ? null : enc,
    placeholderBytes: encoder.encode(placeholder),
    secretBytes,
    secretHeader,
    secretUrl: secret ? encodeURIComponent(secret.reveal()) : "",
    header: c.in.includes("header"),
    query: c.in.includes("query"),
    path: c.in.includes("path"),
    body: c.in.includes("body"),
    inject: c.inject
      ? {
        name: c.inject.header,
        lower: c.inject.header.toLowerCase(),
        value: c.inject.value.replaceAll("${secret}", secretHeader),
      }
      : null,
  };
}

function latin1(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    s += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return s;
}

/**
 * The credential broker for one policy load: built by {@link makeBroker},
 * immutable afterwards, safe to share between concurrent requests.
 */
export class Broker {
  /** Credential names, in policy order. */
  readonly names: readonly string[];
  /** The placeholder scanner (also for names: SNI, CONNECT target, Host, DNS questions). */
  readonly scanner: PlaceholderScanner;
  /** The `client_cert` credentials, which sluice presents upstream (client_certs.ts). */
  readonly clientCerts: ClientCerts;
  #entries: Entry[];
  #byName = new Map<string, Entry>();
  #placeholderSet: Matcher;
  /** The entry index of each pattern of {@link #placeholderSet}. */
  #patternOwner: number[] = [];
  #caches = new Map<string, unknown>();
  /** Every credential's scrubber, once built ({@link responseScrubber}). */
  #all: Scrubber | null | undefined;
  #creds: readonly Credential[];
  #oauth: BrokerTokens | undefined;
  #aws: ReadonlyMap<string, AwsKeys>;
  #awsPlaceholders = new Map<string, AwsPlaceholders>();
  /** The token registry's version the entries were built at (-1: not yet; versions start at 0). */
  #tokenVersion = -1;

  /** Use {@link makeBroker}, which validates the inputs. */
  constructor(
    creds: readonly Credential[],
    placeholders: ReadonlyMap<string, string>,
    secrets: ReadonlyMap<string, SecretValue>,
    clientCerts: ClientCerts = NO_CLIENT_CERTS,
    oauth?: BrokerTokens,
    aws: ReadonlyMap<string, AwsKeys> = new Map(),
  ) {
    this.clientCerts = clientCerts;
    this.#creds = creds;
    this.#oauth = oauth;
    this.#aws = aws;
    for (const c of creds) {
      if (c.kind === "aws_sigv4") {
        this.#awsPlaceholders.set(c.name, awsPlaceholders(c.name, placeholders));
      }
    }
    this.#entries = creds.map((c, index) =>
      entryFor(c, index, placeholders.get(c.name)!, secrets.get(c.name) ?? null)
    );
    this.#syncTokens();
    for (const e of this.#entries) this.#byName.set(e.name, e);
    this.names = this.#entries.map((e) => e.name);
    // Every placeholder, an aws_sigv4 credential's secret key and session token included; each
    // pattern's owner is its credential's entry.
    const patterns: Uint8Array[] = [];
    for (const [key, p] of placeholders) {
      const owner = this.#entries.findIndex((e) => e.name === key.split("#")[0]);
      if (owner < 0) continue;
      patterns.push(encoder.encode(p));
      this.#patternOwner.push(owner);
    }
    this.#placeholderSet = new Matcher(patterns);
    this.scanner = new PlaceholderScanner(placeholders);
  }

  /**
   * Brings oauth2 credentials' entries up to their current tokens, and drops what was built on
   * the old ones (cached scrubbers). One comparison when nothing changed.
   */
  #syncTokens(): void {
    const o = this.#oauth;
    if (!o || o.tokens.version === this.#tokenVersion) return;
    this.#tokenVersion = o.tokens.version;
    this.#creds.forEach((c, index) => {
      if (c.kind !== "oauth2") return;
      const e = entryFor(c, index, this.#entries[index].placeholder, o.cells.get(c.name)!.current);
      this.#entries[index] = e;
      this.#byName.set(e.name, e);
    });
    this.#caches.clear();
    this.#all = undefined;
  }

  /**
   * The aws_sigv4 credential among `names` whose placeholder key id signs this request, with
   * its placeholders and real keys (lib/credentials/sigv4.ts re-signs with them).
   */
  sigv4(names: CredentialNames, keyId: string):
    | { name: string; placeholders: AwsPlaceholders; keys: AwsKeys }
    | undefined {
    for (const n of this.#nameSet(names)) {
      const ph = this.#awsPlaceholders.get(n);
      if (ph && ph.accessKeyId === keyId) {
        return { name: n, placeholders: ph, keys: this.#aws.get(n)! };
      }
    }
    return undefined;
  }

  /** Whether any credential is of kind aws_sigv4. */
  get hasSigv4(): boolean {
    return this.#aws.size > 0;
  }

  /** The names of the oauth2 credentials among `names`. */
  minted(names: CredentialNames): string[] {
    if (!this.#oauth) return [];
    const set = this.#nameSet(names);
    return this.#creds.filter((c) => c.kind === "oauth2" && set.has(c.name)).map((c) => c.name);
  }

  /**
   * Makes sure each named oauth2 credential has a usable access token (fetching where needed;
   * one fetch per credential however many requests wait).
   *
   * @returns the tokens now in force, by name (to renew after a 401)
   * @throws {TokenError} naming the first credential without one
   */
  async tokens(names: readonly string[]): Promise<Map<string, SecretValue>> {
    const out = new Map<string, SecretValue>();
    for (const n of names) out.set(n, await this.#oauth!.cells.get(n)!.token());
    return out;
  }

  /**
   * After a 401: renews each token used on the request, once.
   *
   * @returns true when at least one newer token is now in force (retry the request)
   * @throws {TokenError} when a new token cannot be had
   */
  async renewTokens(used: ReadonlyMap<string, SecretValue>): Promise<boolean> {
    let renewed = false;
    for (const [n, v] of used) {
      if (await this.#oauth!.cells.get(n)!.renew(v)) renewed = true;
    }
    return renewed;
  }

  /** A credential's placeholder. */
  placeholder(name: string): string | undefined {
    return this.#byName.get(name)?.placeholder;
  }

  /**
   * Finds the placeholders of every credential in a request head, with the
   * one scanner `explain` and the name checks use too (policy/placeholders.ts):
   * header names and values (and the decoded user:password of `Basic`
   * credentials), the path and the query, each also percent-decoded.
   *
   * @param target the origin-form request target (path, then `?query`)
   * @param headers the request's header fields
   * @returns credential name to places; empty when nothing was found
   */
  scanRequest(target: string, headers: HeaderFields): Found {
    return this.scanner.scanRequest(target, headers);
  }

  /**
   * Found credentials that may not go to the destination: the same answer as
   * `decideCredentials(...).violations`, for callers holding only names.
   *
   * @param found from {@link scanRequest}
   * @param allowed the credentials scoped to the destination
   * @returns names of found credentials not in `allowed`, in policy order
   */
  violations(found: Found, allowed: CredentialNames): string[] {
    if (found.size === 0) return [];
    const ok = this.#nameSet(allowed);
    return this.names.filter((n) => found.has(n) && !ok.has(n));
  }

  #nameSet(names: CredentialNames): Set<string> {
    const out = new Set<string>();
    for (const n of names) out.add(typeof n === "string" ? n : n.name);
    return out;
  }

  #select(names: CredentialNames): Entry[] {
    const set = this.#nameSet(names);
    return this.#entries.filter((e) => set.has(e.name));
  }

  /**
   * Replaces placeholders of the allowed credentials with their real values
   * in the places each credential's `in` lists, then sets `inject` headers.
   *
   * - Headers: a raw replacement in each value (the value goes in as its UTF-8
   *   bytes); inside `Basic <base64>`, the credentials are decoded, replaced and
   *   re-encoded.
   * - Path and query: the placeholder as written, and percent-encoded when
   *   that differs, is replaced by `encodeURIComponent(value)`, so a value
   *   holding `/`, `&`, `?` or `#` cannot change the URL's structure. A
   *   placeholder the client percent-encoded beyond that is found by
   *   {@link scanRequest} but not replaced.
   * - Inject: every client field of that name (any case) is removed and the
   *   rendered template appended; if two credentials inject the same field,
   *   the later one in the policy wins.
   *
   * Credentials not in `allowed` are never touched; the caller must already
   * have refused requests with violations.
   *
   * @param target the origin-form request target
   * @param headers the request's header fields (not modified)
   * @param allowed the credentials scoped to the destination (`decideCredentials(...).substitute`)
   * @returns the rewritten head and the names substituted and injected
   */
  rewriteRequest(
    target: string,
    headers: HeaderFields,
    allowed: CredentialNames,
  ): RewrittenRequest {
    this.#syncTokens();
    const entries = this.#select(allowed).filter((e) => e.ready);
    const substituted = new Set<string>();
    const injected: string[] = [];
    let out: [string, string][] = headers.slice();

    const inHeader = entries.filter((e) => e.header);
    if (inHeader.length) {
      for (let i = 0; i < out.length; i++) {
        let value = out[i][1];
        if (this.scanner.maybe(value)) {
          for (const e of inHeader) {
            if (value.includes(e.placeholder)) {
              value = value.replaceAll(e.placeholder, e.secretHeader);
              substituted.add(e.name);
            }
          }
        }
        const basic = decodeBasic(value);
        if (basic && this.scanner.maybe(basic.text)) {
          let text = basic.text;
          for (const e of inHeader) {
            if (text.includes(e.placeholder)) {
              text = text.replaceAll(e.placeholder, e.secretHeader);
              substituted.add(e.name);
            }
          }
          if (text !== basic.text) value = `${basic.head}${btoa(text)}${basic.trail}`;
        }
        if (value !== out[i][1]) out[i] = [out[i][0], value];
      }
    }

    const q = target.indexOf("?");
    let path = q < 0 ? target : target.slice(0, q);
    let query = q < 0 ? null : target.slice(q + 1);
    if (this.scanner.maybe(target) || target.includes("%")) {
      for (const e of entries) {
        if (e.path) path = this.#replaceUrl(path, e, substituted);
        if (e.query && query !== null) query = this.#replaceUrl(query, e, substituted);
      }
    }

    for (const e of entries) {
      if (!e.inject) continue;
      const { name, lower, value } = e.inject;
      out = out.filter(([n]) => n.toLowerCase() !== lower);
      out.push([name, value]);
      injected.push(e.name);
    }
    return {
      target: query === null ? path : `${path}?${query}`,
      headers: out,
      substituted: this.names.filter((n) => substituted.has(n)),
      injected,
    };
  }

  #replaceUrl(s: string, e: Entry, substituted: Set<string>): string {
    let r = s.replaceAll(e.placeholder, e.secretUrl);
    if (e.placeholderEncoded) r = r.replaceAll(e.placeholderEncoded, e.secretUrl);
    if (r !== s) substituted.add(e.name);
    return r;
  }

  #cached<T>(kind: string, entries: Entry[], build: () => T): T {
    const key = kind + entries.map((e) => e.index).join(",");
    let v = this.#caches.get(key) as T | undefined;
    if (v === undefined) {
      if (this.#caches.size >= CACHE_LIMIT) this.#caches.clear();
      v = build();
      this.#caches.set(key, v);
    }
    return v;
  }

  /**
   * The body transform for a request: every credential's placeholder is
   * looked for. Allowed credentials with `body` in `in` are replaced by their
   * value; allowed ones without it pass unchanged; a placeholder of a
   * credential NOT allowed errors the stream with
   * {@link CredentialViolationError} (after `onFound`).
   *
   * Honest limits: the error is raised before any byte of the placeholder is
   * passed on, but the bytes before it may already have reached the upstream.
   * The caller must then abort the upstream request (never let it complete)
   * and answer 403. To refuse before sending anything, buffer small bodies and
   * use {@link rewriteBody} instead (see {@link BUFFERED_BODY_LIMIT}).
   * Substitution changes the length: send the result chunked, or
   * buffer it. Every body byte is scanned, whatever the content type or size;
   * compressed request bodies (Content-Encoding) are scanned as the bytes they
   * are, so a placeholder inside gzip is neither found nor replaced.
   *
   * @param allowed the credentials scoped to the destination
   * @param onFound called once per credential the first time its placeholder is seen
   * @returns the transform, or null when there are no credentials at all
   */
  requestBodyStream(
    allowed: CredentialNames,
    onFound?: (name: string) => void,
  ): TransformStream<Uint8Array, Uint8Array> | null {
    if (this.#entries.length === 0) return null;
    this.#syncTokens();
    return rewriteStream(this.#placeholderSet, this.#bodyOnMatch(allowed, onFound, true));
  }

  #bodyOnMatch(
    allowed: CredentialNames,
    onFound: ((name: string) => void) | undefined,
    throwOnViolation: boolean,
  ): OnMatch {
    const ok = this.#nameSet(allowed);
    const seen = new Set<number>();
    const entries = this.#entries;
    const owner = this.#patternOwner;
    return (p) => {
      const i = owner[p];
      const e = entries[i];
      if (!seen.has(i)) {
        seen.add(i);
        onFound?.(e.name);
      }
      if (!ok.has(e.name)) {
        if (throwOnViolation) throw new CredentialViolationError(e.name);
        return null;
      }
      return e.body && e.ready ? e.secretBytes : null;
    };
  }

  /**
   * A fully buffered body: finds every placeholder and, unless there are
   * violations, replaces those of allowed credentials with `body` in `in`.
   * Use it for bodies up to {@link BUFFERED_BODY_LIMIT} so violations are
   * found before anything is sent; `body.length` is the new Content-Length.
   *
   * @param bytes the whole body
   * @param allowed the credentials scoped to the destination
   * @returns the body to send and the names found, violating and substituted;
   *   when `violations` is not empty the request must not be sent, and `body`
   *   is the input unchanged
   */
  rewriteBody(bytes: Uint8Array, allowed: CredentialNames): RewrittenBody {
    this.#syncTokens();
    const found: string[] = [];
    const onMatch = this.#bodyOnMatch(allowed, (n) => found.push(n), false);
    const body = this.#entries.length ? rewriteBytes(this.#placeholderSet, onMatch, bytes) : bytes;
    const ok = this.#nameSet(allowed);
    const violations = this.names.filter((n) => found.includes(n) && !ok.has(n));
    const substituted = this.names.filter((n) =>
      found.includes(n) && ok.has(n) && this.#byName.get(n)!.body && this.#byName.get(n)!.ready
    );
    const inOrder = this.names.filter((n) => found.includes(n));
    if (violations.length) return { body: bytes, found: inOrder, violations, substituted: [] };
    return { body, found: inOrder, violations, substituted };
  }

  /**
   * Credentials whose placeholder appears in some bytes (a buffered body or
   * the buffered prefix of one). A placeholder cut off at the end of `bytes`
   * is not found: scan the whole body or use {@link requestBodyStream}.
   *
   * @returns names in policy order
   */
  scanBody(bytes: Uint8Array): string[] {
    return this.rewriteBody(bytes, []).found;
  }

  /**
   * The scrubber for the named credentials (default: every loaded one), built once per
   * subset; null when there are none.
   */
  #scrubber(names: CredentialNames = this.names): Scrubber | null {
    this.#syncTokens();
    const entries = this.#select(names);
    if (!entries.length) return null;
    return this.#cached("scrub:", entries, () => {
      const pairs: { secret: string; placeholder: string }[] = [];
      for (const e of entries) {
        const keys = this.#aws.get(e.name);
        if (keys) {
          // An aws_sigv4 credential: each real key scrubbed to its own placeholder.
          const ph = this.#awsPlaceholders.get(e.name)!;
          pairs.push({ secret: keys.accessKeyId.reveal(), placeholder: ph.accessKeyId });
          pairs.push({ secret: keys.secretAccessKey.reveal(), placeholder: ph.secretAccessKey });
          const token = keys.sessionToken?.reveal();
          if (token) pairs.push({ secret: token, placeholder: ph.sessionToken ?? ph.accessKeyId });
          continue;
        }
        const cell = this.#oauth?.cells.get(e.name);
        // An oauth2 credential: every token sluice minted for it, and its material.
        const values = cell ? cell.scrubValues().map((v) => v.reveal()) : [
          utf8Decoder.decode(e.secretBytes),
        ];
        for (const secret of new Set(values)) pairs.push({ secret, placeholder: e.placeholder });
      }
      return pairs.length ? new Scrubber(pairs) : null;
    });
  }

  /**
   * The scrubber for responses: every loaded credential's value in every form lib/credentials/scrub.ts
   * knows, whatever was substituted on the request (a scoped host may return a value on a
   * later request, or another credential's). Built once per policy load.
   *
   * @returns null when the policy has no credentials (nothing to scrub: pass through)
   */
  responseScrubber(): Scrubber | null {
    this.#syncTokens();
    if (this.#all === undefined) this.#all = this.#scrubber();
    return this.#all;
  }

  /**
   * An upstream response made safe for the workload: `scrubResponse` (lib/credentials/scrub.ts) with
   * {@link responseScrubber}. Status line, every field and the body of any type are scrubbed
   * of every loaded value; coded bodies are decoded (a coding sluice cannot decode is refused:
   * `ok: false`, answer 502 with its `code`). Bodies of up to 64 KiB with a declared length
   * are read whole first. With no credentials at all, the response passes untouched.
   *
   * @param up the upstream's response
   * @param bodyless the response has no body whatever its fields say (HEAD, 204, 304)
   * @returns the parts to answer with, or why the response is refused
   */
  scrubResponse(up: ResponseParts, bodyless: boolean): Promise<ScrubbedResponse> {
    return scrubResponse(this.responseScrubber(), up, bodyless);
  }

  /**
   * Response header fields (names and values) with every form of each real value of the
   * named credentials replaced by its placeholder (see lib/credentials/scrub.ts).
   *
   * @param headers the response's header fields (not modified)
   * @param names the credentials whose values to scrub; default every one
   * @returns a fresh list
   */
  scrubHeaders(headers: HeaderFields, names: CredentialNames = this.names): [string, string][] {
    const s = this.#scrubber(names);
    return s ? s.headers(headers) : headers.slice();
  }

  /**
   * The transform that scrubs an identity (not content-encoded) response body of every form
   * of the named credentials' values, across chunk boundaries, whatever its media type. For
   * whole responses, content codings included, use `scrubResponse` (lib/credentials/scrub.ts) with
   * {@link responseScrubber}.
   *
   * @param _headers the response's header fields (kept for callers; every type is scrubbed)
   * @param names the credentials whose values to scrub; default every one
   * @param opts `preserveLength`: fit replacements to what they replace (Content-Length kept)
   * @returns the transform, or null when no credential is named
   */
  responseBodyStream(
    _headers: HeaderFields,
    names: CredentialNames = this.names,
    opts?: { preserveLength?: boolean },
  ): TransformStream<Uint8Array, Uint8Array> | null {
    return this.#scrubber(names)?.stream(opts) ?? null;
  }

  /**
   * Scrubs a whole buffer of every form of the named credentials' values.
   *
   * @returns the input itself when no value was found, else a new buffer
   */
  scrubBytes(bytes: Uint8Array, names: CredentialNames = this.names): Uint8Array {
    const s = this.#scrubber(names);
    return s ? s.bytes(bytes) : bytes;
  }
}
