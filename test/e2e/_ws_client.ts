/**
 * A minimal WebSocket client for the e2e tests, with its own RFC 6455 framing (not
 * lib/exchange/websocket/), so a bug shared with sluice cannot hide: the opening handshake, masked
 * frames out, frames read back.
 *
 * As a program, for clients inside a test namespace (transparent mode):
 * `deno run -A _ws_client.ts ADDRESS PORT NAME CA_FILE PATH` connects to ADDRESS:PORT, speaks TLS
 * for NAME trusting CA_FILE, sends "hello" and prints `{"status": "...", "reply": "..."}`.
 */

export type Frame = { opcode: number; payload: Uint8Array };

/** A WebSocket opened over `conn`; `head` is the server's answer to the upgrade. */
export type WebSocketClient = {
  head: string;
  send(opcode: number, payload: Uint8Array): Promise<void>;
  read(): Promise<Frame>;
  close(): void;
};

const enc = new TextEncoder();

/** Reads from a connection with a buffer, for heads and frames alike. */
class Reader {
  buf = new Uint8Array(0);
  constructor(readonly conn: Deno.Conn) {}

  async more(): Promise<void> {
    const chunk = new Uint8Array(65536);
    const n = await this.conn.read(chunk);
    if (n === null) throw new Error("connection closed");
    const next = new Uint8Array(this.buf.length + n);
    next.set(this.buf);
    next.set(chunk.subarray(0, n), this.buf.length);
    this.buf = next;
  }

  async head(): Promise<string> {
    while (true) {
      const end = new TextDecoder().decode(this.buf).indexOf("\r\n\r\n");
      if (end >= 0) {
        const head = new TextDecoder().decode(this.buf.subarray(0, end));
        this.buf = this.buf.slice(end + 4);
        return head;
      }
      await this.more();
    }
  }
}

/** Sends the upgrade request for `path` on `conn` (already TLS) and returns the client. */
export async function openWebSocket(
  conn: Deno.Conn,
  authority: string,
  path: string,
): Promise<WebSocketClient> {
  const reader = new Reader(conn);
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  await writeAll(
    conn,
    enc.encode(
      `GET ${path} HTTP/1.1\r\nHost: ${authority}\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    ),
  );
  const head = await reader.head();
  return {
    head,
    async send(opcode: number, payload: Uint8Array): Promise<void> {
      const n = payload.length;
      const len = n < 126 ? [n] : n < 65536 ? [126, n >> 8, n & 255] : [
        127,
        0,
        0,
        0,
        0,
        (n >>> 24) & 255,
        (n >> 16) & 255,
        (n >> 8) & 255,
        n & 255,
      ];
      const mask = crypto.getRandomValues(new Uint8Array(4));
      const frame = new Uint8Array(2 + len.length - 1 + 4 + n);
      frame.set([0x80 | opcode, 0x80 | len[0], ...len.slice(1)]);
      frame.set(mask, len.length + 1);
      const start = len.length + 5;
      for (let i = 0; i < n; i++) frame[start + i] = payload[i] ^ mask[i & 3];
      await writeAll(conn, frame);
    },
    async read(): Promise<Frame> {
      while (reader.buf.length < 2) await reader.more();
      let len = reader.buf[1] & 0x7f;
      let at = 2;
      if (len === 126) {
        while (reader.buf.length < 4) await reader.more();
        len = (reader.buf[2] << 8) | reader.buf[3];
        at = 4;
      } else if (len === 127) {
        while (reader.buf.length < 10) await reader.more();
        const b = reader.buf;
        len = Number(new DataView(b.buffer, b.byteOffset + 2, 8).getBigUint64(0));
        at = 10;
      }
      while (reader.buf.length < at + len) await reader.more();
      const frame = { opcode: reader.buf[0] & 0x0f, payload: reader.buf.slice(at, at + len) };
      reader.buf = reader.buf.slice(at + len);
      return frame;
    },
    close(): void {
      try {
        conn.close();
      } catch { /* already closed */ }
    },
  };
}

/** CONNECT through sluice's explicit proxy, TLS against its CA, then the upgrade. */
export async function websocketThroughProxy(
  proxyPort: number,
  authority: string,
  caPem: string,
  path = "/ws",
): Promise<WebSocketClient> {
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port: proxyPort });
  await writeAll(tcp, enc.encode(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`));
  const connected = await new Reader(tcp).head();
  if (!/^HTTP\/1\.1 200/.test(connected)) throw new Error(`CONNECT refused: ${connected}`);
  const tls = await Deno.startTls(tcp, { hostname: authority.split(":")[0], caCerts: [caPem] });
  return await openWebSocket(tls, authority, path);
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

if (import.meta.main) {
  const [address, port, name, caFile, path] = Deno.args;
  const tcp = await Deno.connect({ hostname: address, port: Number(port) });
  const tls = await Deno.startTls(tcp, {
    hostname: name,
    caCerts: [await Deno.readTextFile(caFile)],
  });
  const ws = await openWebSocket(tls, name, path);
  const status = ws.head.split("\r\n")[0];
  let reply: string | null = null;
  if (/ 101 /.test(status)) {
    await ws.send(0x1, enc.encode("hello"));
    reply = new TextDecoder().decode((await ws.read()).payload);
    await ws.send(0x8, new Uint8Array([0x03, 0xe8]));
    await ws.read(); // the close answer
  }
  ws.close();
  console.log(JSON.stringify({ status, reply }));
}
