import { assert, assertEquals } from "../_assert.ts";
import {
  type AddressClass,
  cidrContains,
  classifyIp,
  hostEndsInNumber,
  type Ip,
  isPrivateClass,
  parseCidr,
  parseIp,
  parseIpLoose,
  parseIpWithZone,
  unmapIp,
} from "../../policy/address.ts";

function ip(text: string): Ip {
  const parsed = parseIp(text);
  if (!parsed) throw new Error(`bad test input ${text}`);
  return parsed;
}

/** A seeded generator keeps failures reproducible. */
function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    // xorshift32
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

/** [name, input, canonical text or null when refused] */
const strict: [string, string, string | null][] = [
  ["reads dotted-quad IPv4", "203.0.113.7", "203.0.113.7"],
  ["reads 0.0.0.0", "0.0.0.0", "0.0.0.0"],
  ["reads 255.255.255.255", "255.255.255.255", "255.255.255.255"],
  ["canonicalizes IPv6 (RFC 5952)", "2001:DB8:0:0:0:0:0:1", "2001:db8::1"],
  ["drops leading zeros in IPv6 groups", "2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
  ["strips brackets", "[::1]", "::1"],
  ["reads ::", "::", "::"],
  ["reads a trailing ::", "1::", "1::"],
  ["reads :: standing for one group", "1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"],
  ["does not compress a single zero group", "2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
  ["compresses the longest zero run", "2001:0:0:1:0:0:0:1", "2001:0:0:1::1"],
  ["compresses the first of equal zero runs", "2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
  ["reads a mapped address, writing it in hex", "::ffff:127.0.0.1", "::ffff:7f00:1"],
  ["reads an IPv4-compatible address as such", "::1.2.3.4", "::102:304"],
  ["reads a dotted-quad tail after six groups", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"],
  ["refuses leading zeros (ambiguous octal)", "010.0.0.1", null],
  ["refuses a leading zero octet 00", "1.00.0.1", null],
  ["refuses short IPv4 forms", "127.1", null],
  ["refuses a 32-bit integer", "2130706433", null],
  ["refuses hex IPv4", "0x7f.0.0.1", null],
  ["refuses an octet over 255", "256.0.0.1", null],
  ["refuses five octets", "1.2.3.4.5", null],
  ["refuses a trailing dot", "1.2.3.4.", null],
  ["refuses IPv4 in brackets", "[1.2.3.4]", null],
  ["refuses an unclosed bracket", "[::1", null],
  ["refuses a zone id", "fe80::1%eth0", null],
  ["refuses a bracketed zone id", "[fe80::1%25eth0]", null],
  ["refuses two ::", "1::2::3", null],
  ["refuses :::", "1:::2", null],
  ["refuses nine groups", "1:2:3:4:5:6:7:8:9", null],
  ["refuses seven groups without ::", "1:2:3:4:5:6:7", null],
  ["refuses :: with eight groups", "1:2:3:4::5:6:7:8", null],
  ["refuses a five-digit group", "00000::1", null],
  ["refuses a single leading colon", ":1::", null],
  ["refuses a single trailing colon", "::1:", null],
  ["refuses leading zeros in an embedded dotted quad", "::ffff:010.0.0.1", null],
  ["refuses hex in an embedded dotted quad", "::ffff:0x7f.0.0.1", null],
  ["refuses a dotted quad before ::", "1.2.3.4::", null],
  ["refuses a dotted quad that is not last", "::1.2.3.4:1", null],
  ["refuses surrounding spaces", " ::1", null],
  ["refuses a name", "example.com", null],
  ["refuses a hex-looking name", "cafe", null],
  ["refuses empty input", "", null],
  ["refuses empty brackets", "[]", null],
];
for (const [name, input, want] of strict) {
  Deno.test(`parseIp() ${name}`, () => {
    const got = parseIp(input);
    assertEquals(got?.text ?? null, want);
    if (got) assertEquals(got.bytes.length, got.family === 4 ? 4 : 16);
  });
}

Deno.test("parseIp() writes IPv6 as WHATWG URLs serialize it, on random zero-heavy addresses", () => {
  // The URL serializer is RFC 5952's compression rule; zero-heavy inputs
  // exercise run selection, ties and single zero groups.
  const rand = seeded(0x1b6);
  for (let n = 0; n < 500; n++) {
    const groups = Array.from(
      { length: 8 },
      () => rand() < 0.5 ? "0" : Math.floor(rand() * 0x10000).toString(16).toUpperCase(),
    );
    const text = groups.join(":");
    const want = new URL(`http://[${text}]/`).hostname.slice(1, -1);
    const got = ip(text);
    assertEquals(got.text, want, text);
    assertEquals(ip(got.text).text, got.text, `canonical text reparses: ${got.text}`);
  }
});

/** [name, input, [canonical text, zone] or null when refused] */
const zoned: [string, string, [string, string | undefined] | null][] = [
  ["reads an address without a zone", "fe80::1", ["fe80::1", undefined]],
  ["reads a zone", "fe80::1%eth0", ["fe80::1", "eth0"]],
  ["reads a numeric zone", "fe80::1%2", ["fe80::1", "2"]],
  ["reads an RFC 6874 zone in brackets", "[fe80::1%25eth0]", ["fe80::1", "eth0"]],
  ["reads a raw zone in brackets", "[fe80::1%eth0]", ["fe80::1", "eth0"]],
  ["reads IPv4 without a zone", "10.0.0.1", ["10.0.0.1", undefined]],
  ["refuses a zone on IPv4", "10.0.0.1%eth0", null],
  ["refuses an empty zone", "fe80::1%", null],
  ["refuses a zone with a slash", "fe80::1%eth0/1", null],
  ["refuses a zone with a space", "fe80::1%eth 0", null],
  ["still refuses a non-strict address", "fe80::00001%eth0", null],
];
for (const [name, input, want] of zoned) {
  Deno.test(`parseIpWithZone() ${name}`, () => {
    const r = parseIpWithZone(input);
    assertEquals(r ? [r.ip.text, r.zone] : null, want);
  });
}

/** [name, input, canonical text or null when not an IP literal] */
const loose: [string, string, string | null][] = [
  ["reads strict IPv4", "10.0.0.1", "10.0.0.1"],
  ["reads bracketed IPv6", "[::ffff:a9fe:a9fe]", "::ffff:a9fe:a9fe"],
  ["reads unbracketed IPv6", "2001:db8::1", "2001:db8::1"],
  ["reads hex IPv4 as URLs do", "0x7f.1", "127.0.0.1"],
  ["reads an uppercase hex marker", "0X7F.0.0.1", "127.0.0.1"],
  ["reads a hex 32-bit integer", "0xdeadbeef", "222.173.190.239"],
  ["reads a decimal 32-bit integer", "2130706433", "127.0.0.1"],
  ["reads short forms", "127.1", "127.0.0.1"],
  ["reads octal", "0177.0.0.1", "127.0.0.1"],
  ["reads a leading-zero octet as octal", "010.0.0.1", "8.0.0.1"],
  ["ignores one trailing dot", "127.0.0.1.", "127.0.0.1"],
  ["decodes percent-escapes first", "%31%32%37.0.0.1", "127.0.0.1"],
  ["maps full-width digits", "１２７.０.０.１", "127.0.0.1"],
  ["maps the ideographic full stop", "127。0.0.1", "127.0.0.1"],
  ["reads an empty hex number as 0", "0x.0x.0x.1", "0.0.0.1"],
  ["leaves names alone", "example.com", null],
  ["leaves uppercase names alone", "API.Example.COM", null],
  ["leaves digit-led names alone", "1password.com", null],
  ["leaves hex-letter names alone", "deadbeef", null],
  ["leaves names with a numeric label alone", "1.2.3.example", null],
  ["refuses an out-of-range number", "1.2.3.999", null],
  ["refuses five parts", "1.2.3.4.5", null],
  ["reads a bare 0x as zero", "1.0x", "1.0.0.0"],
  ["leaves a label that only starts like hex a name", "1.0xg", null],
  ["refuses a numeric last label after a name label", "a.1", null],
  ["refuses userinfo that would hide the host", "a@127.0.0.1", null],
  ["refuses a port", "127.0.0.1:80", null],
  ["refuses a path", "127.0.0.1/x", null],
  ["refuses a backslash", "127.0.0.1\\x", null],
  ["refuses a tab the URL parser would strip", "127.0.0.1\t", null],
  ["refuses a space", "127.0.0.1 ", null],
  ["refuses two trailing dots", "127.0.0.1..", null],
  ["refuses a zone id", "[fe80::1%25eth0]", null],
  ["refuses an invalid bracketed address", "[::ffff:010.0.0.1]", null],
  ["refuses empty input", "", null],
];
for (const [name, input, want] of loose) {
  Deno.test(`parseIpLoose() ${name}`, () => {
    assertEquals(parseIpLoose(input)?.text ?? null, want);
  });
}

Deno.test("parseIpLoose() agrees with new URL() on random numeric hosts", () => {
  // Whatever a URL-based client would connect to, parseIpLoose must see.
  const rand = seeded(0x10053);
  const part = (): string => {
    const v = Math.floor(rand() * (rand() < 0.3 ? 2 ** 32 : 300));
    const r = rand();
    if (r < 0.3) return "0x" + v.toString(16);
    if (r < 0.5) return "0" + v.toString(8);
    return String(v);
  };
  for (let n = 0; n < 500; n++) {
    const parts = Array.from({ length: 1 + Math.floor(rand() * 4) }, part);
    const host = parts.join(".") + (rand() < 0.1 ? "." : "");
    let want: string | null;
    try {
      want = new URL(`http://${host}/`).hostname;
    } catch {
      want = null;
    }
    assertEquals(parseIpLoose(host)?.text ?? null, want, host);
  }
});

/** [name, host, ends in a number] */
const endsInNumber: [string, string, boolean][] = [
  ["sees a decimal last label", "a.1", true],
  ["sees a hex last label", "a.0x1f", true],
  ["sees a bare 0x", "0x", true],
  ["ignores one trailing dot", "1.2.3.4.", true],
  ["sees digits that are not valid octal", "09", true],
  ["leaves a name", "example.com", false],
  ["leaves a numeric first label", "1.example", false],
  ["leaves hex without 0x", "a.ff", false],
  ["leaves two trailing dots", "1.2.3.4..", false],
  ["leaves a lone dot", ".", false],
  ["leaves empty input", "", false],
];
for (const [name, host, want] of endsInNumber) {
  Deno.test(`hostEndsInNumber() ${name}`, () => {
    assertEquals(hostEndsInNumber(host), want);
  });
}

/** [name, input, canonical text, or "error: message fragment; hint fragment"] */
const cidrs: [string, string, string][] = [
  ["reads an IPv4 CIDR", "10.20.0.0/16", "10.20.0.0/16"],
  ["reads an IPv6 CIDR", "2001:DB8::/32", "2001:db8::/32"],
  ["reads a bracketed IPv6 address", "[2001:db8::]/32", "2001:db8::/32"],
  ["allows /0", "0.0.0.0/0", "0.0.0.0/0"],
  ["allows IPv6 /0", "::/0", "::/0"],
  ["allows a host /32", "10.0.0.1/32", "10.0.0.1/32"],
  ["allows a host /128", "2001:db8::1/128", "2001:db8::1/128"],
  ["allows a mapped range", "::ffff:10.0.0.0/104", "::ffff:a00:0/104"],
  ["allows ::1/128", "::1/128", "::1/128"],
  ["allows ::/127", "::/127", "::/127"],
  [
    "refuses host bits, suggesting the network",
    "10.20.0.1/16",
    "error: has host bits set; did you mean 10.20.0.0/16?",
  ],
  [
    "refuses host bits in a non-byte-aligned prefix",
    "100.65.0.0/10",
    "error: has host bits set; did you mean 100.64.0.0/10?",
  ],
  ["refuses IPv6 host bits", "2001:db8::1/32", "error: host bits set; did you mean 2001:db8::/32?"],
  ["refuses /33 for IPv4", "10.0.0.0/33", "error: is not a prefix length for IPv4; 0 to 32"],
  ["refuses /129 for IPv6", "::/129", "error: is not a prefix length for IPv6; 0 to 128"],
  ["refuses a leading zero in the prefix", "10.0.0.0/08", "error: is not a prefix length"],
  ["refuses a negative prefix", "10.0.0.0/-1", "error: is not a prefix length"],
  ["refuses a missing prefix", "10.0.0.0/", "error: is not a prefix length"],
  ["refuses a missing slash", "10.0.0.0", `error: has no "/prefix"; 10.20.0.0/16`],
  ["refuses a name", "example.com/8", "error: is not an IP address"],
  ["refuses a short IPv4 form", "10.1/16", "error: is not an IP address"],
  ["refuses a zone id", "fe80::%eth0/64", "error: is not an IP address"],
  [
    "refuses an IPv4-compatible range, suggesting the IPv4 CIDR",
    "::10.0.0.0/104",
    "error: IPv4-compatible; write the IPv4 CIDR 10.0.0.0/8",
  ],
];
for (const [name, input, want] of cidrs) {
  Deno.test(`parseCidr() ${name}`, () => {
    const r = parseCidr(input);
    if (!want.startsWith("error: ")) {
      assert(r.ok, r.ok ? "" : r.message);
      assertEquals(r.cidr.text, want);
      return;
    }
    assert(!r.ok, `expected an error for ${input}`);
    const [msg, hint] = want.slice(7).split("; ");
    assert(r.message.includes(msg), r.message);
    assert(r.message.includes(`"${input}"`), `the message names the input: ${r.message}`);
    if (hint) assert(r.hint?.includes(hint), r.hint);
  });
}

/** [name, cidr, ip, inside] */
const contains: [string, string, string, boolean][] = [
  ["matches inside", "10.20.0.0/16", "10.20.255.1", true],
  ["matches the network address", "10.20.0.0/16", "10.20.0.0", true],
  ["rejects outside", "10.20.0.0/16", "10.21.0.1", false],
  ["matches a non-byte-aligned prefix", "100.64.0.0/10", "100.127.255.255", true],
  ["rejects just past a non-byte-aligned prefix", "100.64.0.0/10", "100.128.0.0", false],
  ["rejects just before a non-byte-aligned prefix", "100.64.0.0/10", "100.63.255.255", false],
  ["matches a /32 exactly", "10.0.0.1/32", "10.0.0.1", true],
  ["rejects the neighbour of a /32", "10.0.0.1/32", "10.0.0.2", false],
  ["matches the top of 128.0.0.0/1 (unsigned compare)", "128.0.0.0/1", "255.255.255.255", true],
  ["rejects the bottom half for 128.0.0.0/1", "128.0.0.0/1", "127.255.255.255", false],
  ["matches everything with /0", "0.0.0.0/0", "255.255.255.255", true],
  ["matches a mapped IPv6 address as IPv4", "10.0.0.0/8", "::ffff:10.1.2.3", true],
  ["matches an IPv4-compatible address as IPv4", "10.0.0.0/8", "::10.1.2.3", true],
  ["does not match a mapped address outside", "10.0.0.0/8", "::ffff:11.0.0.1", false],
  ["matches IPv4 with a mapped CIDR", "::ffff:10.0.0.0/104", "10.9.8.7", true],
  ["matches a mapped address with a mapped CIDR", "::ffff:10.0.0.0/104", "::ffff:10.9.8.7", true],
  ["rejects IPv4 outside a mapped CIDR", "::ffff:10.0.0.0/104", "11.0.0.1", false],
  ["matches every IPv4 address with ::ffff:0:0/96", "::ffff:0:0/96", "8.8.8.8", true],
  ["matches IPv6 inside", "2001:db8::/32", "2001:db8:ffff::1", true],
  ["rejects IPv6 outside", "2001:db8::/32", "2001:db9::1", false],
  ["matches a non-word-aligned IPv6 prefix", "fe80::/10", "febf:ffff::1", true],
  ["rejects past a non-word-aligned IPv6 prefix", "fe80::/10", "fec0::1", false],
  ["matches in the last word", "2001:db8::ff00/120", "2001:db8::ffff", true],
  ["rejects in the last word", "2001:db8::ff00/120", "2001:db8::1:ff00", false],
  ["never matches IPv4 with an IPv6 CIDR", "::/0", "10.0.0.1", false],
  ["never matches a mapped address with ::/0", "::/0", "::ffff:10.0.0.1", false],
  ["matches :: with ::/0", "::/0", "::", true],
  ["matches ::1 with ::/127", "::/127", "::1", true],
  ["never matches IPv6 with an IPv4 CIDR", "0.0.0.0/0", "2001:db8::1", false],
];
for (const [name, cidr, address, want] of contains) {
  Deno.test(`cidrContains() ${name}`, () => {
    const c = parseCidr(cidr);
    if (!c.ok) throw new Error(c.message);
    assertEquals(cidrContains(c.cidr, ip(address)), want);
  });
}

/** Whether the first `prefix` bits of two byte arrays agree, bit by bit. */
function naiveContains(net: Uint8Array, prefix: number, addr: Uint8Array): boolean {
  for (let bit = 0; bit < prefix; bit++) {
    const mask = 0x80 >> (bit & 7);
    if ((net[bit >> 3] & mask) !== (addr[bit >> 3] & mask)) return false;
  }
  return true;
}

/** A random address near `base`: equal for a random number of leading bits, random after. */
function near(base: Uint8Array, rand: () => number): Uint8Array {
  const out = base.slice();
  const keep = Math.floor(rand() * (base.length * 8 + 1));
  for (let bit = keep; bit < base.length * 8; bit++) {
    const mask = 0x80 >> (bit & 7);
    if (rand() < 0.5) out[bit >> 3] ^= mask;
  }
  return out;
}

for (const family of [4, 6] as const) {
  Deno.test(`cidrContains() agrees with a bit-by-bit reference on random IPv${family} inputs`, () => {
    const rand = seeded(family === 4 ? 0x5eed : 0x5eed6);
    const len = family === 4 ? 4 : 16;
    let inside = 0;
    for (let n = 0; n < 1000; n++) {
      const base = Uint8Array.from({ length: len }, () => Math.floor(rand() * 256));
      // Keep random IPv6 clear of the IPv4-embedding ranges, which match as IPv4.
      if (family === 6) base[0] |= 0x20;
      const prefix = Math.floor(rand() * (len * 8 + 1));
      const net = base.slice();
      for (let bit = prefix; bit < len * 8; bit++) net[bit >> 3] &= ~(0x80 >> (bit & 7));
      const netText = family === 4 ? net.join(".") : formatHex(net);
      const c = parseCidr(`${netText}/${prefix}`);
      if (!c.ok) throw new Error(c.message);
      const addr = near(base, rand);
      if (family === 6) addr[0] |= 0x20;
      const address = ip(family === 4 ? addr.join(".") : formatHex(addr));
      const want = naiveContains(net, prefix, addr);
      if (want) inside++;
      assertEquals(cidrContains(c.cidr, address), want, `${address.text} in ${c.cidr.text}`);
    }
    // Both outcomes must be well represented, or the cross-check proves little.
    assert(inside > 200 && inside < 800, `inside ${inside} of 1000`);
  });
}

function formatHex(bytes: Uint8Array): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] << 8) | bytes[i + 1]).toString(16));
  return groups.join(":");
}

