/**
 * packaging/: the systemd unit passes `systemd-analyze verify`, and
 * install.sh stages the binary, unit, docs and an example policy, keeping an
 * existing policy when run again.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { ROOT, run } from "./_harness.ts";

Deno.test("packaging/sluice.service passes systemd-analyze verify and is hardened", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // verify checks that ExecStart exists: point it at a stand-in binary.
    await Deno.writeTextFile(`${dir}/sluice`, "#!/bin/sh\necho sluice 0.0.0\n", { mode: 0o755 });
    const unit = (await Deno.readTextFile(`${ROOT}packaging/sluice.service`)).replaceAll(
      "/usr/local/bin/sluice",
      `${dir}/sluice`,
    );
    await Deno.writeTextFile(`${dir}/sluice.service`, unit);
    const out = await new Deno.Command("systemd-analyze", {
      args: ["verify", `${dir}/sluice.service`],
      stderr: "piped",
    }).output();
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    for (
      const line of [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=sluice",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "SystemCallFilter=@system-service",
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
      ]
    ) assert(unit.includes(`\n${line}\n`), `the unit lacks ${line}`);
    assertMatch(unit, /\n#LoadCredential=/);
    assertMatch(unit, /\nRestrictAddressFamilies=/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("packaging/install.sh stages everything and is idempotent", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/sluice`, "#!/bin/sh\necho sluice 0.0.0\n", { mode: 0o755 });
    const stage = `${dir}/stage`;
    const install = () =>
      new Deno.Command("bash", {
        args: [`${ROOT}packaging/install.sh`, `${dir}/sluice`],
        env: { DESTDIR: stage },
        stdout: "piped",
      }).output();
    const first = await install();
    assert(first.success);
    assertMatch(new TextDecoder().decode(first.stdout), /installed an example policy/);
    await Deno.writeTextFile(`${stage}/etc/sluice/policy.yaml`, "# mine\n");
    const second = await install();
    assertMatch(new TextDecoder().decode(second.stdout), /kept your existing/);
    assertEquals(await Deno.readTextFile(`${stage}/etc/sluice/policy.yaml`), "# mine\n");
    const files = (await run(["find", stage, "-type", "f"])).trim().split("\n").map((f) =>
      f.slice(stage.length)
    ).sort();
    assertEquals(files, [
      "/etc/sluice/policy.yaml",
      "/etc/systemd/system/sluice.service",
      "/usr/local/bin/sluice",
      "/usr/local/share/doc/sluice/README.md",
    ]);
    assertEquals((await Deno.stat(`${stage}/etc/sluice`)).mode! & 0o777, 0o750);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
