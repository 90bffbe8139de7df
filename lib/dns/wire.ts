/**
 * DNS messages on the wire (RFC 1035, EDNS0 from RFC 6891): parsing the
 * queries sluice's DNS server accepts and building its answers. Pure: no I/O,
 * no clock, so every malformed input is a table or fuzz case.
 *
 * The parser trusts nothing: every length is checked against the buffer,
 * compression pointers may only point backwards (so they cannot loop), and a
 * name may not exceed 255 octets. It never throws on input; it classifies it:
 * `drop` (not even a header, or not a query: answering a response could start
 * a loop between two servers), `formerr` (a header we can answer, a body we
 * cannot read), `notimp` (an opcode other than QUERY) or `query`.
 *
 * @module
 */

/** Resource record types sluice names. */
export const QTYPE = {
  A: 1,
  NS: 2,
  CNAME: 5,
  SOA: 6,
  PTR: 12,
  MX: 15,
  TXT: 16,
  AAAA: 28,
  SRV: 33,
  OPT: 41,
  SVCB: 64,
  HTTPS: 65,
  IXFR: 251,
  AXFR: 252,
  ANY: 255,
} as const;

/** The Internet class; the only one sluice answers. */
export const CLASS_IN = 1;

/** Response codes. BADVERS (16) only exists as an extended code through EDNS. */
export const RCODE = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
  BADVERS: 16,
} as const;

/** The classic UDP size limit, for clients that do not speak EDNS0. */
export const UDP_CLASSIC_SIZE = 512;
/**
 * The largest UDP answer sluice sends even when a client advertises more: the
 * DNS Flag Day 2020 figure, which avoids IP fragmentation on common paths.
 */
export const UDP_MAX_SIZE = 1232;
/** A DNS message over TCP carries a 2-byte length, so this is the hard ceiling. */
export const TCP_MAX_SIZE = 65535;
/**
 * The largest query sluice reads. A real query is a header, one name (at most
 * 255 octets) and an OPT record; a few KiB leaves room for EDNS padding and
 * cookies while keeping work per message small.
 */
export const MAX_QUERY_SIZE = 4096;

const HEADER_SIZE = 12;
const MAX_NAME_WIRE = 255;

/** The header fields a response must echo. */
export type DnsHeader = {
  id: number;
  opcode: number;
  /** Recursion desired: echoed in the answer. */
  rd: boolean;
  /** Checking disabled: echoed in the answer. */
  cd: boolean;
};

/** The question of a query. */
export type DnsQuestion = {
  /**
   * The name in presentation form without the trailing dot, as received
   * (case kept), with any octet that is not a printable ASCII character other
   * than `.` and `\` written as `\DDD`. So a label that contains a dot can
   * never pass for two labels; such names fail host-name normalization.
   * The root is the empty string.
   */
  name: string;
  /** The name as it was on the wire, uncompressed, case kept: echoed byte for byte. */
  wire: Uint8Array;
  qtype: number;
  qclass: number;
};

/** EDNS0 parameters from a query's OPT record. */
export type Edns = {
  /** The requestor's UDP payload size, as sent (may be below 512). */
  udpSize: number;
  version: number;
  /** DNSSEC OK: echoed in the answer's OPT record. */
  dnssecOk: boolean;
};

/** What the parser made of a message. */
export type ParsedQuery =
  | { kind: "drop"; reason: string }
  | { kind: "formerr"; header: DnsHeader; reason: string }
  | { kind: "notimp"; header: DnsHeader; edns?: Edns }
  | { kind: "query"; header: DnsHeader; question: DnsQuestion; edns?: Edns };

/** One answer record; the owner is always the question's name (a pointer to it). */
export type DnsAnswer = { type: number; ttl: number; data: Uint8Array };

/** Everything needed to build a response. */
export type DnsResponse = {
  header: DnsHeader;
  rcode: number;
  /** Omitted in FORMERR answers to a question that could not be read. */
  question?: DnsQuestion;
  answers?: readonly DnsAnswer[];
  /** Present when the query carried EDNS0: the answer then carries an OPT record too. */
  edns?: Edns;
  /** The largest message the transport allows; past it, answers are dropped and TC is set. */
  maxSize: number;
};

/**
 * Why a message cannot be read. Deliberately not an Error: it never leaves
 * this module, and skipping the stack capture makes rejecting garbage about
 * four times cheaper, which matters for a listener anyone can send datagrams to.
 */
class Malformed {
  constructor(readonly message: string) {}
}

function u16(b: Uint8Array, at: number): number {
  if (at + 2 > b.length) throw new Malformed(`message ends inside a 16-bit field at ${at}`);
  return (b[at] << 8) | b[at + 1];
}