/** [name, ip, unmapped text] */
const unmapped: [string, string, string][] = [
  ["unmaps a mapped address", "::ffff:1.2.3.4", "1.2.3.4"],
  ["unmaps an IPv4-compatible address", "::1.2.3.4", "1.2.3.4"],
  ["unmaps mapped 0.0.0.0", "::ffff:0.0.0.0", "0.0.0.0"],
  ["unmaps compatible 0.0.0.2", "::2", "0.0.0.2"],
  ["leaves ::1 as IPv6", "::1", "::1"],
  ["leaves :: as IPv6", "::", "::"],
  ["leaves IPv4 alone", "10.0.0.1", "10.0.0.1"],
  ["leaves NAT64 alone", "64:ff9b::a00:1", "64:ff9b::a00:1"],
  ["leaves IPv4-translated ::ffff:0:a.b.c.d alone", "::ffff:0:1.2.3.4", "::ffff:0:102:304"],
  ["leaves global IPv6 alone", "2001:db8::1", "2001:db8::1"],
];
for (const [name, input, want] of unmapped) {
  Deno.test(`unmapIp() ${name}`, () => {
    const got = unmapIp(ip(input));
    assertEquals(got.text, want);
    assertEquals(got.family, want.includes(":") ? 6 : 4);
  });
}

