/**
 * IP addresses, CIDRs and the `private` guard's address classes.
 *
 * Rule text is parsed once into bytes, and CIDRs are compiled to 32-bit
 * words and masks; matching and classification then do integer compares only,
 * never parsing.
 *
 * Two parsers, on purpose:
 * - {@linkcode parseIp} is strict, for policy rules: dotted-quad decimal IPv4
 *   (no `0x7f.1`, `127.1` or `010.0.0.1`) and RFC 4291 IPv6, no zone ids. A
 *   rule that could mean two things is an error, not a guess.
 * - {@linkcode parseIpLoose} reads a host the way a WHATWG URL does, for what
 *   clients send: `0x7f.1`, `2130706433` and `１２７.0.0.1` are all 127.0.0.1,
 *   so no spelling slips an address past an IP rule or the `private` guard.
 *
 * IPv6 is parsed here rather than with ipaddr.js, because ipaddr.js 2.2.0
 * reads the IPv4-compatible `::1.2.3.4` as the IPv4-mapped `::ffff:1.2.3.4`
 * and accepts `00000::1`, `::ffff:010.0.0.1` and `::ffff:0x7f.0.0.1`.
 *
 * An IPv4-mapped (`::ffff:a.b.c.d`) or IPv4-compatible (`::a.b.c.d`) IPv6
 * address is the IPv4 address it carries, for matching and classification
 * alike: a client cannot reach 10.0.0.1 by writing `::ffff:10.0.0.1`.
 *
 * Why one file of ~680 lines: the one IP parser, CIDRs and address classes of sluice; the
 * private guard's classes need the parser's internals (bytes, mapped forms).
 *
 * @module
 */

/** An address family. */
export type IpFamily = 4 | 6;

/**
 * A parsed address. `bytes` holds 4 or 16 bytes in network order; `text` is
 * canonical: dotted-quad IPv4, or RFC 5952 IPv6 (lowercase, shortest, `::`
 * for the longest run of two or more zero groups, no brackets, no embedded
 * dotted quad: `::ffff:7f00:1`, as WHATWG URLs and the rest of sluice write it).
 */
export type Ip = { family: IpFamily; bytes: Uint8Array; text: string };

/**
 * The compiled form of a CIDR that matching uses: the network and mask as
 * 32-bit words (one for IPv4, four for IPv6), in the family matching happens
 * in. A CIDR inside `::ffff:0:0/96` compiles to the IPv4 network it stands for.
 */
export type CidrMatcher = { family: IpFamily; net: Uint32Array; mask: Uint32Array };

/**
 * A parsed CIDR with its host bits clear. `text` is canonical, e.g.
 * `10.20.0.0/16` or `2001:db8::/32`.
 */
export type Cidr = {
  family: IpFamily;
  bytes: Uint8Array;
  prefix: number;
  text: string;
  /** Precomputed at parse time so that {@linkcode cidrContains} only compares words. */
  match: CidrMatcher;
};

/**
 * The class of an address, as the `private` guard sees it. Every class but
 * `public` is refused to host rules under `private: deny`.
 */
export type AddressClass =
  | "public"
  | "private"
  | "loopback"
  | "link-local"
  | "metadata"
  | "cgnat"
  | "unique-local"
  | "unspecified"
  | "multicast"
  | "broadcast"
  | "benchmarking"
  | "reserved";

/** The result of {@linkcode parseCidr}. */
export type CidrResult =
  | { ok: true; cidr: Cidr }
  | { ok: false; message: string; hint?: string };

const HEX_GROUP = /^[0-9A-Fa-f]{1,4}$/;
// RFC 6874 zone ids are unreserved characters; interface names and indexes fit.
const ZONE = /^[A-Za-z0-9\-._~]+$/;

/**
 * Four decimal octets 0-255 without leading zeros: a leading zero means octal
 * to inet_aton and WHATWG URLs but decimal to others, so it is ambiguous and
 * refused. A strict dotted quad is its own canonical text.
 */