function u32(b: Uint8Array, at: number): number {
  return u16(b, at) * 65536 + u16(b, at + 2);
}

/** Parses the 12-byte header, or returns undefined if there is none. */
function readHeader(b: Uint8Array): (DnsHeader & { qr: boolean; counts: number[] }) | undefined {
  if (b.length < HEADER_SIZE) return undefined;
  const flags = (b[2] << 8) | b[3];
  return {
    id: (b[0] << 8) | b[1],
    qr: (flags & 0x8000) !== 0,
    opcode: (flags >> 11) & 0xf,
    rd: (flags & 0x0100) !== 0,
    cd: (flags & 0x0010) !== 0,
    counts: [u16(b, 4), u16(b, 6), u16(b, 8), u16(b, 10)],
  };
}

/** Escapes one label octet for the presentation form. */
function labelChar(c: number): string {
  if (c > 0x20 && c < 0x7f && c !== 0x2e && c !== 0x5c) return String.fromCharCode(c);
  return "\\" + String(c).padStart(3, "0");
}

/**
 * Reads a possibly compressed name at `at`. Returns the presentation form,
 * the uncompressed wire form, and where the name ends in the message.
 */
function readName(b: Uint8Array, at: number): { name: string; wire: Uint8Array; end: number } {
  const wire: number[] = [];
  const labels: string[] = [];
  let pos = at;
  let end = -1;
  // Every pointer must go strictly backwards from the name it interrupts:
  // that bounds the walk by the message length and rules out loops.
  let limit = at;
  for (;;) {
    if (pos >= b.length) throw new Malformed(`name at ${at} runs past the end of the message`);
    const len = b[pos];
    if ((len & 0xc0) === 0xc0) {
      if (pos + 2 > b.length) throw new Malformed(`compression pointer at ${pos} is cut short`);
      const target = ((len & 0x3f) << 8) | b[pos + 1];
      if (end < 0) end = pos + 2;
      if (target >= limit) {
        throw new Malformed(`compression pointer at ${pos} does not point backwards`);
      }
      limit = target;
      pos = target;
      continue;
    }
    if ((len & 0xc0) !== 0) {
      throw new Malformed(`label type 0x${(len & 0xc0).toString(16)} at ${pos} is not supported`);
    }
    if (pos + 1 + len > b.length) throw new Malformed(`label at ${pos} runs past the end`);
    if (wire.length + 1 + len > MAX_NAME_WIRE) {
      throw new Malformed(`name at ${at} is longer than ${MAX_NAME_WIRE} octets`);
    }
    wire.push(len);
    if (len === 0) break;
    let label = "";
    for (let i = pos + 1; i <= pos + len; i++) {
      wire.push(b[i]);
      label += labelChar(b[i]);
    }
    labels.push(label);
    pos += 1 + len;
  }
  if (end < 0) end = pos + 1;
  return { name: labels.join("."), wire: Uint8Array.from(wire), end };
}

/** Skips one resource record, returning where the next begins and the parts of interest. */
function readRecord(
  b: Uint8Array,
  at: number,
): { name: string; type: number; klass: number; ttl: number; data: number; end: number } {
  const { name, end: nameEnd } = readName(b, at);
  const type = u16(b, nameEnd);
  const klass = u16(b, nameEnd + 2);
  const ttl = u32(b, nameEnd + 4);
  const rdlen = u16(b, nameEnd + 8);
  const end = nameEnd + 10 + rdlen;
  if (end > b.length) throw new Malformed(`record data at ${nameEnd + 10} runs past the end`);
  return { name, type, klass, ttl, data: nameEnd + 10, end };
}

/**
 * Parses a DNS query. Never throws.
 *
 * A query must have QR clear, exactly one question, and at most one OPT
 * record (in the additional section, owned by the root). Trailing bytes after
 * the last record are a format error. Messages over `MAX_QUERY_SIZE` are
 * refused as a format error without being read.
 *
 * @param msg the message, without TCP's length prefix
 * @returns a classification the server can act on
 *
 * @example
 * ```ts
 * const q = buildQuery({ id: 7, name: "example.com", qtype: QTYPE.A });
 * parseQuery(q).kind; // "query"
 * ```
 */
