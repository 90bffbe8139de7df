/**
 * The single binary. `deno compile` needs a runtime (denort) that these
 * machines cannot download, so the build runs only when DENORT_BIN names
 * one; otherwise the test says so on its output (and .ci/run repeats it),
 * never passing silently as if the binary had been built.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { ROOT } from "./_harness.ts";

const denort = Deno.env.get("DENORT_BIN");
const available = denort !== undefined && (await Deno.stat(denort).then(() => true, () => false));

Deno.test("compile.sh is valid bash and names DENORT_BIN in its failure message", async () => {
  const syntax = await new Deno.Command("bash", { args: ["-n", `${ROOT}compile.sh`] }).output();
  assert(syntax.success, "compile.sh has a syntax error");
  const text = await Deno.readTextFile(`${ROOT}compile.sh`);
  assertMatch(text, /Set DENORT_BIN=/);
  if (!available) {
    console.log(
      "compile: SKIPPED building dist/sluice: DENORT_BIN is not set (deno compile cannot download denort here)",
    );
  }
});

Deno.test({
  name: "compile.sh builds a binary that runs --version, check and a serve round trip",
  ignore: !available,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const out = `${dir}/sluice`;
      const build = await new Deno.Command("bash", {
        args: [`${ROOT}compile.sh`],
        env: { OUT: out },
      }).output();
      assert(build.success, new TextDecoder().decode(build.stderr));
      const version = await new Deno.Command(out, { args: ["--version"], stdout: "piped" })
        .output();
      assertMatch(new TextDecoder().decode(version.stdout), /^sluice \d/);
      const check = await new Deno.Command(out, {
        args: ["check", `${ROOT}examples/quickstart.yaml`],
      }).output();
      assertEquals(check.code, 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
