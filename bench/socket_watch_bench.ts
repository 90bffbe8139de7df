/**
 * Cost of one sweep of lib/tls/socket_watch.ts: `deno bench --allow-all
 * bench/socket_watch_bench.ts`. `Deno.serve` on 127.0.0.1 holds N idle connections opened by a
 * child process (so this process holds only the server side, as sluice would; the kernel's
 * table holds both sides). Scenarios run in order 100, 1,000, 3,000; each one's clients are
 * killed before the next, so the later tables also carry the earlier ones' TIME_WAIT lines, as a
 * busy server's would.
 *
 * Rows: a steady sweep (every fd already known) from each source, sock_diag (one netlink dump
 * filtered by port in the kernel) and /proc (the text table of every TCP socket of the
 * namespace, then one getsockopt per connection); a cold sweep (a new watch: every fd looked up,
 * as for a burst of new connections), with fstat on every fd number or by listing /proc/self/fd
 * and reading the links; and parts alone (reading
 * /proc/net/tcp; TCP_INFO for every fd). The /proc rows grow with every socket of the network
 * namespace (other services, TIME_WAIT), not only the watched ones; `wc -l /proc/net/tcp` says
 * how many there were.
 *
 * Measured on the 2-core VM of /work/shared/PLATFORM.md (kernel 6.18, Deno 2.9.6): see the
 * header of lib/tls/socket_watch.ts.
 *
 * @module
 */
import { SocketWatch, type SocketWatchOptions, tcpInfo } from "../lib/tls/socket_watch.ts";

const server = Deno.serve(
  { hostname: "127.0.0.1", port: 0, onListen() {} },
  () => new Response("ok"),
);
const port = server.addr.port;

/** Opens `n` idle connections to the server from a child process; resolves once all are up. */
async function holdClients(n: number): Promise<Deno.ChildProcess> {
  const code = `
    const held = [];
    for (let i = 0; i < ${n}; i += 100) {
      const batch = [];
      for (let j = i; j < Math.min(${n}, i + 100); j++) {
        batch.push(Deno.connect({ hostname: "127.0.0.1", port: ${port} }));
      }
      held.push(...await Promise.all(batch));
    }
    console.log("ready " + held.length);
    setInterval(() => {}, 1 << 30);
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!out.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`client exited: ${out}`);
    out += value;
  }
  reader.releaseLock();
  if (out.trim() !== `ready ${n}`) throw new Error(`client: ${out.trim()}`);
  // Wait until the server has accepted them all.
  const watch = new SocketWatch();
  while (watch.list(port, "127.0.0.1").length < n) await new Promise((r) => setTimeout(r, 20));
  return child;
}

let held: { n: number; child: Deno.ChildProcess } | undefined;

/** Makes exactly `n` client connections live (killing the previous set). */
async function ensure(n: number): Promise<void> {
  if (held?.n === n) return;
  if (held) {
    held.child.kill("SIGKILL");
    await held.child.status;
    await held.child.stdout.cancel().catch(() => {});
    const watch = new SocketWatch();
    while (watch.list(port, "127.0.0.1").length > 0) {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  held = { n, child: await holdClients(n) };
}

const diag = new SocketWatch({ source: "sock_diag" });
const proc = new SocketWatch({ source: "proc", fdLookup: "links" });

for (const n of [100, 1000, 3000]) {
  const group = `${n} idle connections`;
  const sweep = (watch: SocketWatch) => async (b: Deno.BenchContext) => {
    await ensure(n);
    watch.list(port, "127.0.0.1"); // fds known
    b.start();
    const l = watch.list(port, "127.0.0.1");
    b.end();
    if (l.length !== n) throw new Error(`listed ${l.length}, expected ${n}`);
  };
  Deno.bench(`steady sweep, sock_diag, ${n}`, { group, baseline: true }, sweep(diag));
  Deno.bench(`steady sweep, /proc + getsockopt, ${n}`, { group }, sweep(proc));
  const cold = (opts: SocketWatchOptions) => async (b: Deno.BenchContext) => {
    await ensure(n);
    const w = new SocketWatch(opts);
    b.start();
    const l = w.list(port, "127.0.0.1");
    b.end();
    w.close();
    if (l.length !== n) throw new Error(`listed ${l.length}, expected ${n}`);
  };
  Deno.bench(
    `cold sweep (every fd resolved), sock_diag + fstat, ${n}`,
    { group },
    cold({ source: "sock_diag", fdLookup: "fstat" }),
  );
  Deno.bench(
    `cold sweep (every fd resolved), /proc + links, ${n}`,
    { group },
    cold({ source: "proc", fdLookup: "links" }),
  );
  Deno.bench(`read /proc/net/tcp alone, ${n}`, { group }, async (b) => {
    await ensure(n);
    b.start();
    Deno.readTextFileSync("/proc/net/tcp");
    b.end();
  });
  Deno.bench(`TCP_INFO getsockopt alone for every fd, ${n}`, { group }, async (b) => {
    await ensure(n);
    const fds = diag.list(port, "127.0.0.1").map((s) => s.fd);
    b.start();
    for (const fd of fds) tcpInfo(fd);
    b.end();
  });
}

Deno.bench({
  name: "(teardown)",
  group: "teardown",
  n: 1,
  warmup: 0,
  async fn() {
    if (held) {
      held.child.kill("SIGKILL");
      await held.child.status;
      await held.child.stdout.cancel().catch(() => {});
      held = undefined;
    }
    diag.close();
    await server.shutdown();
  },
});