export function parseQuery(msg: Uint8Array): ParsedQuery {
  const h = readHeader(msg);
  if (!h) return { kind: "drop", reason: `message is ${msg.length} bytes, shorter than a header` };
  if (h.qr) return { kind: "drop", reason: "message is a response, not a query" };
  const header: DnsHeader = { id: h.id, opcode: h.opcode, rd: h.rd, cd: h.cd };
  if (msg.length > MAX_QUERY_SIZE) {
    return {
      kind: "formerr",
      header,
      reason: `query is ${msg.length} bytes; the limit is ${MAX_QUERY_SIZE}`,
    };
  }
  const [qd, an, ns, ar] = h.counts;
  try {
    let pos = HEADER_SIZE;
    let question: DnsQuestion | undefined;
    if (qd > 1) throw new Malformed(`query has ${qd} questions; exactly one is supported`);
    if (qd === 1) {
      const { name, wire, end } = readName(msg, pos);
      question = { name, wire, qtype: u16(msg, end), qclass: u16(msg, end + 2) };
      pos = end + 4;
    }
    for (let i = 0; i < an + ns; i++) pos = readRecord(msg, pos).end;
    let edns: Edns | undefined;
    for (let i = 0; i < ar; i++) {
      const r = readRecord(msg, pos);
      if (r.type === QTYPE.OPT) {
        if (edns) throw new Malformed("query has more than one OPT record");
        if (r.name !== "") throw new Malformed("OPT record is not owned by the root");
        edns = {
          udpSize: r.klass,
          version: (r.ttl >>> 16) & 0xff,
          dnssecOk: (r.ttl & 0x8000) !== 0,
        };
      }
      pos = r.end;
    }
    if (pos !== msg.length) {
      throw new Malformed(`${msg.length - pos} bytes follow the last record`);
    }
    // Opcodes other than QUERY (IQUERY, STATUS, NOTIFY, UPDATE) are not
    // errors in the message, just things sluice does not do.
    if (h.opcode !== 0) return { kind: "notimp", header, edns };
    if (!question) throw new Malformed("query has no question");
    return { kind: "query", header, question, edns };
  } catch (e) {
    if (!(e instanceof Malformed)) throw e;
    return { kind: "formerr", header, reason: e.message };
  }
}

/** The UDP size limit for an answer: 512 without EDNS0, else the client's size within 512..1232. */
export function udpLimit(edns: Edns | undefined): number {
  if (!edns) return UDP_CLASSIC_SIZE;
  return Math.min(UDP_MAX_SIZE, Math.max(UDP_CLASSIC_SIZE, edns.udpSize));
}

