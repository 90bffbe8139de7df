/**
 * Pins the socket tricks behind lib/tls/sockopt.ts: TCP_NODELAY through the listener, the fd symbol,
 * and SO_ORIGINAL_DST in a throwaway network namespace (root only).
 */
import assert from "node:assert/strict";
import { connFd, findSocketFd, originalDst, setListenerNoDelay } from "../../../lib/tls/sockopt.ts";
import { listenTlsWithResolver, serveHttpOnListener } from "../../../lib/tls/deno_internal.ts";

// An independent libc handle, so the check does not trust the code under test to read back
// what it set.
const testLibc = Deno.dlopen("libc.so.6", {
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
});
globalThis.addEventListener("unload", () => testLibc.close());

function tcpNoDelay(fd: number): number {
  const value = new Int32Array(1);
  const len = new Uint32Array([4]);
  const rc = testLibc.symbols.getsockopt(fd, 6, /* IPPROTO_TCP */ 1, /* TCP_NODELAY */ value, len);
  assert.equal(rc, 0, `getsockopt(${fd}, TCP_NODELAY) failed`);
  return value[0];
}

async function run(cmd: string, args: string[], stdin?: string): Promise<Deno.CommandOutput> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  return await child.output();
}

async function mustRun(cmd: string, args: string[], stdin?: string): Promise<string> {
  const out = await run(cmd, args, stdin);
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

/** A throwaway CA-signed leaf for "a.test", made with openssl. */
async function makeLeaf(dir: string): Promise<{ caFile: string; cert: string; key: string }> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await mustRun("openssl", [
    "req",
    "-x509",
    ...ec,
    "-keyout",
    `${dir}/ca.key`,
    "-out",
    `${dir}/ca.pem`,
    "-days",
    "1",
    "-subj",
    "/CN=sluice sockopt test CA",
  ]);
  await mustRun("openssl", [
    "req",
    ...ec,
    "-keyout",
    `${dir}/leaf.key`,
    "-out",
    `${dir}/leaf.csr`,
    "-subj",
    "/CN=a.test",
  ]);
  await Deno.writeTextFile(`${dir}/leaf.ext`, "subjectAltName=DNS:a.test\n");
  await mustRun("openssl", [
    "x509",
    "-req",
    "-in",
    `${dir}/leaf.csr`,
    "-CA",
    `${dir}/ca.pem`,
    "-CAkey",
    `${dir}/ca.key`,
    "-CAcreateserial",
    "-out",
    `${dir}/leaf.pem`,
    "-days",
    "1",
    "-extfile",
    `${dir}/leaf.ext`,
  ]);
  return {
    caFile: `${dir}/ca.pem`,
    cert: await Deno.readTextFile(`${dir}/leaf.pem`),
    key: await Deno.readTextFile(`${dir}/leaf.key`),
  };
}

// ---------------------------------------------------------------------------------------------

Deno.test("setListenerNoDelay() makes accepted TLS connections have TCP_NODELAY", async () => {
  const cases = [
    { name: "without the call (control)", set: false, want: 0 },
    { name: "with the call", set: true, want: 1 },
  ];
  for (const c of cases) {
    // No handshake happens: accept() of a TLS listener returns before any TLS byte.
    const listener = listenTlsWithResolver({
      hostname: "127.0.0.1",
      port: 0,
      resolver: () => {
        throw new Error("no handshake expected");
      },
    });
    try {
      if (c.set) assert.equal(setListenerNoDelay(listener), true, c.name);
      const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
      const accepted = await listener.accept();
      try {
        const fd = findSocketFd(accepted.localAddr, accepted.remoteAddr);
        assert(fd !== undefined, `${c.name}: accepted socket not found in /proc`);
        assert.equal(tcpNoDelay(fd), c.want, c.name);
      } finally {
        accepted.close();
        client.close();
      }
    } finally {
      listener.close();
    }
  }
});