function parseV4(text: string): Uint8Array | undefined {
  const n = text.length;
  if (n < 7 || n > 15) return undefined;
  const out = new Uint8Array(4);
  let part = 0;
  let value = 0;
  let digits = 0;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x2e /* . */) {
      if (digits === 0 || part === 3) return undefined;
      out[part++] = value;
      value = 0;
      digits = 0;
    } else if (c >= 0x30 && c <= 0x39) {
      if (digits === 1 && value === 0) return undefined; // leading zero
      value = value * 10 + (c - 0x30);
      if (++digits > 3 || value > 255) return undefined;
    } else {
      return undefined;
    }
  }
  if (digits === 0 || part !== 3) return undefined;
  out[3] = value;
  return out;
}

/** Parses the hex groups of one side of an IPv6 address into `out`, or returns -1. */
function parseGroups(
  pieces: string[],
  out: number[],
  allowV4Tail: boolean,
): number {
  for (let i = 0; i < pieces.length; i++) {
    const p = pieces[i];
    if (allowV4Tail && i === pieces.length - 1 && p.includes(".")) {
      const v4 = parseV4(p);
      if (!v4) return -1;
      out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
    } else {
      if (!HEX_GROUP.test(p)) return -1;
      out.push(parseInt(p, 16));
    }
  }
  return out.length;
}

function parseV6(text: string): Uint8Array | undefined {
  if (text.length < 2 || text.length > 45) return undefined;
  const gap = text.indexOf("::");
  const groups: number[] = [];
  if (gap === -1) {
    if (parseGroups(text.split(":"), groups, true) !== 8) return undefined;
  } else {
    if (text.indexOf("::", gap + 1) !== -1) return undefined; // two "::" (or ":::")
    const headText = text.slice(0, gap);
    const tailText = text.slice(gap + 2);
    const head: number[] = [];
    const tail: number[] = [];
    if (headText !== "" && parseGroups(headText.split(":"), head, false) === -1) return undefined;
    if (tailText !== "" && parseGroups(tailText.split(":"), tail, true) === -1) return undefined;
    // "::" stands for at least one zero group.
    if (head.length + tail.length > 7) return undefined;
    groups.push(...head);
    for (let i = head.length + tail.length; i < 8; i++) groups.push(0);
    groups.push(...tail);
  }
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    bytes[2 * i] = groups[i] >> 8;
    bytes[2 * i + 1] = groups[i] & 0xff;
  }
  return bytes;
}

/** RFC 5952 section 4: lowercase, no leading zeros, longest zero run (>= 2, first on ties) as "::". */
function formatV6(bytes: Uint8Array): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((bytes[2 * i] << 8) | bytes[2 * i + 1]);
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (xs: number[]): string => xs.map((x) => x.toString(16)).join(":");
  if (bestStart === -1) return hex(g);
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLen))}`;
}

function ipFromBytes(bytes: Uint8Array): Ip {
  if (bytes.length === 4) {
    return { family: 4, bytes, text: `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}` };
  }
  return { family: 6, bytes, text: formatV6(bytes) };
}

/** Whether 16 IPv6 bytes carry an IPv4 address: mapped `::ffff:0:0/96`, or compatible `::/96` minus `::` and `::1`. */
function embedsV4(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  if (b[10] === 0xff && b[11] === 0xff) return true;
  if (b[10] !== 0 || b[11] !== 0) return false;
  // ::a.b.c.d with a.b.c.d in 0.0.0.2-255.255.255.255 (0.0.0.0 and 0.0.0.1 are :: and ::1).
  return (b[12] | b[13] | b[14]) !== 0 || b[15] > 1;
}

function word(b: Uint8Array, at: number): number {
  return ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;
}

function maskWord(bits: number): number {
  if (bits <= 0) return 0;
  if (bits >= 32) return 0xffffffff;
  return (0xffffffff << (32 - bits)) >>> 0;
}

function matcher(family: IpFamily, bytes: Uint8Array, prefix: number): CidrMatcher {
  const words = family === 4 ? 1 : 4;
  const net = new Uint32Array(words);
  const mask = new Uint32Array(words);
  for (let i = 0; i < words; i++) {
    mask[i] = maskWord(prefix - 32 * i);
    net[i] = (word(bytes, 4 * i) & mask[i]) >>> 0;
  }
  return { family, net, mask };
}

/**
 * Parses a strict IP literal, as policy rules must be written: IPv4 as four
 * decimal numbers 0-255 without leading zeros (`010.0.0.1` is ambiguous
 * octal, `127.1` and `0x7f.0.0.1` are not dotted quads: all refused); IPv6 in
 * any RFC 4291 text form, optionally in brackets, with an optional strict
 * dotted-quad tail. Zone ids (`fe80::1%eth0`) are refused: a rule cannot
 * meaningfully name an interface-scoped address (see
 * {@linkcode parseIpWithZone} for text that may carry one).
 *
 * @param text The literal, without a port.
 * @returns The address, or undefined when `text` is not a strict IP literal.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseIp } from "./address.ts";
 * assert.equal(parseIp("2001:DB8:0:0:0:0:0:1")?.text, "2001:db8::1");
 * assert.equal(parseIp("[::1]")?.text, "::1");
 * assert.equal(parseIp("127.1"), undefined);
 * assert.equal(parseIp("fe80::1%eth0"), undefined);
 * ```
 */