class Writer {
  #buf: Uint8Array;
  length = 0;
  constructor(size: number) {
    this.#buf = new Uint8Array(size);
  }
  #room(n: number): void {
    if (this.length + n <= this.#buf.length) return;
    const next = new Uint8Array(Math.max(this.#buf.length * 2, this.length + n));
    next.set(this.#buf.subarray(0, this.length));
    this.#buf = next;
  }
  u8(v: number): void {
    this.#room(1);
    this.#buf[this.length++] = v & 0xff;
  }
  u16(v: number): void {
    this.u8(v >> 8);
    this.u8(v);
  }
  u32(v: number): void {
    this.u16(Math.floor(v / 65536) & 0xffff);
    this.u16(v & 0xffff);
  }
  bytes(b: Uint8Array): void {
    this.#room(b.length);
    this.#buf.set(b, this.length);
    this.length += b.length;
  }
  done(): Uint8Array {
    return this.#buf.slice(0, this.length);
  }
}

function writeOpt(w: Writer, edns: Edns, extendedRcode: number): void {
  w.u8(0); // root owner
  w.u16(QTYPE.OPT);
  w.u16(UDP_MAX_SIZE); // the most sluice will accept over UDP
  w.u8(extendedRcode);
  w.u8(0); // version 0, the only one sluice speaks
  w.u16(edns.dnssecOk ? 0x8000 : 0);
  w.u16(0); // no options
}

/**
 * Builds a response. Answers that would push the message past `maxSize` are
 * all left out and the TC bit is set, so the client retries over TCP (a
 * partial address set would silently pin clients to fewer addresses).
 *
 * Flags: QR set; AA clear (sluice is not authoritative for anything); RA set
 * (it resolves on the client's behalf); RD and CD echoed.
 */
export function buildResponse(r: DnsResponse): Uint8Array {
  const answers = r.answers ?? [];
  const size = (withAnswers: boolean): number => {
    let n = HEADER_SIZE;
    if (r.question) n += r.question.wire.length + 4;
    if (withAnswers) { for (const a of answers) n += 12 + a.data.length; }
    if (r.edns) n += 11;
    return n;
  };
  const fits = size(true) <= r.maxSize;
  const included = fits ? answers : [];
  const w = new Writer(size(fits));
  w.u16(r.header.id);
  let flags = 0x8000 | ((r.header.opcode & 0xf) << 11) | 0x0080 | (r.rcode & 0xf);
  if (!fits) flags |= 0x0200;
  if (r.header.rd) flags |= 0x0100;
  if (r.header.cd) flags |= 0x0010;
  w.u16(flags);
  w.u16(r.question ? 1 : 0);
  w.u16(included.length);
  w.u16(0);
  w.u16(r.edns ? 1 : 0);
  if (r.question) {
    w.bytes(r.question.wire);
    w.u16(r.question.qtype);
    w.u16(r.question.qclass);
  }
  for (const a of included) {
    w.u16(0xc000 | HEADER_SIZE); // the owner is the question's name
    w.u16(a.type);
    w.u16(CLASS_IN);
    w.u32(a.ttl);
    w.u16(a.data.length);
    w.bytes(a.data);
  }
  if (r.edns) writeOpt(w, r.edns, r.rcode >> 4);
  return w.done();
}

/** The wire form of a presentation name (no escapes; for building queries in tests and tools). */
export function encodeName(name: string): Uint8Array {
  const w = new Writer(name.length + 2);
  const trimmed = name.endsWith(".") ? name.slice(0, -1) : name;
  if (trimmed !== "") {
    for (const label of trimmed.split(".")) {
      const b = new TextEncoder().encode(label);
      if (b.length === 0 || b.length > 63) {
        throw new RangeError(`label "${label}" of "${name}" must be 1 to 63 octets long`);
      }
      w.u8(b.length);
      w.bytes(b);
    }
  }
  w.u8(0);
  if (w.length > MAX_NAME_WIRE) {
    throw new RangeError(`"${name}" is longer than ${MAX_NAME_WIRE} octets on the wire`);
  }
  return w.done();
}

/**
 * Builds a query: one question, RD set, and an OPT record when `udpSize` is
 * given. For tests and health checks; sluice itself only answers.
 */
export function buildQuery(
  q: { id: number; name: string; qtype: number; qclass?: number; udpSize?: number },
): Uint8Array {
  const w = new Writer(64);
  w.u16(q.id);
  w.u16(0x0100);
  w.u16(1);
  w.u16(0);
  w.u16(0);
  w.u16(q.udpSize === undefined ? 0 : 1);
  w.bytes(encodeName(q.name));
  w.u16(q.qtype);
  w.u16(q.qclass ?? CLASS_IN);
  if (q.udpSize !== undefined) {
    w.u8(0);
    w.u16(QTYPE.OPT);
    w.u16(q.udpSize);
    w.u32(0);
    w.u16(0);
  }
  return w.done();
}

/** A response as a test or tool sees it. */
export type ParsedResponse = {
  id: number;
  rcode: number;
  flags: { qr: boolean; aa: boolean; tc: boolean; rd: boolean; ra: boolean; cd: boolean };
  question?: { name: string; qtype: number; qclass: number };
  answers: { name: string; type: number; ttl: number; data: Uint8Array }[];
  edns?: { udpSize: number; version: number; dnssecOk: boolean };
};

/**
 * Parses a response (for tests and tools). Throws on malformed input: a
 * response from sluice that does not parse is a bug to see, not to tolerate.
 *
 * @throws {Error} saying what is malformed
 */
export function parseResponse(msg: Uint8Array): ParsedResponse {
  if (msg.length < HEADER_SIZE) throw new Error(`response is ${msg.length} bytes, too short`);
  const flags = u16(msg, 2);
  const [qd, an, ns, ar] = [u16(msg, 4), u16(msg, 6), u16(msg, 8), u16(msg, 10)];
  let pos = HEADER_SIZE;
  let question: ParsedResponse["question"];
  for (let i = 0; i < qd; i++) {
    const { name, end } = readName(msg, pos);
    question = { name, qtype: u16(msg, end), qclass: u16(msg, end + 2) };
    pos = end + 4;
  }
  const answers: ParsedResponse["answers"] = [];
  let edns: ParsedResponse["edns"];
  let extended = 0;
  for (let i = 0; i < an + ns + ar; i++) {
    const r = readRecord(msg, pos);
    if (i < an) {
      answers.push({ name: r.name, type: r.type, ttl: r.ttl, data: msg.slice(r.data, r.end) });
    } else if (r.type === QTYPE.OPT) {
      edns = {
        udpSize: r.klass,
        version: (r.ttl >>> 16) & 0xff,
        dnssecOk: (r.ttl & 0x8000) !== 0,
      };
      extended = (r.ttl >>> 24) & 0xff;
    }
    pos = r.end;
  }
  if (pos !== msg.length) throw new Error(`${msg.length - pos} bytes follow the last record`);
  return {
    id: u16(msg, 0),
    rcode: (extended << 4) | (flags & 0xf),
    flags: {
      qr: (flags & 0x8000) !== 0,
      aa: (flags & 0x0400) !== 0,
      tc: (flags & 0x0200) !== 0,
      rd: (flags & 0x0100) !== 0,
      ra: (flags & 0x0080) !== 0,
      cd: (flags & 0x0010) !== 0,
    },
    question,
    answers,
    edns,
  };
}
