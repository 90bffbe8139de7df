/**
 * IP addresses, CIDRs and the `private` guard's address classes.
 *
 * Rule text is parsed once (with ipaddr.js) into bytes; matching and
 * classification then work on bytes only. Policy rules accept only strict
 * forms (dotted-quad decimal IPv4, no zone ids), while `parseIpLoose` reads
 * whatever a URL would, so that a client writing `0x7f.1` is judged as the
 * 127.0.0.1 it really is.
 *
 * @module
 */
import ipaddr from "ipaddr.js";

/** An address family. */
export type IpFamily = 4 | 6;

/** A parsed address. `text` is canonical: dotted IPv4, or RFC 5952 IPv6 without brackets. */
export type Ip = { family: IpFamily; bytes: Uint8Array; text: string };

/** A parsed CIDR with its host bits clear. */
export type Cidr = { family: IpFamily; bytes: Uint8Array; prefix: number; text: string };

/** The class of an address, as the `private` guard sees it. */
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

const DOTTED_QUAD = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

function fromBytes(bytes: Uint8Array): Ip {
  if (bytes.length === 4) return { family: 4, bytes, text: bytes.join(".") };
  const parsed = ipaddr.fromByteArray([...bytes]) as ipaddr.IPv6;
  return { family: 6, bytes, text: parsed.toRFC5952String() };
}

/**
 * Parses a strict IP literal: IPv4 as four decimal numbers without leading
 * zeros (`010.0.0.1` is ambiguous octal and refused), IPv6 in any valid form,
 * optionally in brackets. Zone ids (`fe80::1%eth0`) are refused: a policy
 * cannot meaningfully name an interface-scoped address.
 *
 * @example
 * ```ts
 * parseIp("2001:DB8:0:0:0:0:0:1")?.text; // "2001:db8::1"
 * parseIp("127.1"); // undefined
 * ```
 */
export function parseIp(text: string): Ip | undefined {
  const t = text.startsWith("[") && text.endsWith("]") ? text.slice(1, -1) : text;
  if (t.includes("%")) return undefined;
  if (t.includes(":")) {
    if (!ipaddr.IPv6.isValid(t)) return undefined;
    return fromBytes(new Uint8Array(ipaddr.IPv6.parse(t).toByteArray()));
  }
  if (!DOTTED_QUAD.test(t)) return undefined;
  return fromBytes(new Uint8Array(t.split(".").map(Number)));
}

/**
 * Parses an IP literal the way a URL host parser does (WHATWG), accepting
 * `0x7f.1`, `2130706433` and `127.1` as 127.0.0.1. For hosts clients send,
 * never for policy rules. Returns undefined for anything that is a name.
 */
export function parseIpLoose(text: string): Ip | undefined {
  const strict = parseIp(text);
  if (strict) return strict;
  if (text.includes(":") && !text.startsWith("[")) return undefined;
  // Only strings made of digits, dots and hex markers can be numeric IPv4 hosts.
  if (!text.startsWith("[") && !/^[0-9a-fx.]+$/i.test(text)) return undefined;
  let host: string;
  try {
    host = new URL(`http://${text}/`).hostname;
  } catch {
    return undefined;
  }
  return parseIp(host);
}

/**
 * Parses a CIDR such as `10.20.0.0/16` or `2001:db8::/32` (brackets allowed).
 * Host bits must be clear: `10.20.0.1/16` is refused with the fix.
 */
export function parseCidr(
  text: string,
): { ok: true; cidr: Cidr } | { ok: false; message: string; hint?: string } {
  const slash = text.lastIndexOf("/");
  const ip = parseIp(text.slice(0, slash));
  const prefixText = text.slice(slash + 1);
  if (slash === -1 || !ip) {
    return {
      ok: false,
      message: `"${text}" is not a CIDR`,
      hint: "write address/prefix, e.g. 10.20.0.0/16",
    };
  }
  const max = ip.family === 4 ? 32 : 128;
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) {
    return {
      ok: false,
      message: `"/${prefixText}" is not a prefix length for IPv${ip.family}`,
      hint: `use 0 to ${max}`,
    };
  }
  const prefix = Number(prefixText);
  const masked = maskBytes(ip.bytes, prefix);
  const net = fromBytes(masked);
  if (net.text !== ip.text) {
    return {
      ok: false,
      message: `"${text}" has host bits set`,
      hint: `did you mean ${net.family === 6 ? net.text : net.text}/${prefix}?`,
    };
  }
  return {
    ok: true,
    cidr: { family: ip.family, bytes: masked, prefix, text: `${net.text}/${prefix}` },
  };
}

