/**
 * A Deno connection as a node:stream Duplex, so node:http2 can speak HTTP/2 over a TLS
 * connection that Deno opened or accepted.
 *
 * Why: sluice's HTTP/2 (both toward clients and toward upstreams) is node:http2, the one
 * HTTP/2 implementation in Deno 2.9.6 that exposes trailers, RST_STREAM and per-stream flow
 * control to JS (Deno's own server cannot send trailers on 2.9.6: docs/data-path.md). Its TLS
 * stays Deno's: the upstream side keeps sluice's dialler (resolver, private guard, trust
 * settings, TCP_NODELAY; lib/upstream/connection.ts), the client side the resolver-backed
 * listener that mints leaves. node:http2 accepts any Duplex as its socket (`createConnection`
 * for a client session, `performServerHandshake` for a server one): measured on 2.9.6,
 * streaming, flow control and trailers work over this adapter.
 *
 * @module
 */

import { Duplex } from "node:stream";
import type { Http2Stream } from "node:http2";

const READ_BUFFER = 64 * 1024;

/** What the adapter needs of a connection: Deno.TcpConn and Deno.TlsConn both fit. */
export type DenoConn = {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
  closeWrite?(): Promise<void>;
};

/**
 * Wraps `conn`: reads are pulled as node:stream asks (so HTTP/2 flow control reaches the
 * socket), writes go out whole before their callback runs, destroying the Duplex closes the
 * connection.
 *
 * @param conn an open connection; the Duplex owns it from now on
 * @returns the Duplex
 */
export function duplexOf(conn: DenoConn): Duplex {
  let reading = false;
  // One read buffer for the connection's life; each read hands node a copy of what arrived
  // (a fresh 64 KiB buffer per read made small HTTP/2 frames cost a large allocation each).
  const buf = new Uint8Array(READ_BUFFER);
  const writeAll = async (chunk: Uint8Array): Promise<void> => {
    let off = 0;
    while (off < chunk.length) off += await conn.write(chunk.subarray(off));
  };
  let closed = false;
  const close = (): void => {
    if (closed) return;
    closed = true;
    try {
      conn.close();
    } catch { /* already closed */ }
  };
  const duplex = new Duplex({
    read() {
      if (reading || closed) return;
      reading = true;
      conn.read(buf).then((n) => {
        reading = false;
        if (n === null) this.push(null);
        else this.push(buf.slice(0, n));
      }, (e) => {
        reading = false;
        if (closed) this.push(null);
        else this.destroy(e);
      });
    },
    write(chunk: Uint8Array, _encoding, callback) {
      writeAll(chunk).then(() => callback(), (e) => callback(e));
    },
    // node:http2 writes a frame at a time (a HEADERS, a DATA, a WINDOW_UPDATE...): what queued
    // up while a write was in progress goes out as one write, one syscall.
    writev(chunks, callback) {
      let total = 0;
      for (const c of chunks) total += (c.chunk as Uint8Array).length;
      const all = new Uint8Array(total);
      let at = 0;
      for (const c of chunks) {
        all.set(c.chunk as Uint8Array, at);
        at += (c.chunk as Uint8Array).length;
      }
      writeAll(all).then(() => callback(), (e) => callback(e));
    },
    final(callback) {
      const half = conn.closeWrite?.();
      if (half === undefined) callback();
      else half.then(() => callback(), () => callback());
    },
    destroy(error, callback) {
      close();
      callback(error);
    },
  });
  return duplex;
}

/**
 * Waits until an HTTP/2 stream whose `write` returned false can take more data (its flow
 * control window opened), or has closed.
 *
 * @param stream the stream
 */
export function drained(stream: Http2Stream): Promise<void> {
  return new Promise((resolve) => {
    const go = (): void => {
      stream.off("drain", go);
      stream.off("close", go);
      resolve();
    };
    stream.on("drain", go);
    stream.on("close", go);
  });
}
