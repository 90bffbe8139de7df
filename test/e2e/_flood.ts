/**
 * Clients that hold connections to a sluice explicit proxy the cheap way an abusive client
 * would, for test/e2e/flood_test.ts and for measuring what a held connection costs.
 *
 * As a program, it measures sluice's RSS with N held connections of each kind (on loopback,
 * against a `sluice serve` it starts itself):
 *
 *   deno run -A test/e2e/_flood.ts [N] [extra serve flags...]
 *
 * and prints one line per kind: `kind held=N rss_before=MiB rss_after=MiB per_conn=KiB`.
 *
 * @module
 */
import { startSluice, startTlsUpstream, testCas } from "./_harness.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Every byte of `data`, written. */
export async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
}

/** A real TLS ClientHello for `sni`, captured from Deno's own client. */
export async function captureClientHello(sni: string): Promise<Uint8Array> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port: (l.addr as Deno.NetAddr).port });
  // startTls sends the name as SNI without resolving it.
  const client = Deno.startTls(tcp, { hostname: sni }).then((c) => c.handshake().then(() => c))
    .catch(() => undefined);
  const server = await l.accept();
  const buf = new Uint8Array(16384);
  let len = 0;
  // A record header gives the length of the whole ClientHello record.
  while (len < 5 || len < 5 + ((buf[3] << 8) | buf[4])) {
    const n = await server.read(buf.subarray(len));
    if (n === null) break;
    len += n;
  }
  server.close();
  l.close();
  await client;
  try {
    tcp.close();
  } catch { /* closed with the TLS connection */ }
  return buf.slice(0, len);
}

/** Reads one HTTP/1.1 response head (and whatever came with it) as text. */
export async function readHead(conn: Deno.Conn): Promise<string> {
  const buf = new Uint8Array(16384);
  let text = "";
  while (!text.includes("\r\n\r\n")) {
    const n = await conn.read(buf);
    if (n === null) throw new Error(`closed before a response head (got ${JSON.stringify(text)})`);
    text += dec.decode(buf.subarray(0, n));
  }
  return text;
}

/** Reads a whole small response: its head and a Content-Length body. */
export async function readResponse(conn: Deno.Conn): Promise<{ head: string; body: string }> {
  const buf = new Uint8Array(65536);
  let text = "";
  while (true) {
    const end = text.indexOf("\r\n\r\n");
    if (end >= 0) {
      const len = Number(/\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end))?.[1] ?? "0");
      if (text.length >= end + 4 + len) {
        return { head: text.slice(0, end), body: text.slice(end + 4, end + 4 + len) };
      }
    }
    const n = await conn.read(buf);
    if (n === null) throw new Error(`closed mid-response (got ${JSON.stringify(text)})`);
    text += dec.decode(buf.subarray(0, n));
  }
}