function maskBytes(bytes: Uint8Array, prefix: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) {
    const bits = Math.max(0, Math.min(8, prefix - i * 8));
    out[i] = bytes[i] & (0xff << (8 - bits));
  }
  return out;
}

/** Whether an address lies in a CIDR. IPv4-mapped IPv6 addresses are matched as IPv4. */
export function cidrContains(cidr: Cidr, address: Ip): boolean {
  const ip = unmapIp(address);
  if (ip.family !== cidr.family) return false;
  const full = cidr.prefix >> 3;
  for (let i = 0; i < full; i++) if (ip.bytes[i] !== cidr.bytes[i]) return false;
  const rest = cidr.prefix & 7;
  if (rest === 0) return true;
  const mask = 0xff << (8 - rest) & 0xff;
  return (ip.bytes[full] & mask) === cidr.bytes[full];
}

/**
 * The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`) or
 * IPv4-compatible (`::a.b.c.d`, but not `::` or `::1`) IPv6 address;
 * other addresses are returned unchanged.
 */
export function unmapIp(ip: Ip): Ip {
  if (ip.family !== 6) return ip;
  const b = ip.bytes;
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return ip;
  const mapped = b[10] === 0xff && b[11] === 0xff;
  const compatible = b[10] === 0 && b[11] === 0 && (b[12] | b[13] | b[14]) !== 0;
  if (!mapped && !compatible) return ip;
  return fromBytes(b.slice(12, 16));
}

type Range = [Cidr, AddressClass];
const range = (text: string, cls: AddressClass): Range => {
  const r = parseCidr(text);
  if (!r.ok) throw new Error(`bad built-in range ${text}`);
  return [r.cidr, cls];
};

// Most specific first: the metadata addresses sit inside link-local / ULA.
const V4_RANGES: Range[] = [
  range("169.254.169.254/32", "metadata"),
  range("0.0.0.0/8", "unspecified"),
  range("10.0.0.0/8", "private"),
  range("100.64.0.0/10", "cgnat"),
  range("127.0.0.0/8", "loopback"),
  range("169.254.0.0/16", "link-local"),
  range("172.16.0.0/12", "private"),
  range("192.0.0.0/24", "reserved"),
  range("192.168.0.0/16", "private"),
  range("198.18.0.0/15", "benchmarking"),
  range("224.0.0.0/4", "multicast"),
  range("255.255.255.255/32", "broadcast"),
  range("240.0.0.0/4", "reserved"),
];
const V6_RANGES: Range[] = [
  range("fd00:ec2::254/128", "metadata"),
  range("::/128", "unspecified"),
  range("::1/128", "loopback"),
  range("fe80::/10", "link-local"),
  range("fc00::/7", "unique-local"),
  range("ff00::/8", "multicast"),
  range("2001::/32", "reserved"), // Teredo: tunnels to arbitrary IPv4, unverifiable
  range("100::/64", "reserved"), // discard-only
  range("fec0::/10", "reserved"), // deprecated site-local
];
const NAT64 = parseCidr("64:ff9b::/96");
const SIX_TO_FOUR = parseCidr("2002::/16");

/**
 * Classifies an address for the `private` guard. Documentation ranges
 * (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32) count as public:
 * the policy examples use them as stand-ins for public servers, and nothing
 * routable lives there to protect.
 */
export function classifyIp(address: Ip): AddressClass {
  const ip = unmapIp(address);
  const table = ip.family === 4 ? V4_RANGES : V6_RANGES;
  for (const [cidr, cls] of table) if (cidrContains(cidr, ip)) return cls;
  if (ip.family === 6) {
    // Addresses that embed an IPv4 address are as private as that address.
    if (NAT64.ok && cidrContains(NAT64.cidr, ip)) {
      return classifyIp(fromBytes(ip.bytes.slice(12, 16)));
    }
    if (SIX_TO_FOUR.ok && cidrContains(SIX_TO_FOUR.cidr, ip)) {
      return classifyIp(fromBytes(ip.bytes.slice(2, 6)));
    }
  }
  return "public";
}

/** Whether the `private: deny` guard refuses this class. */
export function isPrivateClass(cls: AddressClass): boolean {
  return cls !== "public";
}
