/**
 * Shared fixtures for end-to-end tests: TLS upstreams on loopback with their
 * own test CA, a running `sluice serve` subprocess, and curl.
 */
import { gzipSync } from "node:zlib";
import { type CertificateAuthority, ephemeralCa, mintLeaf } from "../../lib/tls/ca.ts";
import { listenTlsWithResolver, serveHttpOnListener } from "../../lib/tls/deno_internal.ts";

export const ROOT = new URL("../../", import.meta.url).pathname;

/** A deterministic byte pattern, so large bodies can be checked without storing them. */
export function pattern(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + (i >> 8)) & 255;
  return out;
}

/** SHA-256 hex of bytes. */
export async function sha256(data: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A gzip body served by /gzip, compared byte for byte by the tests. */
export const GZIP_BODY: Uint8Array<ArrayBuffer> = new Uint8Array(
  gzipSync(new TextEncoder().encode("compressed ".repeat(5000))),
);

/** What a test upstream received: every request's host, target, headers, and body hash. */
export type Received = {
  host: string;
  target: string;
  headers: Record<string, string>;
  bodySha256?: string;
  body?: string;
};

/** Every request the in-process test upstreams received, newest last. */
export const received: Received[] = [];

/**
 * Handles upstream requests: /echo (the request as JSON, including a text
 * body), /bytes?n=N, /gzip, /upload (returns sha256 of the body), /ws (a
 * WebSocket echo).
 */
async function upstreamHandler(req: Request): Promise<Response> {
  const url = new URL(req.url);
  const headersSeen: Record<string, string> = {};
  req.headers.forEach((v, k) => (headersSeen[k] = v));
  const entry: Received = {
    host: url.host,
    target: url.pathname + url.search,
    headers: headersSeen,
  };
  received.push(entry);
  if (url.pathname === "/ws") {
    // A WebSocket echo: every message comes back as it was, prefixed for text.
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (e) => socket.send(typeof e.data === "string" ? `echo:${e.data}` : e.data);
    return response;
  }
  if (url.pathname === "/gzip") {
    return new Response(GZIP_BODY, {
      headers: { "content-encoding": "gzip", "content-type": "text/plain" },
    });
  }
  if (url.pathname === "/bytes") {
    const n = Number(url.searchParams.get("n") ?? "0");
    // pace=MS waits between 64 KiB chunks: a download that stays in flight for a while.
    const pace = Number(url.searchParams.get("pace") ?? "0");
    const chunk = 1 << 16;
    let sent = 0;
    const whole = pattern(Math.min(n, 4 << 20));
    return new Response(
      new ReadableStream({
        async pull(c) {
          if (sent >= n) return c.close();
          if (pace) await new Promise((r) => setTimeout(r, pace));
          const len = Math.min(chunk, n - sent);
          // Repeat the first 4 MiB of the pattern: a cheap, checkable stream.
          const start = sent % whole.length;
          c.enqueue(start + len <= whole.length ? whole.slice(start, start + len) : pattern(len));
          sent += len;
        },
      }),
      { headers: { "content-length": String(n) } },
    );
  }
  if (url.pathname === "/upload") {
    const body = new Uint8Array(await req.arrayBuffer());
    entry.bodySha256 = await sha256(body);
    return Response.json({ length: body.length, sha256: entry.bodySha256 });
  }
  const body = req.body ? await req.text() : undefined;
  entry.body = body;
  return Response.json({
    method: req.method,
    path: url.pathname + url.search,
    headers: headersSeen,
    host: url.host,
    body,
  });
}

/** A TLS upstream serving several names, each with a leaf from `ca` (default handler: /echo etc.). */
export function startTlsUpstream(
  ca: CertificateAuthority,
  port = 0,
  hostname = "127.0.0.1",
  handler: (req: Request) => Response | Promise<Response> = upstreamHandler,
) {
  const listener = listenTlsWithResolver({
    hostname,
    port,
    alpnProtocols: ["http/1.1"],
    resolver: async (name) => {
      const leaf = await mintLeaf(ca, name || "127.0.0.1");
      return { cert: leaf.certPem, key: leaf.keyPem };
    },
  });
  const served = serveHttpOnListener(
    listener,
    handler,
    () => new Response("error", { status: 500 }),
  );
  return {
    port: (listener.addr as Deno.NetAddr).port,
    close: () => served.shutdown(),
  };
}

/** A plain HTTP upstream. */
export function startPlainUpstream(port = 0) {
  const server = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, upstreamHandler);
  return { port: server.addr.port, close: () => server.shutdown() };
}

/** Two test CAs: one the policy trusts for upstreams, one it does not. */
export async function testCas(dir: string) {
  const trusted = await ephemeralCa();
  const untrusted = await ephemeralCa();
  await Deno.writeTextFile(`${dir}/upstream-ca.crt`, trusted.certPem);
  await Deno.writeTextFile(`${dir}/untrusted-ca.crt`, untrusted.certPem);
  return {
    trusted,
    untrusted,
    trustedPath: `${dir}/upstream-ca.crt`,
    untrustedPath: `${dir}/untrusted-ca.crt`,
  };
}

/** A running `sluice serve` subprocess. */
export type Sluice = {
  proxyPort: number;
  transparentHttpsPort?: number;
  adminPort?: number;
  pid: number;
  caPath: string;
  auditPath: string;
  stderr: () => string;
  audit: () => Promise<Record<string, unknown>[]>;
  stop: (signal?: Deno.Signal) => Promise<number>;
};