Deno.test("setListenerNoDelay() reaches every listener sharing the port (SO_REUSEPORT)", async () => {
  // Two listeners on one port, as workers (or a listener and its replacement) have: the kernel
  // spreads connections over both, and every accepted one must have TCP_NODELAY.
  const first = Deno.listen({ hostname: "127.0.0.1", port: 0, reusePort: true });
  const port = (first.addr as Deno.NetAddr).port;
  const second = Deno.listen({ hostname: "127.0.0.1", port, reusePort: true });
  try {
    assert.equal(setListenerNoDelay(second), true);
    const accepted: Deno.Conn[] = [];
    const from = new Set<Deno.Listener>();
    const take = (l: Deno.Listener) =>
      (async () => {
        for await (const c of l) {
          accepted.push(c);
          from.add(l);
        }
      })().catch(() => {});
    take(first);
    take(second);
    const clients: Deno.Conn[] = [];
    for (let i = 0; i < 24 && from.size < 2; i++) {
      clients.push(await Deno.connect({ hostname: "127.0.0.1", port }));
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal(from.size, 2, "the kernel never picked one of the listeners");
    for (const c of accepted) {
      const fd = findSocketFd(c.localAddr as Deno.NetAddr, c.remoteAddr as Deno.NetAddr);
      assert(fd !== undefined);
      assert.equal(tcpNoDelay(fd), 1, `accepted from ${JSON.stringify(c.remoteAddr)}`);
    }
    for (const c of [...accepted, ...clients]) c.close();
  } finally {
    first.close();
    second.close();
  }
});

Deno.test("setListenerNoDelay() finds IPv4 and IPv6 listeners, and reports a closed one", () => {
  const cases: { name: string; hostname: string; close: boolean; want: boolean }[] = [
    { name: "127.0.0.1", hostname: "127.0.0.1", close: false, want: true },
    { name: "::1", hostname: "::1", close: false, want: true },
    { name: "closed", hostname: "127.0.0.1", close: true, want: false },
  ];
  for (const c of cases) {
    const listener = Deno.listen({ hostname: c.hostname, port: 0 });
    if (c.close) listener.close();
    try {
      assert.equal(setListenerNoDelay(listener), c.want, c.name);
      if (!c.close) {
        const fd = findSocketFd(listener.addr);
        assert(fd !== undefined, c.name);
        assert.equal(tcpNoDelay(fd), 1, c.name);
      }
    } finally {
      if (!c.close) listener.close();
    }
  }
});

Deno.test("setListenerNoDelay() removes the ~40 ms Nagle stall from streamed TLS responses", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-sockopt-" });
  try {
    const leaf = await makeLeaf(dir);
    const body = new Uint8Array(200).fill(0x61);
    const medians: Record<string, number> = {};
    for (const noDelay of [false, true]) {
      const listener = listenTlsWithResolver({
        hostname: "127.0.0.1",
        port: 0,
        resolver: () => leaf,
      });
      if (noDelay) assert.equal(setListenerNoDelay(listener), true);
      const port = listener.addr.port;
      const served = serveHttpOnListener(
        listener,
        () =>
          // The body arrives after a tick, as a proxied upstream body does, so the
          // server writes the head and the body separately.
          new Response(
            new ReadableStream({
              async pull(ctl) {
                await new Promise((r) => setTimeout(r, 0));
                ctl.enqueue(body);
                ctl.close();
              },
            }),
          ),
        (e) => new Response(String(e), { status: 500 }),
      );
      try {
        const url = `https://a.test:${port}/`;
        const args = ["-sS", "--http1.1", "--cacert", leaf.caFile, "--resolve"];
        args.push(`a.test:${port}:127.0.0.1`, "--max-time", "30", "-w", "%{time_total}\\n");
        // 21 requests on one keep-alive connection; the first carries the handshake.
        for (let i = 0; i < 21; i++) args.push(url, "-o", "/dev/null");
        const out = await mustRun("curl", args);
        const times = out.trim().split("\n").map((t) => Number(t) * 1000).slice(1);
        assert.equal(times.length, 20);
        times.sort((a, b) => a - b);
        medians[noDelay ? "with" : "without"] = times[10];
      } finally {
        await served.shutdown();
      }
    }
    console.log(
      `median per keep-alive request: without TCP_NODELAY ${medians.without.toFixed(1)} ms, ` +
        `with ${medians.with.toFixed(1)} ms`,
    );
    // The stall is a delayed ACK (~40 ms); 15 ms leaves room for a loaded 2-core machine.
    assert(medians.with < 15, `median ${medians.with} ms with TCP_NODELAY`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("connFd() reads the fd of an accepted TcpConn and agrees with /proc", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const accepted = await listener.accept();
  try {
    const fd = connFd(accepted);
    assert(fd !== undefined, "Deno 2.9.6 exposes Symbol(Deno.internal.fd) on accepted TcpConns");
    assert.equal(fd, findSocketFd(accepted.localAddr, accepted.remoteAddr));
    // Deno 2.9.6 leaves it undefined for Deno.connect; findSocketFd is the way there.
    assert.equal(connFd(client), undefined);
    assert(findSocketFd(client.localAddr, client.remoteAddr) !== undefined);
  } finally {
    accepted.close();
    client.close();
    listener.close();
  }
});

Deno.test("originalDst() returns undefined for a connection that was not redirected", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const accepted = await listener.accept();
  try {
    assert.equal(originalDst(accepted), undefined);
  } finally {
    accepted.close();
    client.close();
    listener.close();
  }
});

// ---------------------------------------------------------------------------------------------
// SO_ORIGINAL_DST through a real nft REDIRECT, inside a namespace this test creates and deletes.

/** Runs in the namespace: listen, dial the redirected port, print what originalDst() says. */
const PROBE = `
import { originalDst } from ${
  JSON.stringify(new URL("../../../lib/tls/sockopt.ts", import.meta.url).href)
};
const [listenHost, listenPort, dialHost, dialPort] = Deno.args;
const listener = Deno.listen({ hostname: listenHost, port: Number(listenPort) });
const dial = async (hostname, port) => {
  const client = await Deno.connect({ hostname, port });
  const accepted = await listener.accept();
  const result = originalDst(accepted) ?? null;
  accepted.close();
  client.close();
  return result;
};
const redirected = await dial(dialHost, Number(dialPort));
const direct = await dial(listenHost === "::" ? "::1" : listenHost, Number(listenPort));
listener.close();
console.log(JSON.stringify({ redirected, direct }));
`;

const REDIRECT_FROM = 4001;
const REDIRECT_TO = 5001;

Deno.test({
  name: "originalDst() returns the address a netfilter REDIRECT rewrote (IPv4, IPv6, dual-stack)",
  ignore: Deno.uid() !== 0,
  async fn() {
    const ns = `sluice-t-${crypto.randomUUID().slice(0, 8)}`;
    const dir = await Deno.makeTempDir({ prefix: "sluice-sockopt-ns-" });
    await mustRun("ip", ["netns", "add", ns]);
    try {
      await mustRun("ip", ["-n", ns, "link", "set", "lo", "up"]);
      await mustRun("ip", ["-n", ns, "-6", "addr", "add", "fd00::1/128", "dev", "lo", "nodad"]);
      // Fresh namespace: the fixed ports cannot collide with anything.
      const rule = `tcp dport ${REDIRECT_FROM} redirect to :${REDIRECT_TO}`;
      await mustRun(
        "ip",
        ["netns", "exec", ns, "nft", "-f", "-"],
        `table ip t { chain out { type nat hook output priority -100; ${rule}; }; }\n` +
          `table ip6 t { chain out { type nat hook output priority -100; ${rule}; }; }\n`,
      );
      await Deno.writeTextFile(`${dir}/probe.js`, PROBE);
      const cases = [
        { name: "IPv4", listen: "127.0.0.1", dial: "127.0.0.2", want: "127.0.0.2" },
        { name: "IPv6", listen: "::1", dial: "fd00::1", want: "fd00::1" },
        { name: "IPv4 on a dual-stack socket", listen: "::", dial: "127.0.0.2", want: "127.0.0.2" },
      ];
      for (const c of cases) {
        const out = await mustRun("ip", [
          "netns",
          "exec",
          ns,
          Deno.execPath(),
          "run",
          "--no-lock",
          "--allow-net",
          "--allow-ffi",
          "--allow-read",
          `${dir}/probe.js`,
          c.listen,
          String(REDIRECT_TO),
          c.dial,
          String(REDIRECT_FROM),
        ]);
        assert.deepEqual(JSON.parse(out), {
          redirected: { hostname: c.want, port: REDIRECT_FROM },
          direct: null,
        }, c.name);
      }
    } finally {
      await mustRun("ip", ["netns", "del", ns]);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
