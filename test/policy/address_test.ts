import { assert, assertEquals } from "../_assert.ts";
import {
  cidrContains,
  classifyIp,
  type Ip,
  isPrivateClass,
  parseCidr,
  parseIp,
  parseIpLoose,
  unmapIp,
} from "../../policy/address.ts";

/** [name, input, canonical text or null] */
const ips: [string, string, string | null][] = [
  ["reads dotted-quad IPv4", "203.0.113.7", "203.0.113.7"],
  ["canonicalizes IPv6 (RFC 5952)", "2001:DB8:0:0:0:0:0:1", "2001:db8::1"],
  ["strips brackets", "[::1]", "::1"],
  ["keeps the longest zero run compressed", "2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
  ["reads a mapped address", "::ffff:127.0.0.1", "::ffff:7f00:1"],
  ["refuses leading zeros (ambiguous octal)", "010.0.0.1", null],
  ["refuses short IPv4 forms", "127.1", null],
  ["refuses hex IPv4", "0x7f.0.0.1", null],
  ["refuses an octet over 255", "256.0.0.1", null],
  ["refuses a zone id", "fe80::1%eth0", null],
  ["refuses a name", "example.com", null],
  ["refuses empty input", "", null],
];
for (const [name, input, want] of ips) {
  Deno.test(`parseIp() ${name}`, () => {
    assertEquals(parseIp(input)?.text ?? null, want);
  });
}

/** [name, input, canonical text or null] */
const loose: [string, string, string | null][] = [
  ["reads hex IPv4 as URLs do", "0x7f.1", "127.0.0.1"],
  ["reads a 32-bit integer", "2130706433", "127.0.0.1"],
  ["reads short forms", "127.1", "127.0.0.1"],
  ["reads octal", "0177.0.0.1", "127.0.0.1"],
  ["reads bracketed IPv6", "[::ffff:a9fe:a9fe]", "::ffff:a9fe:a9fe"],
  ["leaves names alone", "example.com", null],
  ["leaves digit-led names alone", "1password.com", null],
];
for (const [name, input, want] of loose) {
  Deno.test(`parseIpLoose() ${name}`, () => {
    assertEquals(parseIpLoose(input)?.text ?? null, want);
  });
}

/** [name, input, canonical text, or an error fragment] */
const cidrs: [string, string, string][] = [
  ["reads an IPv4 CIDR", "10.20.0.0/16", "10.20.0.0/16"],
  ["reads an IPv6 CIDR", "2001:DB8::/32", "2001:db8::/32"],
  ["allows /0", "0.0.0.0/0", "0.0.0.0/0"],
  ["allows a host /32", "10.0.0.1/32", "10.0.0.1/32"],
  [
    "refuses host bits, suggesting the network",
    "10.20.0.1/16",
    "error: host bits set; did you mean 10.20.0.0/16?",
  ],
  ["refuses IPv6 host bits", "2001:db8::1/32", "error: host bits set; did you mean 2001:db8::/32?"],
  ["refuses /33 for IPv4", "10.0.0.0/33", "error: is not a prefix length for IPv4"],
  ["refuses /129 for IPv6", "::/129", "error: is not a prefix length for IPv6"],
  ["refuses a missing prefix", "10.0.0.0/", "error: is not a prefix length"],
  ["refuses a name", "example.com/8", "error: is not a CIDR"],
];
for (const [name, input, want] of cidrs) {
  Deno.test(`parseCidr() ${name}`, () => {
    const r = parseCidr(input);
    const got = r.ok ? r.cidr.text : `error: ${r.message}; ${r.hint}`;
    if (want.startsWith("error: ")) {
      const [msg, hint] = want.slice(7).split("; ");
      assert(!r.ok, `expected an error for ${input}`);
      assert(got.includes(msg), got);
      if (hint) assert(got.includes(hint), got);
    } else {
      assertEquals(got, want);
    }
  });
}

/** [name, cidr, ip, inside] */
const contains: [string, string, string, boolean][] = [
  ["matches inside", "10.20.0.0/16", "10.20.255.1", true],
  ["rejects outside", "10.20.0.0/16", "10.21.0.1", false],
  ["matches a non-byte-aligned prefix", "100.64.0.0/10", "100.127.255.255", true],
  ["rejects just past a non-byte-aligned prefix", "100.64.0.0/10", "100.128.0.0", false],
  ["matches a mapped IPv6 address as IPv4", "10.0.0.0/8", "::ffff:10.1.2.3", true],
  ["never mixes families", "::/0", "10.0.0.1", false],
  ["matches everything with /0", "0.0.0.0/0", "255.255.255.255", true],
];
for (const [name, cidr, ip, want] of contains) {
  Deno.test(`cidrContains() ${name}`, () => {
    const c = parseCidr(cidr);
    if (!c.ok) throw new Error(c.message);
    assertEquals(cidrContains(c.cidr, parseIp(ip)!), want);
  });
}

Deno.test("cidrContains() agrees with a bit-by-bit reference on random IPv4 inputs", () => {
  // A seeded generator keeps failures reproducible.
  let seed = 0x5eed;
  const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (let n = 0; n < 500; n++) {
    const a = Math.floor(rand() * 2 ** 32) >>> 0;
    const prefix = Math.floor(rand() * 33);
    const net = prefix === 0 ? 0 : (a & (~0 << (32 - prefix))) >>> 0;
    const b = rand() < 0.5
      ? (net | (Math.floor(rand() * 2 ** 32) & ~(~0 << (32 - prefix)))) >>> 0
      : Math.floor(rand() * 2 ** 32) >>> 0;
    const text = (x: number) => [24, 16, 8, 0].map((s) => (x >>> s) & 255).join(".");
    const c = parseCidr(`${text(net)}/${prefix}`);
    if (!c.ok) throw new Error(c.message);
    let inside = true;
    for (let bit = 31; bit >= 32 - prefix; bit--) {
      if (((net >>> bit) & 1) !== ((b >>> bit) & 1)) inside = false;
    }
    assertEquals(cidrContains(c.cidr, parseIp(text(b))!), inside, `${text(b)} in ${c.cidr.text}`);
  }
});

/** [name, ip, class] */
const classes: [string, string, string][] = [
  ["calls a public address public", "93.184.216.34", "public"],
  ["treats documentation ranges as public", "203.0.113.7", "public"],
  ["finds RFC1918 10/8", "10.1.2.3", "private"],
  ["finds RFC1918 172.16/12", "172.31.255.255", "private"],
  ["leaves 172.32/16 public", "172.32.0.1", "public"],
  ["finds RFC1918 192.168/16", "192.168.0.1", "private"],
  ["finds loopback", "127.0.0.53", "loopback"],
  ["finds IPv6 loopback", "::1", "loopback"],
  ["finds link-local", "169.254.1.1", "link-local"],
  ["finds the metadata address", "169.254.169.254", "metadata"],
  ["finds the AWS IPv6 metadata address", "fd00:ec2::254", "metadata"],
  ["finds CGNAT", "100.64.0.1", "cgnat"],
  ["leaves the address after CGNAT public", "100.128.0.1", "public"],
  ["finds ULA", "fd12:3456::1", "unique-local"],
  ["finds IPv6 link-local", "fe80::1", "link-local"],
  ["finds 0.0.0.0/8", "0.1.2.3", "unspecified"],
  ["finds ::", "::", "unspecified"],
  ["finds multicast", "239.1.1.1", "multicast"],
  ["finds IPv6 multicast", "ff02::1", "multicast"],
  ["finds broadcast", "255.255.255.255", "broadcast"],
  ["finds 240/4 reserved", "240.0.0.1", "reserved"],
  ["finds benchmarking", "198.18.0.1", "benchmarking"],
  ["classifies a mapped address by its IPv4", "::ffff:127.0.0.1", "loopback"],
  ["classifies mapped metadata", "::ffff:169.254.169.254", "metadata"],
  ["classifies an IPv4-compatible address", "::10.0.0.1", "private"],
  ["classifies NAT64 by its IPv4", "64:ff9b::a9fe:a9fe", "metadata"],
  ["classifies 6to4 by its IPv4", "2002:0a00:0001::1", "private"],
  ["treats Teredo as reserved", "2001:0:4136:e378::1", "reserved"],
  ["calls global IPv6 public", "2606:4700::1111", "public"],
];
for (const [name, ip, cls] of classes) {
  Deno.test(`classifyIp() ${name}`, () => {
    const parsed: Ip | undefined = parseIp(ip);
    assert(parsed, `bad test input ${ip}`);
    assertEquals(classifyIp(parsed), cls);
    assertEquals(isPrivateClass(classifyIp(parsed)), cls !== "public");
  });
}

Deno.test("unmapIp() leaves :: and ::1 as IPv6", () => {
  assertEquals(unmapIp(parseIp("::1")!).text, "::1");
  assertEquals(unmapIp(parseIp("::")!).text, "::");
  assertEquals(unmapIp(parseIp("::ffff:1.2.3.4")!).text, "1.2.3.4");
});