/** Opens a CONNECT tunnel through the proxy; returns the connection and the proxy's answer. */
export async function connectTunnel(
  proxyPort: number,
  authority: string,
): Promise<{ conn: Deno.TcpConn; head: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxyPort });
  try {
    await writeAll(conn, enc.encode(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`));
    return { conn, head: await readHead(conn) };
  } catch (e) {
    conn.close();
    throw e;
  }
}

/** A CONNECT tunnel that sends a ClientHello after the 200, then nothing (a half-open handshake). */
export async function halfOpenTls(
  proxyPort: number,
  authority: string,
  hello: Uint8Array,
): Promise<Deno.TcpConn> {
  const { conn, head } = await connectTunnel(proxyPort, authority);
  if (!head.startsWith("HTTP/1.1 200")) {
    conn.close();
    throw new Error(`CONNECT refused: ${head.split("\r\n")[0]}`);
  }
  await writeAll(conn, hello);
  return conn;
}

/** A TLS session through a CONNECT tunnel, verified against `caPem`. */
export async function tlsThroughProxy(
  proxyPort: number,
  authority: string,
  caPem: string,
): Promise<Deno.TlsConn> {
  const { conn, head } = await connectTunnel(proxyPort, authority);
  if (!head.startsWith("HTTP/1.1 200")) {
    conn.close();
    throw new Error(`CONNECT refused: ${head.split("\r\n")[0]}`);
  }
  const host = authority.replace(/:\d+$/, "");
  const tls = await Deno.startTls(conn, { hostname: host, caCerts: [caPem], alpnProtocols: [] });
  await tls.handshake();
  return tls;
}

/** A GET of `path` on `authority`, as bytes. */
export function getRequest(authority: string, path = "/echo"): Uint8Array {
  return enc.encode(`GET ${path} HTTP/1.1\r\nHost: ${authority}\r\nConnection: keep-alive\r\n\r\n`);
}

/**
 * Writes `data` a few bytes at a time, every `everyMs`, until it is all sent or the connection
 * fails. Resolves with whether it was all sent.
 */
export async function drip(conn: Deno.Conn, data: Uint8Array, everyMs: number): Promise<boolean> {
  for (let off = 0; off < data.length; off += 2) {
    try {
      await writeAll(conn, data.subarray(off, off + 2));
    } catch {
      return false;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return true;
}

/**
 * Resolves with the time (ms since `since`) at which the peer closed `conn` (EOF or reset),
 * reading and dropping whatever arrives; or `undefined` if it was still open after `maxMs`.
 */
export async function closedAfter(
  conn: Deno.Conn,
  since: number,
  maxMs: number,
): Promise<number | undefined> {
  const buf = new Uint8Array(16384);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"open">((r) => (timer = setTimeout(() => r("open"), maxMs)));
  try {
    while (true) {
      const n = await Promise.race([conn.read(buf).catch(() => null), timeout]);
      if (n === "open") return undefined;
      if (n === null) return Date.now() - since;
    }
  } finally {
    clearTimeout(timer);
  }
}

/** VmRSS of a process, in KiB. */
export async function rssKiB(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? "NaN");
}

/** Opens `n` connections with `open`, `parallel` at a time; returns those that opened. */
export async function openMany<T>(
  n: number,
  open: () => Promise<T>,
  parallel = 16,
): Promise<{ held: T[]; errors: number; firstError?: string }> {
  const held: T[] = [];
  let next = 0, errors = 0;
  let firstError: string | undefined;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < n) {
      next++;
      try {
        held.push(await open());
      } catch (e) {
        errors++;
        firstError ??= (e as Error).message;
      }
    }
  }));
  return { held, errors, firstError };
}

async function settle(pid: number): Promise<number> {
  // Let the proxy finish its work and the collector run a little; take the lower of two reads.
  await new Promise((r) => setTimeout(r, 1500));
  const a = await rssKiB(pid);
  await new Promise((r) => setTimeout(r, 500));
  return Math.min(a, await rssKiB(pid));
}

/** One fresh `sluice serve` per kind, so memory freed by one kind cannot hide the next one's. */
async function measure(n: number, extra: string[]): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "sluice-flood-" });
  const cas = await testCas(dir);
  const up = startTlsUpstream(cas.trusted);
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(
    policy,
    `version: 1
network:
  default: deny
  allow:
    - held.test
    - 127.0.0.1:${up.port}
tls:
  upstream:
    ca: [${cas.trustedPath}]
`,
  );
  const authority = `held.test:${up.port}`;
  const hello = await captureClientHello("held.test");
  type Open = (proxyPort: number, caPem: string) => Promise<Deno.Conn>;
  const kinds: [string, Open][] = [
    ["half-open TLS (CONNECT, ClientHello, silence)", (p) => halfOpenTls(p, authority, hello)],
    ["idle keep-alive (TLS, one request, silence)", async (p, caPem) => {
      const tls = await tlsThroughProxy(p, authority, caPem);
      await writeAll(tls, getRequest(authority));
      await readResponse(tls);
      return tls;
    }],
    ["slow head in a tunnel (TLS, half a head)", async (p, caPem) => {
      const tls = await tlsThroughProxy(p, authority, caPem);
      await writeAll(tls, enc.encode(`GET /echo HTTP/1.1\r\nHost: ${authority}\r\n`));
      return tls;
    }],
    ["silent CONNECT (200, then nothing)", async (p) => (await connectTunnel(p, authority)).conn],
    ["slow plain head (half an absolute-form head)", async (p) => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: p });
      await writeAll(c, enc.encode(`GET http://${authority}/ HTTP/1.1\r\n`));
      return c;
    }],
  ];
  try {
    for (const [kind, open] of kinds) {
      const sluice = await startSluice(policy, dir, ["--resolve", "held.test=127.0.0.1", ...extra]);
      try {
        const caPem = await Deno.readTextFile(sluice.caPath);
        // Warm up: a few of each kind, so certificates, pools and code paths exist first.
        const warm = await tlsThroughProxy(sluice.proxyPort, authority, caPem);
        await writeAll(warm, getRequest(authority));
        await readResponse(warm);
        warm.close();
        for (const c of (await openMany(32, () => open(sluice.proxyPort, caPem))).held) c.close();
        const before = await settle(sluice.pid);
        const started = Date.now();
        const r = await openMany(n, () => open(sluice.proxyPort, caPem));
        const opened = Date.now() - started;
        const after = await settle(sluice.pid);
        console.log(
          `${kind}: held=${r.held.length} errors=${r.errors}${
            r.firstError ? ` (${r.firstError})` : ""
          } opened_in=${opened}ms rss_before=${(before / 1024).toFixed(1)}MiB rss_after=${
            (after / 1024).toFixed(1)
          }MiB per_conn=${((after - before) / Math.max(1, r.held.length)).toFixed(1)}KiB`,
        );
        for (const c of r.held) {
          try {
            c.close();
          } catch { /* closed */ }
        }
      } finally {
        await sluice.stop();
      }
    }
  } finally {
    await up.close();
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  await measure(Number(Deno.args[0] ?? "1000"), Deno.args.slice(1));
}
