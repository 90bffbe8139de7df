import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { ROOT } from "./_harness.ts";

async function sluice(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}main.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("sluice ca init, show and export manage a CA whose key is 0600 and never exported", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const state = `${dir}/state`;
    const init = await sluice("ca", "init", "--state", state);
    assertEquals(init.code, 0, init.stderr);
    assertMatch(init.stdout, /^created: .*\/state\/ca\.crt/);
    assertEquals((await Deno.stat(`${state}/ca.key`)).mode! & 0o777, 0o600);
    assertEquals((await Deno.stat(state)).mode! & 0o777, 0o700);

    const again = await sluice("ca", "init", "--state", state);
    assertMatch(again.stdout, /^already present/);

    const show = await sluice("ca", "show", "--state", state);
    assertEquals(show.code, 0, show.stderr);
    const fp = /sha256\s+([0-9A-F:]+)/i.exec(show.stdout)?.[1];
    assert(fp, show.stdout);
    assertMatch(show.stdout, /subject\s+CN=sluice local CA/);

    const exported = await sluice("ca", "export", "--state", state);
    assertMatch(exported.stdout, /^-----BEGIN CERTIFICATE-----/);
    assert(!exported.stdout.includes("PRIVATE KEY"), "export must not contain the key");

    await sluice("ca", "export", "--state", state, "--out", `${dir}/out.crt`);
    const openssl = await new Deno.Command("openssl", {
      args: ["x509", "-in", `${dir}/out.crt`, "-noout", "-fingerprint", "-sha256"],
      stdout: "piped",
    }).output();
    const osslFp = new TextDecoder().decode(openssl.stdout).split("=")[1].trim();
    assertEquals(osslFp.toUpperCase(), fp.toUpperCase());
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sluice ca show explains what to do when there is no CA yet", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = await sluice("ca", "show", "--state", `${dir}/none`);
    assertEquals(r.code, 1);
    assertMatch(r.stderr, /ca\.crt/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

for (const cmd of [["serve"], ["ca", "init"], ["ca", "show"], ["ca", "export"]]) {
  Deno.test(`sluice ${cmd.join(" ")} --help shows an example`, async () => {
    const r = await sluice(...cmd, "--help");
    assertEquals(r.code, 0);
    assertMatch(r.stdout, /Example:\n {2}sluice /);
  });
}
