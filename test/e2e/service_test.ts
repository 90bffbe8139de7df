/**
 * Running sluice as a service: the admin listener, metrics that move with
 * traffic, and reloads that keep the running policy when the new one is bad.
 */
import parsePrometheus from "parse-prometheus-text-format";
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { curl, startPlainUpstream, startSluice } from "./_harness.ts";
import { openWebSocket } from "./_ws_client.ts";

/**
 * Reads one sample through a Prometheus text-format parser (not a regex), so
 * the exposition must be well-formed for the test to pass.
 */
function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  const families = parsePrometheus(text) as {
    name: string;
    metrics: { value?: string; labels?: Record<string, string> }[];
  }[];
  const family = families.find((f) => f.name === name);
  const sample = family?.metrics.find((m) =>
    Object.entries(labels).every(([k, v]) => m.labels?.[k] === v) &&
    Object.keys(m.labels ?? {}).length === Object.keys(labels).length
  );
  return sample?.value === undefined ? 0 : Number(sample.value);
}

async function waitFor(
  cond: () => boolean | Promise<boolean>,
  what: string,
  ms = 5000,
): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

Deno.test("sluice serve: admin endpoints, metrics and reload", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-svc-" });
  const plain = startPlainUpstream();
  const policy = `${dir}/policy.yaml`;
  const write = (allow: string[]) =>
    Deno.writeTextFile(
      policy,
      `version: 1\nnetwork:\n  allow:\n${
        allow.map((a) => `    - ${a}\n`).join("")
      }    - 127.0.0.1:${plain.port}\n`,
    );
  await write(["one.test"]);
  const sluice = await startSluice(policy, dir, [
    "--admin",
    "127.0.0.1:0",
    "--resolve",
    "one.test=127.0.0.1",
    "--resolve",
    "two.test=127.0.0.1",
  ]);
  const admin = `http://127.0.0.1:${sluice.adminPort}`;
  const proxy = [
    "-x",
    `http://127.0.0.1:${sluice.proxyPort}`,
    "-o",
    "/dev/null",
    "-w",
    "%{http_code}",
  ];
  const status = async (host: string) =>
    (await curl([...proxy, `http://${host}:${plain.port}/echo`])).text;
  try {
    await t.step("/healthz answers 200", async () => {
      const r = await fetch(`${admin}/healthz`);
      assertEquals([r.status, await r.text()], [200, "ok\n"]);
    });

    await t.step("/ca.crt serves the public CA certificate only", async () => {
      const pem = await (await fetch(`${admin}/ca.crt`)).text();
      assertEquals(pem, await Deno.readTextFile(sluice.caPath));
      assert(!pem.includes("PRIVATE"));
    });

    await t.step("/metrics counters move with the traffic", async () => {
      const before = await (await fetch(`${admin}/metrics`)).text();
      assertEquals(await status("one.test"), "200");
      assertEquals(await status("two.test"), "403");
      const after = await (await fetch(`${admin}/metrics`)).text();
      const l = { mode: "explicit", verdict: "allow" };
      const d = { mode: "explicit", verdict: "deny" };
      assertEquals(
        metric(after, "sluice_requests_total", l) - metric(before, "sluice_requests_total", l),
        1,
      );
      assertEquals(
        metric(after, "sluice_requests_total", d) - metric(before, "sluice_requests_total", d),
        1,
      );
      assertMatch(after, /# TYPE sluice_request_duration_seconds histogram/);
      assertEquals(metric(after, "sluice_policy_generation"), 1);
      // Memory: the process's RSS from the kernel's view and V8's parts of it.
      const rss = metric(after, "process_resident_memory_bytes");
      const heapUsed = metric(after, "sluice_js_memory_bytes", { kind: "heap_used" });
      const heapTotal = metric(after, "sluice_js_memory_bytes", { kind: "heap_total" });
      assert(
        heapUsed > 1e6 && heapUsed <= heapTotal && heapTotal < rss,
        `${heapUsed} ${heapTotal} ${rss}`,
      );
      assert(metric(after, "sluice_js_memory_bytes", { kind: "external" }) > 0);
    });

    await t.step(
      "a broken policy on SIGHUP is refused and the old one stays in force",
      async () => {
        await Deno.writeTextFile(policy, "version: 1\nnetwork:\n  allow:\n    - a.*.test\n");
        Deno.kill(sluice.pid, "SIGHUP");
        await waitFor(
          () => sluice.stderr().includes("reload (SIGHUP) refused"),
          "the refused reload",
        );
        assertMatch(
          sluice.stderr(),
          /policy\.yaml:4:7: network\.allow\[0\]: "a\.\*\.test": a wildcard may only be/,
        );
        assertEquals(await status("one.test"), "200");
        const m = await (await fetch(`${admin}/metrics`)).text();
        assertEquals(metric(m, "sluice_last_reload_success"), 0);
        assertEquals(metric(m, "sluice_policy_generation"), 1);
      },
    );

    await t.step("a valid policy via POST /reload takes effect", async () => {
      await write(["two.test"]);
      const r = await fetch(`${admin}/reload`, { method: "POST" });
      assertEquals([r.status, await r.text()], [200, "reloaded\n"]);
      assertEquals(await status("two.test"), "200");
      assertEquals(await status("one.test"), "403");
      const m = await (await fetch(`${admin}/metrics`)).text();
      assertEquals(metric(m, "sluice_policy_generation"), 2);
      assertEquals(metric(m, "sluice_last_reload_success"), 1);
    });

    await t.step("POST /reload of a broken policy answers 422 with the errors", async () => {
      await Deno.writeTextFile(policy, "version: 1\nnetwork:\n  allow: [b.com:0]\n");
      const r = await fetch(`${admin}/reload`, { method: "POST" });
      assertEquals(r.status, 422);
      assertMatch(await r.text(), /policy\.yaml:3:11: network\.allow\[0\]: port 0 is out of range/);
      assertEquals(await status("two.test"), "200");
    });
  } finally {
    assertEquals(await sluice.stop(), 0);
    await plain.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sluice serve notifies systemd: READY=1 once listening, RELOADING/READY around reloads, STOPPING=1", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-notify-" });
  const socketPath = `${dir}/notify.sock`;
  const socket = Deno.listenDatagram({ transport: "unixpacket", path: socketPath });
  const messages: string[] = [];
  const reading = (async () => {
    try {
      while (true) {
        const [data] = await socket.receive();
        messages.push(new TextDecoder().decode(data));
      }
    } catch { /* closed */ }
  })();
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(policy, "version: 1\nnetwork:\n  allow: [a.test]\n");
  // NOTIFY_SOCKET goes to this child only: set in this process's environment it
  // reached sluices that other test files spawned meanwhile (--parallel), whose
  // READY=1 lines then miscounted this test's.
  const sluice = await startSluice(policy, dir, [], undefined, { NOTIFY_SOCKET: socketPath });
  try {
    await waitFor(() => messages.some((m) => m.startsWith("READY=1")), "READY=1");
    // The proxy port is accepting by the time READY=1 arrives.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: sluice.proxyPort });
    conn.close();
    Deno.kill(sluice.pid, "SIGHUP");
    await waitFor(() => messages.includes("RELOADING=1"), "RELOADING=1");
    await waitFor(
      () => messages.filter((m) => m.startsWith("READY=1")).length === 2,
      "READY=1 after reload",
    ).catch((e) => {
      throw new Error(`${e.message}\nmessages: ${JSON.stringify(messages)}\n${sluice.stderr()}`);
    });
  } finally {
    assertEquals(await sluice.stop(), 0);
    await waitFor(() => messages.includes("STOPPING=1"), "STOPPING=1");
    socket.close();
    await reading;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sluice serve: a reload keeps an in-flight download, and SIGTERM drains one before exiting", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-drain-" });
  const plain = startPlainUpstream();
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(
    policy,
    `version: 1\nnetwork:\n  allow: [a.test, "127.0.0.1:${plain.port}"]\n`,
  );
  const sluice = await startSluice(policy, dir, [
    "--resolve",
    "a.test=127.0.0.1",
    "--admin",
    "127.0.0.1:0",
  ]);
  const download = (n: number) =>
    curl([
      "-x",
      `http://127.0.0.1:${sluice.proxyPort}`,
      "-o",
      "/dev/null",
      "-w",
      "%{size_download} %{http_code}",
      `http://a.test:${plain.port}/bytes?n=${n}&pace=20`,
    ]);
  let stopped = false;
  try {
    // 10 MB in 64 KiB chunks 20 ms apart: ~3 s in flight, across the reload and the SIGTERM.
    const n = 10_000_000;
    const during = download(n);
    await new Promise((r) => setTimeout(r, 700));
    await Deno.writeTextFile(
      policy,
      `version: 1\nnetwork:\n  allow: [b.test, "127.0.0.1:${plain.port}"]\n`,
    );
    const reload = await fetch(`http://127.0.0.1:${sluice.adminPort}/reload`, { method: "POST" });
    assertEquals(reload.status, 200);
    await reload.body?.cancel();
    assertEquals((await during).text, `${n} 200`);

    await Deno.writeTextFile(
      policy,
      `version: 1\nnetwork:\n  allow: [a.test, "127.0.0.1:${plain.port}"]\n`,
    );
    Deno.kill(sluice.pid, "SIGHUP");
    await waitFor(
      () => sluice.stderr().includes("reloaded") && sluice.stderr().split("reloaded").length > 2,
      "reload",
    );
    const drained = download(n);
    await new Promise((r) => setTimeout(r, 1000));
    const signalled = Date.now();
    const exited = sluice.stop("SIGTERM");
    stopped = true;
    assertEquals((await drained).text, `${n} 200`);
    assert(Date.now() - signalled > 500, "the download must still have been running at SIGTERM");
    assertEquals(await exited, 0);
  } finally {
    if (!stopped) await sluice.stop();
    await plain.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sluice serve: SIGTERM waits for an open WebSocket up to --drain-timeout, then closes it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-ws-drain-" });
  const plain = startPlainUpstream();
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(
    policy,
    `version: 1\nnetwork:\n  allow: [a.test, "127.0.0.1:${plain.port}"]\n`,
  );
  const sluice = await startSluice(policy, dir, [
    "--resolve",
    "a.test=127.0.0.1",
    "--drain-timeout",
    "2",
  ]);
  let stopped = false;
  try {
    const tcp = await Deno.connect({ hostname: "127.0.0.1", port: sluice.proxyPort });
    const ws = await openWebSocket(tcp, `a.test:${plain.port}`, `http://a.test:${plain.port}/ws`);
    assertMatch(ws.head, /^HTTP\/1\.1 101 /);
    await ws.send(0x1, new TextEncoder().encode("before"));
    assertEquals(new TextDecoder().decode((await ws.read()).payload), "echo:before");
    const signalled = Date.now();
    const exited = sluice.stop("SIGTERM");
    stopped = true;
    // The session still works during the drain...
    await new Promise((r) => setTimeout(r, 500));
    await ws.send(0x1, new TextEncoder().encode("during"));
    assertEquals(new TextDecoder().decode((await ws.read()).payload), "echo:during");
    // ...and is closed when the drain timeout is over; sluice then exits cleanly.
    const end = await ws.read().then((f) => `frame ${f.opcode}`, () => "closed");
    const waited = Date.now() - signalled;
    assert(waited >= 1500 && waited < 10_000, `closed after ${waited} ms`);
    assertMatch(end, /^(closed|frame 8)$/);
    ws.close();
    assertEquals(await exited, 0, sluice.stderr());
    // Its audit record was written before the log closed.
    const record = (await sluice.audit()).find((r) => r.path === "/ws" && r.status === 101);
    assert(record, `no audit record for the drained WebSocket:\n${sluice.stderr()}`);
    assertEquals([record.bytes_up, record.bytes_down], [12, 22]);
  } finally {
    if (!stopped) await sluice.stop();
    await plain.close();
    await Deno.remove(dir, { recursive: true });
  }
});
