/**
 * One TLS connection with one request, as the test clients in processes of their own make them
 * (_first_wave_client.ts, _reload_client.ts), and the count of how they ended.
 */
import * as tls from "node:tls";

/**
 * Connects to 127.0.0.1:`port` with SNI `name` (node:tls, so the SNI can differ from the
 * address), sends `GET /` and reads until the server ends the connection.
 *
 * @returns the status line of the response; rejects saying why there is none
 */
export function oneRequest(port: number, ca: string, name: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: "127.0.0.1", port, servername: name, ca }, () => {
      socket.write(`GET / HTTP/1.1\r\nHost: ${name}\r\nConnection: close\r\n\r\n`);
    });
    let got = "";
    socket.on("data", (d) => got += d.toString("latin1"));
    socket.on("end", () => got ? resolve(got.split("\r\n")[0]) : reject(new Error("no response")));
    socket.on("error", reject);
  });
}

/** How many requests got an HTTP response, and why the others did not. */
export class Tally {
  answered = 0;
  readonly failures: Record<string, number> = {};

  /** Counts one request's end. Never rejects. */
  async count(request: Promise<string>): Promise<void> {
    let why: string;
    try {
      const status = await request;
      if (status.startsWith("HTTP/1.1 ")) {
        this.answered++;
        return;
      }
      why = status;
    } catch (e) {
      why = String((e as Error)?.message ?? e);
    }
    this.failures[why] = (this.failures[why] ?? 0) + 1;
  }

  /** The line the clients print. */
  toJSON(): { answered: number; failures: Record<string, number> } {
    return { answered: this.answered, failures: this.failures };
  }
}