export function parseIp(text: string): Ip | undefined {
  if (text.startsWith("[")) {
    // Brackets are IPv6 syntax only: "[1.2.3.4]" is not an address.
    if (!text.endsWith("]")) return undefined;
    const inner = text.slice(1, -1);
    const v6 = inner.includes(":") ? parseV6(inner) : undefined;
    return v6 ? ipFromBytes(v6) : undefined;
  }
  if (text.includes(":")) {
    const v6 = parseV6(text);
    return v6 ? ipFromBytes(v6) : undefined;
  }
  const v4 = parseV4(text);
  return v4 ? { family: 4, bytes: v4, text } : undefined;
}

/**
 * Parses a strict IP literal that may carry an IPv6 zone id, as the system
 * resolver returns link-local addresses (`fe80::1%eth0`). In brackets the
 * zone may be written as RFC 6874 says (`[fe80::1%25eth0]`, so a zone
 * starting with "25" must use that form there) or raw. The address is
 * still strict (see {@linkcode parseIp}); a zone on an IPv4 address, an empty
 * zone, or one with characters outside `A-Z a-z 0-9 - . _ ~` is refused.
 *
 * @param text The literal, without a port.
 * @returns The address and its zone (absent when there is none), or undefined.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseIpWithZone } from "./address.ts";
 * const r = parseIpWithZone("fe80::1%eth0");
 * assert.ok(r?.ip.text === "fe80::1" && r.zone === "eth0");
 * ```
 */
export function parseIpWithZone(text: string): { ip: Ip; zone?: string } | undefined {
  const bracketed = text.startsWith("[") && text.endsWith("]");
  const inner = bracketed ? text.slice(1, -1) : text;
  const pct = inner.indexOf("%");
  if (pct === -1) {
    const ip = parseIp(text);
    return ip ? { ip } : undefined;
  }
  let zone = inner.slice(pct + 1);
  // RFC 6874 writes the "%" as "%25" inside URL brackets; tools also print it raw.
  if (bracketed && zone.startsWith("25") && zone.length > 2) zone = zone.slice(2);
  if (!ZONE.test(zone)) return undefined;
  const address = inner.slice(0, pct);
  if (!address.includes(":")) return undefined;
  const ip = parseIp(address);
  return ip ? { ip, zone } : undefined;
}

/**
 * Whether a host "ends in a number" as the WHATWG URL host parser decides it:
 * its last label (ignoring one trailing dot) is all digits or `0x` followed by
 * hex digits. Such a host is an IPv4 address to a URL, or invalid; never a name.
 * A caller that gets undefined from {@linkcode parseIpLoose} for such a host
 * (`1.2.3.999`) should refuse it rather than resolve it as a name, because
 * getaddrinfo reads some of these as addresses too.
 *
 * @param host An ASCII host, without a port.
 * @returns Whether the host ends in a number.
 */
