/**
 * The outcome model end to end: a passthrough connection whose upstream cannot be reached is an
 * upstream failure of an allowed connection (`upstream-connect`), not a denial with the allow
 * rule's code, and every code the audit log carries is a row of policy/outcomes.ts.
 */
import { assert, assertEquals } from "../_assert.ts";
import { isOutcomeCode } from "../../policy/outcomes.ts";
import { curl, startSluice } from "./_harness.ts";

Deno.test("outcomes: passthrough to an unreachable upstream is upstream-connect, audited as allow", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-outcome-t-" });
  // A port nothing listens on: bind one, note it, close it.
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(
    policy,
    `version: 1\nnetwork:\n  allow: [down.test, "127.0.0.1:${port}"]\ntls:\n  passthrough: [down.test]\n`,
  );
  const sluice = await startSluice(policy, dir, ["--resolve", "down.test=127.0.0.1"]);
  try {
    const r = await curl([
      "-x",
      `http://127.0.0.1:${sluice.proxyPort}`,
      "--connect-timeout",
      "5",
      `https://down.test:${port}/`,
    ]);
    assert(r.code !== 0, "the request cannot succeed");
    let records: Record<string, unknown>[] = [];
    for (let i = 0; i < 50; i++) {
      records = await sluice.audit();
      if (records.some((x) => x.host === "down.test" && x.event === "connection")) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    const rec = records.find((x) => x.host === "down.test" && x.event === "connection");
    assertEquals([rec?.verdict, rec?.code, rec?.tls], ["allow", "upstream-connect", "passthrough"]);
    for (const x of records) assert(isOutcomeCode(String(x.code)), `unknown code ${x.code}`);
  } finally {
    await sluice.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
