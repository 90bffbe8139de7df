/**
 * `sluice serve --workers N` end to end: real sluice processes, real sockets on loopback. Every
 * request opens its own connection, so the kernel's SO_REUSEPORT hash spreads them over the
 * workers (40 connections all landing on one of two workers has odds of 2^-39).
 */
import parsePrometheus from "parse-prometheus-text-format";
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import {
  curl,
  type Sluice,
  startPlainUpstream,
  startSluice,
  startTlsUpstream,
  testCas,
} from "./_harness.ts";

const encoder = new TextEncoder();

/** One GET through the explicit proxy on a new connection; returns the status. */
async function viaProxy(proxyPort: number, url: string): Promise<number> {
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port: proxyPort });
  } catch {
    return 0;
  }
  const timer = setTimeout(() => conn.close(), 15_000);
  try {
    const host = new URL(url).host;
    await conn.write(
      encoder.encode(`GET ${url} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`),
    );
    const text = await new Response(conn.readable).text();
    return Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
  } catch {
    return 0;
  } finally {
    clearTimeout(timer);
  }
}

/** `n` requests, `parallel` at a time, each on its own connection; returns their statuses. */
async function many(
  proxyPort: number,
  n: number,
  url: (i: number) => string,
  parallel = 16,
): Promise<number[]> {
  const out: number[] = new Array(n);
  let next = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < n) {
      const i = next++;
      out[i] = await viaProxy(proxyPort, url(i));
    }
  }));
  return out;
}

type Family = { name: string; metrics: { value?: string; labels?: Record<string, string> }[] };

async function scrape(s: Sluice): Promise<{ text: string; families: Family[] }> {
  const text = await (await fetch(`http://127.0.0.1:${s.adminPort}/metrics`)).text();
  return { text, families: parsePrometheus(text) as Family[] };
}

function sample(families: Family[], name: string, labels: Record<string, string>): number {
  const f = families.find((f) => f.name === name);
  const m = f?.metrics.find((m) =>
    Object.entries(labels).every(([k, v]) => m.labels?.[k] === v) &&
    Object.keys(m.labels ?? {}).length === Object.keys(labels).length
  );
  return m?.value === undefined ? 0 : Number(m.value);
}