export function hostEndsInNumber(host: string): boolean {
  let end = host.length;
  if (end > 0 && host.charCodeAt(end - 1) === 0x2e /* . */) {
    end--;
    if (end === 0) return false;
  }
  const start = host.lastIndexOf(".", end - 1) + 1;
  if (start === end) return false;
  let i = start;
  const hex = end - start >= 2 && host.charCodeAt(start) === 0x30 &&
    (host.charCodeAt(start + 1) | 0x20) === 0x78; /* 0x or 0X */
  if (hex) i += 2;
  for (; i < end; i++) {
    const c = host.charCodeAt(i);
    if (c >= 0x30 && c <= 0x39) continue;
    const l = c | 0x20;
    if (hex && l >= 0x61 && l <= 0x66) continue;
    return false;
  }
  return true;
}

// Characters that would change how `new URL("http://" + host + "/")` splits
// the string (userinfo, port, path, query, fragment) or that the URL parser
// strips silently (C0 controls, space, DEL). A host containing one is not an
// IP literal, so it must not become one by being cut short.
const DELIMITER = 1;
const NOT_PLAIN = 2; // non-ASCII or "%": the URL parser maps or decodes it first

function scanHost(text: string): number {
  let flags = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c <= 0x20 || c === 0x7f) return DELIMITER;
    if (c > 0x7f || c === 0x25 /* % */) flags |= NOT_PLAIN;
    else if (
      c === 0x2f || c === 0x5c || c === 0x3f || c === 0x23 || c === 0x40 || c === 0x3a ||
      c === 0x5b || c === 0x5d // / \ ? # @ : [ ]
    ) return DELIMITER;
  }
  return flags;
}

/**
 * Parses a host the way the WHATWG URL host parser does, for hosts clients
 * send (Host header, CONNECT target, SNI), never for policy rules. So
 * `0x7f.1`, `0177.0.0.1`, `2130706433`, `127.1`, `127.0.0.1.`, `%31%32%37.0.0.1`,
 * full-width `１２７.0.0.1` and `127。0.0.1` are all 127.0.0.1, exactly what a
 * URL-based client would connect to. Strict literals (including bracketed
 * IPv6) are accepted as by {@linkcode parseIp}.
 *
 * A name returns undefined quickly (no URL parse) when it is plain ASCII and
 * does not end in a number. Text with URL delimiters (`a@1.2.3.4`,
 * `1.2.3.4:80`) or zone ids returns undefined: it is not an IP literal.
 *
 * @param text The host, without a port.
 * @returns The address, or undefined when `text` is not an IP literal.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseIpLoose } from "./address.ts";
 * assert.equal(parseIpLoose("0x7f.1")?.text, "127.0.0.1");
 * assert.equal(parseIpLoose("2130706433")?.text, "127.0.0.1");
 * assert.equal(parseIpLoose("api.example.com"), undefined);
 * ```
 */
export function parseIpLoose(text: string): Ip | undefined {
  const scan = scanHost(text);
  if (scan === 0 && !hostEndsInNumber(text)) {
    return undefined; // a plain ASCII name, which the URL parser leaves a name
  }
  const strict = parseIp(text);
  if (strict) return strict;
  // Bracketed IPv6 has the same grammar for a URL as for parseIp (WHATWG also
  // refuses leading zeros in an embedded dotted quad), and unbracketed text
  // with a colon is a host with a port or not a host at all.
  if (text === "" || scan === DELIMITER) return undefined;
  let host: string;
  try {
    host = new URL(`http://${text}/`).hostname;
  } catch {
    return undefined; // WHATWG refuses it (e.g. 1.2.3.999); not an address
  }
  const bytes = parseV4(host);
  return bytes ? ipFromBytes(bytes) : undefined;
}