/** Starts `sluice serve` and waits for its "serving" line. */
export async function startSluice(
  policyPath: string,
  dir: string,
  extra: string[] = [],
  netns?: string,
  env?: Record<string, string>,
): Promise<Sluice> {
  const auditPath = `${dir}/audit.jsonl`;
  const deno = [Deno.execPath()];
  const command = netns ? ["ip", "netns", "exec", netns, ...deno] : deno;
  const child = new Deno.Command(command[0], {
    args: [
      ...command.slice(1),
      "run",
      "-A",
      `${ROOT}main.ts`,
      "serve",
      "--policy",
      policyPath,
      "--proxy",
      "127.0.0.1:0",
      "--state",
      `${dir}/state`,
      "--audit-log",
      auditPath,
      "--log-format",
      "text",
      ...extra,
    ],
    stdout: "null",
    stderr: "piped",
    env,
  }).spawn();
  let text = "";
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  const ready = (async () => {
    while (!/sluice: serving/.test(text)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`sluice exited before serving:\n${text}`);
      text += value;
    }
  })();
  const timeout = setTimeout(() => child.kill("SIGKILL"), 20_000);
  try {
    await ready;
  } finally {
    clearTimeout(timeout);
  }
  (async () => {
    while (true) {
      const { value, done } = await reader.read().catch(() => ({ value: "", done: true }));
      if (done) break;
      text += value;
    }
  })();
  const proxyPort = Number(/proxy [^;]*:(\d+);/.exec(text)?.[1]);
  const tp = /transparent https [^:]+:(\d+)/.exec(text)?.[1];
  const admin = /admin [^:;]+:(\d+)/.exec(text)?.[1];
  return {
    proxyPort,
    transparentHttpsPort: tp ? Number(tp) : undefined,
    adminPort: admin ? Number(admin) : undefined,
    pid: child.pid,
    caPath: `${dir}/state/ca.crt`,
    auditPath,
    stderr: () => text,
    audit: async () => {
      const raw = await Deno.readTextFile(auditPath).catch(() => "");
      // Whole lines only: a read may catch a batch half on disk (a write larger than a page
      // lands page by page); the partial last line comes whole with the next read, as with
      // `tail -f`.
      return raw.slice(0, raw.lastIndexOf("\n") + 1).split("\n").filter(Boolean)
        .map((l) => JSON.parse(l));
    },
    stop: async (signal: Deno.Signal = "SIGTERM") => {
      try {
        child.kill(signal);
      } catch { /* gone */ }
      return (await child.status).code;
    },
  };
}

/** Runs curl (inside a network namespace when `netns` is given). */
export async function curl(
  args: string[],
  netns?: string,
): Promise<{ code: number; body: Uint8Array; text: string; stderr: string }> {
  const full = ["curl", "-sS", "--max-time", "60", ...args];
  const cmd = netns ? ["ip", "netns", "exec", netns, ...full] : full;
  const out = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    body: out.stdout,
    text: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** Runs a command, failing with its stderr when it fails. */
export async function run(cmd: string[]): Promise<string> {
  const out = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`${cmd.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** Whether tests that need root (namespaces, netfilter) can run. */
export const IS_ROOT: boolean = Deno.uid() === 0;

/** Each credential's placeholder, as `sluice placeholders --format json` prints them. */
export async function placeholders(policy: string, state: string): Promise<Record<string, string>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}main.ts`,
      "placeholders",
      "--policy",
      policy,
      "--state",
      state,
      "--format",
      "json",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/**
 * A network namespace for a test, with `lo` up and a veth pair that gives it a route to the
 * documentation range 192.0.2.0/24 (what transparent tests' clients dial; every such packet is
 * redirected before routing sends it anywhere). Root only. Remove it with `ip netns del`.
 *
 * @param prefix the namespace name's prefix
 * @returns the namespace's name
 */
export async function testNamespace(prefix: string): Promise<string> {
  const ns = `${prefix}-${crypto.randomUUID().slice(0, 8)}`;
  await run(["ip", "netns", "add", ns]);
  try {
    await run(["ip", "-n", ns, "link", "set", "lo", "up"]);
    await run(["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    await run(["ip", "-n", ns, "addr", "add", "192.0.2.1/24", "dev", "v0"]);
    await run(["ip", "-n", ns, "link", "set", "v0", "up"]);
    await run(["ip", "-n", ns, "link", "set", "v1", "up"]);
  } catch (e) {
    await run(["ip", "netns", "del", ns]).catch(() => {});
    throw e;
  }
  return ns;
}

/**
 * Runs a Deno script of test/e2e (inside `netns` when given) and waits for it to print
 * "ready"; what it prints after that is collected in `output()`.
 *
 * @param script the file name in test/e2e
 * @param args its arguments
 * @param netns the network namespace to run it in
 * @returns the process and its output so far
 */
export async function startReady(
  script: string,
  args: string[],
  netns?: string,
): Promise<{ child: Deno.ChildProcess; output: () => string }> {
  const deno = [Deno.execPath(), "run", "-A", `${ROOT}test/e2e/${script}`, ...args];
  const cmd = netns ? ["ip", "netns", "exec", netns, ...deno] : deno;
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("ready")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${script} exited before it was ready:\n${seen}`);
    seen += value;
  }
  (async () => {
    while (true) {
      const { value, done } = await reader.read().catch(() => ({ value: "", done: true }));
      if (done) break;
      seen += value;
    }
  })();
  return { child, output: () => seen };
}