async function waitFor(cond: () => boolean | Promise<boolean>, what: string, ms = 10_000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Every line of the audit file, each parsed on its own (a torn line fails here). */
/**
 * The audit file's lines, each one JSON object. While sluice writes, a read may catch a batch
 * half on disk (a write larger than a page lands page by page): that last partial line is left
 * for the next read, as `tail -f` would. Once sluice has exited (`ended`), the file must end
 * with a whole line.
 */
async function auditLines(path: string, ended = false): Promise<Record<string, unknown>[]> {
  let raw = await Deno.readTextFile(path);
  if (ended) {
    assert(raw === "" || raw.endsWith("\n"), "the audit file ends in the middle of a line");
  } else raw = raw.slice(0, raw.lastIndexOf("\n") + 1);
  return raw.split("\n").filter((l) => l !== "").map((l, i) => {
    try {
      return JSON.parse(l);
    } catch (e) {
      throw new Error(`audit line ${i + 1} is not one JSON object: ${l.slice(0, 200)}`, {
        cause: e,
      });
    }
  });
}

/** How many Web Worker threads the process runs (Deno names them worker-<n>). */
async function workerThreads(pid: number): Promise<number> {
  let n = 0;
  for await (const task of Deno.readDir(`/proc/${pid}/task`)) {
    const comm = await Deno.readTextFile(`/proc/${pid}/task/${task.name}/comm`).catch(() => "");
    if (/^worker-\d+$/.test(comm.trim())) n++;
  }
  return n;
}

async function requestLines(path: string): Promise<Record<string, unknown>[]> {
  return (await auditLines(path)).filter((l) => l.event === "request");
}

async function setup() {
  const dir = await Deno.makeTempDir({ prefix: "sluice-workers-" });
  const cas = await testCas(dir);
  const up = await startTlsUpstream(cas.trusted);
  const plain = startPlainUpstream();
  const policy = `${dir}/policy.yaml`;
  const write = (opts: { allow: string[]; deny?: string[]; extra?: string }) =>
    Deno.writeTextFile(
      policy,
      `version: 1
network:
  default: deny
  allow:
${opts.allow.map((a) => `    - ${a}\n`).join("")}    - 127.0.0.1:${plain.port}
    - 127.0.0.1:${up.port}
${opts.deny?.length ? `  deny:\n${opts.deny.map((d) => `    - ${d}\n`).join("")}` : ""}tls:
  upstream:
    ca: [${cas.trustedPath}]
${opts.extra ?? ""}`,
    );
  await write({ allow: ["plain.test", "tls.test"] });
  const resolve = ["plain.test", "tls.test"].flatMap((n) => ["--resolve", `${n}=127.0.0.1`]);
  return {
    dir,
    policy,
    write,
    plain,
    up,
    args: (workers: string) => ["--admin", "127.0.0.1:0", "--workers", workers, ...resolve],
    close: async () => {
      await plain.close();
      await up.close();
    },
  };
}

Deno.test("sluice serve --workers 2: one audit stream, summed metrics, reload everywhere, restarts", async (t) => {
  const env = await setup();
  const sluice = await startSluice(
    env.policy,
    env.dir,
    env.args("2"),
    undefined,
    {
      SLUICE_TEST_WORKER_CRASH: "1",
    },
  );
  const plainUrl = (tag: string) => (i: number) =>
    `http://plain.test:${env.plain.port}/echo?${tag}=${i}`;
  let made = 0;
  try {
    assertMatch(sluice.stderr(), /2 workers share the data-path ports/);

    await t.step(
      "many requests over new connections all succeed, one audit line each",
      async () => {
        const statuses = await many(sluice.proxyPort, 300, plainUrl("a"));
        assertEquals(statuses.filter((s) => s !== 200).length, 0, `statuses: ${statuses}`);
        // Intercepted HTTPS too: each worker loaded the CA and mints its own leaves.
        for (let i = 0; i < 6; i++) {
          const r = await curl([
            "-x",
            `http://127.0.0.1:${sluice.proxyPort}`,
            "--cacert",
            sluice.caPath,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            `https://tls.test:${env.up.port}/echo?t=${i}`,
          ]);
          assertEquals(r.text, "200", r.stderr);
        }
        made += 306;
        await waitFor(async () => (await requestLines(sluice.auditPath)).length >= made, "audit");
        const lines = await auditLines(sluice.auditPath);
        const requests = lines.filter((l) => l.event === "request");
        assertEquals(requests.length, made);
        const conns = new Set(requests.map((l) => l.conn));
        assertEquals(conns.size, made, "connection ids repeat across workers");
      },
    );

    await t.step(
      "/metrics sums every worker's counters, labels as one worker prints them",
      async () => {
        const { families, text } = await scrape(sluice);
        assertEquals(
          sample(families, "sluice_requests_total", { mode: "explicit", verdict: "allow" }),
          made,
        );
        // Histograms are summed bucket by bucket, with their count and sum.
        const count = /^sluice_request_duration_seconds_count\{verdict="allow"\} (\d+)$/m
          .exec(text)?.[1];
        assertEquals(Number(count), made);
        const inf = /^sluice_request_duration_seconds_bucket\{le="\+Inf",verdict="allow"\} (\d+)$/m
          .exec(text)?.[1];
        assertEquals(Number(inf), made);
        assertEquals(sample(families, "sluice_policy_generation", {}), 1);
        // Resident memory is one process's: not added up per worker.
        assertEquals(text.match(/^process_resident_memory_bytes /gm)?.length, 1);
      },
    );

    await t.step("a reload takes effect in every worker", async () => {
      await env.write({ allow: ["tls.test"], deny: ["plain.test"] });
      const r = await fetch(`http://127.0.0.1:${sluice.adminPort}/reload`, { method: "POST" });
      assertEquals([r.status, await r.text()], [200, "reloaded\n"]);
      const statuses = await many(sluice.proxyPort, 40, plainUrl("b"), 8);
      assertEquals(statuses, new Array(40).fill(403));
      made += 40;
      const { families } = await scrape(sluice);
      assertEquals(sample(families, "sluice_policy_generation", {}), 2);
      assertEquals(sample(families, "sluice_reloads_total", { result: "ok" }), 1);
    });

    await t.step("a reload one credential file short is refused, in force nowhere", async () => {
      await env.write({
        allow: ["plain.test", "tls.test"],
        extra: `credentials:
  API_KEY:
    from: file:${env.dir}/missing-secret
    hosts: [plain.test]
`,
      });
      const r = await fetch(`http://127.0.0.1:${sluice.adminPort}/reload`, { method: "POST" });
      const body = await r.text();
      assertEquals(r.status, 422, body);
      const statuses = await many(sluice.proxyPort, 40, plainUrl("c"), 8);
      assertEquals(statuses, new Array(40).fill(403), "the refused policy reached a worker");
      made += 40;
      const { families } = await scrape(sluice);
      assertEquals(sample(families, "sluice_policy_generation", {}), 2);
      assertEquals(sample(families, "sluice_last_reload_success", {}), 0);
      await env.write({ allow: ["plain.test", "tls.test"] });
      assertEquals(
        (await fetch(`http://127.0.0.1:${sluice.adminPort}/reload`, {
          method: "POST",
        })).status,
        200,
      );
    });

    await t.step("a worker that dies is restarted; requests keep succeeding", async () => {
      Deno.kill(sluice.pid, "SIGUSR2");
      await waitFor(
        () => /worker 1 restarted/.test(sluice.stderr()),
        "the restart",
      );
      assertMatch(
        sluice.stderr(),
        /sluice: worker 1 exited: .*test crash \(SLUICE_TEST_WORKER_CRASH\); restarting/,
      );
      const statuses = await many(sluice.proxyPort, 40, plainUrl("d"), 8);
      assertEquals(statuses, new Array(40).fill(200));
      // The dead worker's thread is gone, its replacement runs.
      assertEquals(await workerThreads(sluice.pid), 2);
      made += 40;
      // The restarted worker runs the policy in force now, and is counted again.
      const { families } = await scrape(sluice);
      assert(
        sample(families, "sluice_requests_total", { mode: "explicit", verdict: "allow" }) >= 40,
      );
    });

    await t.step("SIGTERM drains every worker before the audit log closes", async () => {
      // Requests in flight while the signal arrives still get their audit line.
      const inflight = many(sluice.proxyPort, 60, plainUrl("e"), 12);
      await new Promise((r) => setTimeout(r, 30));
      const code = await sluice.stop("SIGTERM");
      const statuses = await inflight;
      assertEquals(code, 0);
      const served = statuses.filter((s) => s === 200).length;
      const lines = await auditLines(sluice.auditPath, true);
      const requests = lines.filter((l) => l.event === "request");
      assertEquals(requests.length, made + served);
      assertEquals(new Set(requests.map((l) => l.conn)).size, requests.length);
    });
  } finally {
    await sluice.stop();
    await env.close();
  }
});

Deno.test("sluice serve --workers 2: a reload one worker cannot apply is undone in the others", async () => {
  const env = await setup();
  const sluice = await startSluice(env.policy, env.dir, env.args("2"), undefined, {
    SLUICE_TEST_WORKER_RELOAD_FAIL: "2",
  });
  const url = (i: number) => `http://plain.test:${env.plain.port}/echo?r=${i}`;
  try {
    await env.write({ allow: ["tls.test"], deny: ["plain.test"] });
    const r = await fetch(`http://127.0.0.1:${sluice.adminPort}/reload`, { method: "POST" });
    const body = await r.text();
    assertEquals(r.status, 422, body);
    assertMatch(body, /worker 2: test reload failure/);
    // Worker 1 applied it, then rolled it back: the old policy answers on every connection.
    assertEquals(await many(sluice.proxyPort, 40, url, 8), new Array(40).fill(200));
    const { families } = await scrape(sluice);
    assertEquals(sample(families, "sluice_policy_generation", {}), 1);
    assertEquals(sample(families, "sluice_reloads_total", { result: "failed" }), 1);
    assertMatch(sluice.stderr(), /reload \(POST \/reload\) refused; the running policy stays/);
  } finally {
    await sluice.stop();
    await env.close();
  }
});

Deno.test("sluice serve --workers 1 serves as a single thread, with the same metrics", async () => {
  const env = await setup();
  const series = async (workers: string) => {
    const s = await startSluice(env.policy, env.dir, env.args(workers));
    try {
      const threads = await workerThreads(s.pid);
      const statuses = await many(
        s.proxyPort,
        30,
        (i) => `http://plain.test:${env.plain.port}/?${i}`,
      );
      assertEquals(statuses, new Array(30).fill(200));
      await waitFor(async () => (await requestLines(s.auditPath)).length >= 30, "audit");
      const { families } = await scrape(s);
      return {
        threads,
        stderr: s.stderr(),
        requests: sample(families, "sluice_requests_total", { mode: "explicit", verdict: "allow" }),
        // Every series name and label set, without values.
        keys: families.flatMap((f) =>
          f.metrics.map((m) => `${f.name}${JSON.stringify(m.labels ?? {})}`)
        ).sort(),
      };
    } finally {
      await s.stop();
      await Deno.remove(`${env.dir}/audit.jsonl`).catch(() => {});
    }
  };
  try {
    const one = await series("1");
    assert(!/workers share/.test(one.stderr), one.stderr);
    assertEquals(one.threads, 0, "--workers 1 started a worker thread");
    assertEquals(one.requests, 30);
    const two = await series("2");
    assertMatch(two.stderr, /2 workers share/);
    assertEquals(two.threads, 2);
    assertEquals(two.requests, 30);
    assertEquals(two.keys, one.keys);
  } finally {
    await env.close();
  }
});