/**
 * Parses a CIDR such as `10.20.0.0/16` or `2001:db8::/32` (the address may be
 * bracketed: `[2001:db8::]/32`). The address part is strict as in
 * {@linkcode parseIp}; the prefix is decimal without leading zeros, 0-32 for
 * IPv4 and 0-128 for IPv6; host bits must be clear, since `10.20.0.1/16`
 * usually means a typo, and the error suggests the network.
 *
 * A CIDR inside `::ffff:0:0/96` (IPv4-mapped) matches the IPv4 addresses it
 * maps, like every other comparison here. A CIDR inside the deprecated
 * IPv4-compatible `::/96` (other than `::/127`, `::/128`, `::1/128`) is
 * refused with the IPv4 CIDR to write instead, since it could match nothing.
 *
 * @param text The CIDR, without a port.
 * @returns The CIDR, or a message saying what is wrong with a hint for the fix.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseCidr } from "./address.ts";
 * const ok = parseCidr("10.20.0.0/16");
 * assert.ok(ok.ok && ok.cidr.text === "10.20.0.0/16");
 * const bad = parseCidr("10.20.0.1/16");
 * assert.ok(!bad.ok && bad.hint === "did you mean 10.20.0.0/16?");
 * ```
 */
export function parseCidr(text: string): CidrResult {
  const slash = text.lastIndexOf("/");
  if (slash === -1) {
    return {
      ok: false,
      message: `"${text}" is not a CIDR: it has no "/prefix"`,
      hint: "write address/prefix, e.g. 10.20.0.0/16",
    };
  }
  const ip = parseIp(text.slice(0, slash));
  if (!ip) {
    return {
      ok: false,
      message: `"${text}" is not a CIDR: "${text.slice(0, slash)}" is not an IP address`,
      hint: "write address/prefix, e.g. 10.20.0.0/16 or 2001:db8::/32",
    };
  }
  const prefixText = text.slice(slash + 1);
  const max = ip.family === 4 ? 32 : 128;
  if (!/^(?:0|[1-9]\d{0,2})$/.test(prefixText) || Number(prefixText) > max) {
    return {
      ok: false,
      message: `"${text}": "/${prefixText}" is not a prefix length for IPv${ip.family}`,
      hint: `use a whole number from 0 to ${max}`,
    };
  }
  const prefix = Number(prefixText);
  const bytes = new Uint8Array(ip.bytes.length);
  for (let i = 0; i < bytes.length; i++) {
    const bits = Math.max(0, Math.min(8, prefix - 8 * i));
    bytes[i] = ip.bytes[i] & (0xff00 >> bits);
  }
  const net = ipFromBytes(bytes);
  if (net.text !== ip.text) {
    return {
      ok: false,
      message: `"${text}" has host bits set`,
      hint: `did you mean ${net.text}/${prefix}?`,
    };
  }
  if (ip.family === 6 && prefix >= 96 && isCompatibleRange(bytes, prefix)) {
    const v4 = ipFromBytes(bytes.slice(12, 16)).text;
    return {
      ok: false,
      message: `"${text}" is in the deprecated IPv4-compatible range ::/96, ` +
        `and sluice matches ::a.b.c.d as the IPv4 address a.b.c.d`,
      hint: `write the IPv4 CIDR ${v4}/${prefix - 96}`,
    };
  }
  const mapped = ip.family === 6 && prefix >= 96 && embedsV4(bytes) && bytes[10] === 0xff;
  return {
    ok: true,
    cidr: {
      family: ip.family,
      bytes,
      prefix,
      text: `${net.text}/${prefix}`,
      match: mapped
        ? matcher(4, bytes.subarray(12, 16), prefix - 96)
        : matcher(ip.family, bytes, prefix),
    },
  };
}

/** Whether an IPv6 CIDR (prefix >= 96) holds IPv4-compatible addresses: within ::/96, beyond :: and ::1. */
function isCompatibleRange(bytes: Uint8Array, prefix: number): boolean {
  for (let i = 0; i < 12; i++) if (bytes[i] !== 0) return false;
  return !(prefix >= 127 && word(bytes, 12) <= 1);
}

/**
 * Whether an address lies in a CIDR. Addresses are compared in their
 * unmapped form: `::ffff:10.1.2.3` and `::10.1.2.3` are in `10.0.0.0/8`, and
 * an IPv6 CIDR outside `::ffff:0:0/96` never contains an IPv4 address (so
 * `::/0` contains no IPv4 address, mapped or not). Families otherwise never mix.
 *
 * @param cidr A CIDR from {@linkcode parseCidr}.
 * @param ip The address to test.
 * @returns Whether `ip` is inside `cidr`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { cidrContains, parseCidr, parseIp } from "./address.ts";
 * const c = parseCidr("100.64.0.0/10");
 * assert.ok(c.ok && cidrContains(c.cidr, parseIp("100.127.255.255")!));
 * assert.ok(c.ok && !cidrContains(c.cidr, parseIp("100.128.0.0")!));
 * ```
 */
