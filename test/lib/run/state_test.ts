import { assert, assertEquals } from "../../_assert.ts";
import { runNet } from "../../../lib/run/namespace.ts";
import {
  hostTableName,
  processStart,
  recoverDeadRuns,
  writeMarker,
} from "../../../lib/run/state.ts";

Deno.test("processStart() reads this process's start time, and nothing for a pid that does not exist", async () => {
  assert(/^\d+$/.test((await processStart(Deno.pid)) ?? ""));
  assertEquals(await processStart(2 ** 30), undefined);
});

Deno.test("recoverDeadRuns() cleans up a dead run's marker and temp dir, and leaves a live run alone", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-runstate-t-" });
  try {
    const deadTmp = await Deno.makeTempDir({ dir, prefix: "dead-" });
    const liveTmp = await Deno.makeTempDir({ dir, prefix: "live-" });
    // A pid that cannot exist (above pid_max) is a dead run; this process is a live one.
    const deadPid = 2 ** 30;
    const dead = runNet(deadPid);
    await writeMarker(
      { pid: deadPid, start: "1", net: dead, hostTable: hostTableName(dead), tmp: deadTmp },
      dir,
    );
    const live = runNet(Deno.pid);
    await writeMarker(
      {
        pid: Deno.pid,
        start: (await processStart(Deno.pid))!,
        net: live,
        hostTable: hostTableName(live),
        tmp: liveTmp,
      },
      dir,
    );
    const cleaned = await recoverDeadRuns(dir);
    assert(cleaned.includes(dead.ns), `cleaned: ${cleaned}`);
    assert(!cleaned.includes(live.ns));
    const left = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
    assertEquals(left, [`${Deno.pid}.json`, liveTmp.split("/").at(-1)!]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("recoverDeadRuns() treats a reused pid (another start time) as a dead run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-runstate-t-" });
  try {
    const net = runNet(Deno.pid);
    await writeMarker({ pid: Deno.pid, start: "0", net, hostTable: hostTableName(net) }, dir);
    // This process has the pid but started at another time: the marker's run is gone. Its
    // namespace name is this pid's, which no real run uses here.
    assert((await recoverDeadRuns(dir)).includes(net.ns));
    assertEquals((await Array.fromAsync(Deno.readDir(dir))).length, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
