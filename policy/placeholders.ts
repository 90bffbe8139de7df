/**
 * Finding credential placeholders: the one scanner that `serve` (through the
 * broker in lib/credentials/broker.ts), `explain` and every name check (SNI, CONNECT
 * target, Host, header names, DNS questions) use, so they can never disagree
 * on what counts as "a placeholder is here". Pure: no I/O.
 *
 * Where it looks, and how:
 *   - header values as sent, and the decoded `user:password` of `Basic`
 *     credentials;
 *   - header NAMES, case-insensitively (a name is case-insensitive);
 *   - the path and the query, as sent and percent-decoded;
 *   - names (hosts, SNI, DNS questions), case-insensitively.
 *
 * @module
 */

/** Where a placeholder was found. `header-name X`: in the name of header X itself. */
export type Place = "path" | "query" | "body" | `header ${string}` | `header-name ${string}`;

/** Credential name to the places its placeholder was found, in the order seen. */
export type Found = ReadonlyMap<string, readonly Place[]>;

/** Header fields as received: [name, value] pairs. */
export type Fields = readonly (readonly [string, string])[];

const NOTHING: Found = new Map();

const BASIC = /^(\s*basic\s+)([A-Za-z0-9+/]+=*)(\s*)$/i;

/**
 * Decodes %XX escapes byte-wise into a latin1 string; malformed escapes stay
 * as they are.
 *
 * @example
 * ```ts
 * percentDecode("a%2Fb%zz"); // "a/b%zz"
 * ```
 */
export function percentDecode(s: string): string {
  return s.replace(/%([0-9A-Fa-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

/**
 * The decoded `user:password` of a `Basic` credential, as a latin1 string,
 * with the text around the base64; null for any other value.
 *
 * @example
 * ```ts
 * decodeBasic("Basic dTpw")?.text; // "u:p"
 * ```
 */
export function decodeBasic(value: string): { head: string; text: string; trail: string } | null {
  // Cheap first-character test before the regex: this runs on every header of every request.
  const c = value.charCodeAt(0);
  if (c !== 0x42 && c !== 0x62 && c !== 0x20 && c !== 0x09) return null;
  const m = BASIC.exec(value);
  if (!m) return null;
  try {
    return { head: m[1], text: atob(m[2]), trail: m[3] };
  } catch {
    return null;
  }
}

/** Finds placeholders; built once per policy (per broker). */
export class PlaceholderScanner {
  /** Credential names, in the order given. */
  readonly names: readonly string[];
  #entries: { name: string; placeholder: string; lower: string }[];
  /** Short prefixes every placeholder starts with one of: the cheap first test. */
  #quick: string[];
  #quickLower: string[];

  /**
   * @param placeholders credential name to placeholder; a key `NAME#part` is a further
   *   placeholder of credential NAME (an aws_sigv4 credential's secret key and session token),
   *   found as NAME
   */
  constructor(placeholders: ReadonlyMap<string, string>) {
    this.#entries = [...placeholders].map(([key, placeholder]) => ({
      name: key.split("#")[0],
      placeholder,
      lower: placeholder.toLowerCase(),
    }));
    this.names = [...new Set(this.#entries.map((e) => e.name))];
    // Derived placeholders all start "sluice-": one indexOf per string settles the common case.
    const quickLen = Math.min(7, ...this.#entries.map((e) => e.placeholder.length));
    this.#quick = [...new Set(this.#entries.map((e) => e.placeholder.slice(0, quickLen)))];
    this.#quickLower = [...new Set(this.#quick.map((q) => q.toLowerCase()))];
  }

  /**
   * Whether `other` looks for exactly the same placeholders, each for the same credential: a
   * reload that keeps them cannot change what a name's check finds (the direct data path keeps
   * its listener then, lib/gateway/server.ts).
   */
  samePlaceholders(other: PlaceholderScanner): boolean {
    if (other.#entries.length !== this.#entries.length) return false;
    const mine = new Set(this.#entries.map((e) => `${e.name}\0${e.placeholder}`));
    return other.#entries.every((e) => mine.has(`${e.name}\0${e.placeholder}`));
  }

  /** Whether `s` may hold a placeholder (false means it surely does not). */
  maybe(s: string): boolean {
    const q = this.#quick;
    for (let i = 0; i < q.length; i++) if (s.includes(q[i])) return true;
    return false;
  }

  /**
   * The credentials whose placeholder appears in a name (a host, an SNI, a
   * DNS question, a header name), compared case-insensitively.
   *
   * @returns credential names, in order; empty when none
   */
  inName(text: string): string[] {
    if (this.#entries.length === 0) return [];
    const lower = text.toLowerCase();
    if (!this.#quickLower.some((q) => lower.includes(q))) return [];
    return [...new Set(this.#entries.filter((e) => lower.includes(e.lower)).map((e) => e.name))];
  }

  /**
   * Every placeholder in a request head: header names and values (and the
   * decoded user:password of `Basic` credentials), the path and the query,
   * each also percent-decoded. Costs one `indexOf` per header value when no
   * placeholder is present.
   *
   * @param target the origin-form request target (path, then `?query`)
   * @param headers the request's header fields
   * @returns credential name to places; empty when nothing was found
   */
  scanRequest(target: string, headers: Fields): Found {
    if (this.#entries.length === 0) return NOTHING;
    let found: Map<string, Place[]> | null = null;
    for (let i = 0; i < headers.length; i++) {
      const [name, value] = headers[i];
      const lower = name.toLowerCase();
      if (this.maybe(value)) found = this.#look(value, `header ${lower}`, found);
      const basic = decodeBasic(value);
      if (basic && this.maybe(basic.text)) found = this.#look(basic.text, `header ${lower}`, found);
      for (const n of this.inName(name)) found = add(found, n, `header-name ${lower}`);
    }
    // The common case, settled without splitting the target: no prefix, nothing escaped.
    if (!this.maybe(target) && !target.includes("%")) return found ?? NOTHING;
    const q = target.indexOf("?");
    const parts: [string, Place][] = [[q < 0 ? target : target.slice(0, q), "path"]];
    if (q >= 0) parts.push([target.slice(q + 1), "query"]);
    for (const [part, place] of parts) {
      if (this.maybe(part)) found = this.#look(part, place, found);
      if (part.includes("%")) {
        const decoded = percentDecode(part);
        if (this.maybe(decoded)) found = this.#look(decoded, place, found);
      }
    }
    return found ?? NOTHING;
  }

  #look(s: string, place: Place, found: Map<string, Place[]> | null): Map<string, Place[]> | null {
    for (const e of this.#entries) {
      if (s.includes(e.placeholder)) found = add(found, e.name, place);
    }
    return found;
  }
}

function add(found: Map<string, Place[]> | null, name: string, place: Place): Map<string, Place[]> {
  found ??= new Map();
  const list = found.get(name);
  if (!list) found.set(name, [place]);
  else if (!list.includes(place)) list.push(place);
  return found;
}