export function cidrContains(cidr: Cidr, ip: Ip): boolean {
  const m = cidr.match;
  const b = ip.bytes;
  if (m.family === 4) {
    let w: number;
    if (ip.family === 4) w = word(b, 0);
    else if (embedsV4(b)) w = word(b, 12);
    else return false;
    return ((w & m.mask[0]) >>> 0) === m.net[0];
  }
  if (ip.family !== 6 || embedsV4(b)) return false;
  for (let i = 0; i < 4; i++) {
    if (((word(b, 4 * i) & m.mask[i]) >>> 0) !== m.net[i]) return false;
  }
  return true;
}

/**
 * The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`) or
 * IPv4-compatible (`::a.b.c.d`, but not `::` or `::1`) IPv6 address; every
 * other address is returned unchanged (the same object).
 *
 * @param ip The address.
 * @returns The embedded IPv4 address, or `ip`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseIp, unmapIp } from "./address.ts";
 * assert.equal(unmapIp(parseIp("::ffff:1.2.3.4")!).text, "1.2.3.4");
 * assert.equal(unmapIp(parseIp("::1")!).text, "::1");
 * ```
 */
export function unmapIp(ip: Ip): Ip {
  if (ip.family !== 6 || !embedsV4(ip.bytes)) return ip;
  return ipFromBytes(ip.bytes.slice(12, 16));
}

type V4Range = { net: number; mask: number; cls: AddressClass };
type V6Range = { m: CidrMatcher; cls: AddressClass };

function builtIn(text: string): Cidr {
  const r = parseCidr(text);
  if (!r.ok) throw new Error(`sluice bug: built-in range ${text}: ${r.message}`);
  return r.cidr;
}

// First match wins, so more specific ranges come first (metadata inside
// link-local, broadcast inside 240/4). Documentation ranges (192.0.2/24,
// 198.51.100/24, 203.0.113/24) are deliberately absent, so public: the policy
// examples and tests use them as stand-ins for public servers, and nothing
// routable lives there to protect.
const V4_RANGES: V4Range[] = ([
  ["169.254.169.254/32", "metadata"], // AWS, GCP, Azure, OpenStack, ...
  ["100.100.100.200/32", "metadata"], // Alibaba Cloud
  ["0.0.0.0/8", "unspecified"], // "this network"; Linux connects 0.0.0.0 to the local host
  ["10.0.0.0/8", "private"],
  ["100.64.0.0/10", "cgnat"],
  ["127.0.0.0/8", "loopback"],
  ["169.254.0.0/16", "link-local"],
  ["172.16.0.0/12", "private"],
  ["192.0.0.0/24", "reserved"], // IETF protocol assignments
  ["192.88.99.0/24", "reserved"], // deprecated 6to4 relay anycast
  ["192.168.0.0/16", "private"],
  ["198.18.0.0/15", "benchmarking"],
  ["224.0.0.0/4", "multicast"],
  ["255.255.255.255/32", "broadcast"],
  ["240.0.0.0/4", "reserved"],
] as const).map(([text, cls]) => {
  const m = builtIn(text).match;
  return { net: m.net[0], mask: m.mask[0], cls };
});

// Documentation ranges 2001:db8::/32 and 3fff::/20 are public, as for IPv4.
const V6_RANGES: V6Range[] = ([
  ["fd00:ec2::254/128", "metadata"], // AWS
  ["fd20:ce::254/128", "metadata"], // GCP
  ["::/128", "unspecified"],
  ["::1/128", "loopback"],
  ["fe80::/10", "link-local"],
  ["fec0::/10", "reserved"], // deprecated site-local
  ["fc00::/7", "unique-local"],
  ["ff00::/8", "multicast"],
  ["100::/64", "reserved"], // discard-only
  ["64:ff9b:1::/48", "reserved"], // local-use NAT64: translates into private networks
  ["2001::/32", "reserved"], // Teredo: tunnels to an IPv4 address we cannot check
  ["2001:2::/48", "benchmarking"],
  ["2001:10::/28", "reserved"], // ORCHID
  ["2001:20::/28", "reserved"], // ORCHIDv2
  ["5f00::/16", "reserved"], // SRv6 SIDs
] as const).map(([text, cls]) => ({ m: builtIn(text).match, cls }));