/** [name, ip, class] */
const classes: [string, string, AddressClass][] = [
  ["calls a public address public", "93.184.216.34", "public"],
  ["treats TEST-NET-1 as public", "192.0.2.1", "public"],
  ["treats TEST-NET-2 as public", "198.51.100.1", "public"],
  ["treats TEST-NET-3 (the policy examples) as public", "203.0.113.7", "public"],
  ["treats IPv6 documentation as public", "2001:db8::1", "public"],
  ["finds RFC1918 10/8", "10.1.2.3", "private"],
  ["finds RFC1918 172.16/12 at its top", "172.31.255.255", "private"],
  ["leaves 172.32/16 public", "172.32.0.1", "public"],
  ["leaves 172.15/16 public", "172.15.255.255", "public"],
  ["finds RFC1918 192.168/16", "192.168.0.1", "private"],
  ["finds loopback", "127.0.0.53", "loopback"],
  ["finds the top of loopback", "127.255.255.255", "loopback"],
  ["finds IPv6 loopback", "::1", "loopback"],
  ["finds link-local", "169.254.1.1", "link-local"],
  ["finds the metadata address", "169.254.169.254", "metadata"],
  ["finds the Alibaba metadata address", "100.100.100.200", "metadata"],
  ["finds the AWS IPv6 metadata address", "fd00:ec2::254", "metadata"],
  ["finds the GCP IPv6 metadata address", "fd20:ce::254", "metadata"],
  ["finds CGNAT", "100.64.0.1", "cgnat"],
  ["finds the top of CGNAT", "100.127.255.255", "cgnat"],
  ["leaves the address after CGNAT public", "100.128.0.1", "public"],
  ["leaves the address before CGNAT public", "100.63.255.255", "public"],
  ["finds ULA fd00::/8", "fd12:3456::1", "unique-local"],
  ["finds ULA fc00::/8", "fc00::1", "unique-local"],
  ["finds IPv6 link-local", "fe80::1", "link-local"],
  ["finds the top of IPv6 link-local", "febf::1", "link-local"],
  ["finds deprecated site-local", "fec0::1", "reserved"],
  ["finds 0.0.0.0", "0.0.0.0", "unspecified"],
  ["finds 0.0.0.0/8", "0.1.2.3", "unspecified"],
  ["finds ::", "::", "unspecified"],
  ["finds multicast", "239.1.1.1", "multicast"],
  ["finds the bottom of multicast", "224.0.0.1", "multicast"],
  ["finds IPv6 multicast", "ff02::1", "multicast"],
  ["finds broadcast", "255.255.255.255", "broadcast"],
  ["finds 240/4 reserved", "240.0.0.1", "reserved"],
  ["finds the top of 240/4 below broadcast", "255.255.255.254", "reserved"],
  ["finds IETF protocol assignments", "192.0.0.8", "reserved"],
  ["finds benchmarking", "198.18.0.1", "benchmarking"],
  ["finds the top of benchmarking", "198.19.255.255", "benchmarking"],
  ["leaves 198.20/16 public", "198.20.0.1", "public"],
  ["classifies a mapped address by its IPv4", "::ffff:127.0.0.1", "loopback"],
  ["classifies mapped metadata", "::ffff:169.254.169.254", "metadata"],
  ["classifies a mapped public address as public", "::ffff:8.8.8.8", "public"],
  ["classifies an IPv4-compatible address", "::10.0.0.1", "private"],
  ["classifies NAT64 by its IPv4", "64:ff9b::a9fe:a9fe", "metadata"],
  ["classifies NAT64 of a public address as public", "64:ff9b::808:808", "public"],
  ["treats local-use NAT64 as reserved", "64:ff9b:1::a00:1", "reserved"],
  ["classifies 6to4 by its IPv4", "2002:0a00:0001::1", "private"],
  ["classifies 6to4 of loopback", "2002:7f00:1::", "loopback"],
  ["classifies 6to4 of a public address as public", "2002:808:808::1", "public"],
  ["treats Teredo as reserved", "2001:0:4136:e378::1", "reserved"],
  ["treats IPv6 benchmarking as non-public", "2001:2::1", "benchmarking"],
  ["treats the discard prefix as reserved", "100::1", "reserved"],
  ["treats IPv4-translated addresses as reserved", "::ffff:0:10.0.0.1", "reserved"],
  ["treats IPv6 outside 2000::/3 as reserved", "4000::1", "reserved"],
  ["calls global IPv6 public", "2606:4700::1111", "public"],
];
for (const [name, address, cls] of classes) {
  Deno.test(`classifyIp() ${name}`, () => {
    assertEquals(classifyIp(ip(address)), cls);
  });
}

/** [class, refused by private: deny] */
const privateClasses: [AddressClass, boolean][] = [
  ["public", false],
  ["private", true],
  ["loopback", true],
  ["link-local", true],
  ["metadata", true],
  ["cgnat", true],
  ["unique-local", true],
  ["unspecified", true],
  ["multicast", true],
  ["broadcast", true],
  ["benchmarking", true],
  ["reserved", true],
];
for (const [cls, want] of privateClasses) {
  Deno.test(`isPrivateClass() ${want ? "refuses" : "allows"} ${cls}`, () => {
    assertEquals(isPrivateClass(cls), want);
  });
}

Deno.test("classifyIp() classifies every spelling of a mapped address like its IPv4", () => {
  const rand = seeded(0xc1a55);
  for (let n = 0; n < 300; n++) {
    // Bias toward the interesting first octets.
    const first = [0, 10, 100, 127, 169, 172, 192, 198, 224, 240, 255][Math.floor(rand() * 11)];
    const b = [first, ...Array.from({ length: 3 }, () => Math.floor(rand() * 256))];
    const v4 = ip(b.join("."));
    const mapped = ip(`::ffff:${b.join(".")}`);
    const nat64 = ip(`64:ff9b::${b.join(".")}`);
    assertEquals(classifyIp(mapped), classifyIp(v4), mapped.text);
    assertEquals(classifyIp(nat64), classifyIp(v4), nat64.text);
    if (b.some((x, i) => i < 3 && x !== 0) || b[3] > 1) {
      assertEquals(classifyIp(ip(`::${b.join(".")}`)), classifyIp(v4), `::${b.join(".")}`);
    }
  }
});