const NAT64 = builtIn("64:ff9b::/96").match;
const SIX_TO_FOUR = builtIn("2002::/16").match;
const GLOBAL_UNICAST = builtIn("2000::/3").match;

function inV6(m: CidrMatcher, b: Uint8Array): boolean {
  for (let i = 0; i < 4; i++) {
    if (((word(b, 4 * i) & m.mask[i]) >>> 0) !== m.net[i]) return false;
  }
  return true;
}

function classifyV4(w: number): AddressClass {
  for (const r of V4_RANGES) if (((w & r.mask) >>> 0) === r.net) return r.cls;
  return "public";
}

/**
 * Classifies an address for the `private` guard, after unmapping (so
 * `::ffff:127.0.0.1` is loopback). IPv6 addresses that embed an IPv4 address
 * take its class: NAT64 `64:ff9b::/96` and 6to4 `2002::/16` (so
 * `64:ff9b::a9fe:a9fe` is metadata). Teredo and other special-purpose IPv6
 * ranges are `reserved`, as is any IPv6 address outside global unicast
 * `2000::/3`, where nothing public is assigned.
 *
 * Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
 * 2001:db8::/32, 3fff::/20) are `public`: the policy examples and tests use
 * them as stand-ins for public servers.
 *
 * @param ip The address.
 * @returns Its class; anything but `public` is refused by `private: deny`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { classifyIp, parseIp } from "./address.ts";
 * assert.equal(classifyIp(parseIp("::ffff:169.254.169.254")!), "metadata");
 * assert.equal(classifyIp(parseIp("100.64.0.1")!), "cgnat");
 * assert.equal(classifyIp(parseIp("203.0.113.7")!), "public");
 * ```
 */
export function classifyIp(ip: Ip): AddressClass {
  const b = ip.bytes;
  if (ip.family === 4) return classifyV4(word(b, 0));
  if (embedsV4(b)) return classifyV4(word(b, 12));
  for (const r of V6_RANGES) if (inV6(r.m, b)) return r.cls;
  // Addresses that embed an IPv4 address are as private as that address.
  if (inV6(NAT64, b)) return classifyV4(word(b, 12));
  if (inV6(SIX_TO_FOUR, b)) return classifyV4(word(b, 2));
  return inV6(GLOBAL_UNICAST, b) ? "public" : "reserved";
}

/**
 * Whether the `private: deny` guard refuses an address of this class: every
 * class except `public` (documentation ranges classify as `public`).
 *
 * @param cls A class from {@linkcode classifyIp}.
 * @returns Whether host rules may not reach such an address.
 */
export function isPrivateClass(cls: AddressClass): boolean {
  return cls !== "public";
}

/**
 * `host:port` with an IPv6 address in brackets: the one formatter for every address sluice
 * prints, logs, audits or dials (`[::1]:443`, `10.0.0.1:80`, `example.com:443`). A host already
 * in brackets keeps them.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatHostPort } from "./address.ts";
 * assert.equal(formatHostPort("::1", 443), "[::1]:443");
 * assert.equal(formatHostPort("[::1]", 443), "[::1]:443");
 * assert.equal(formatHostPort("a.test", 80), "a.test:80");
 * ```
 */
export function formatHostPort(host: string, port: number): string {
  return `${bracketHost(host)}:${port}`;
}

/**
 * A host as it stands in a URL authority or a Host header: an IPv6 address in brackets.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { bracketHost } from "./address.ts";
 * assert.equal(bracketHost("2001:db8::1"), "[2001:db8::1]");
 * assert.equal(bracketHost("a.test"), "a.test");
 * ```
 */
export function bracketHost(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}
