import { assert, assertEquals } from "../_assert.ts";
import { isOutcomeCode, OUTCOMES } from "../../policy/outcomes.ts";

const ROOT = new URL("../../", import.meta.url);

Deno.test("OUTCOMES: docs/audit.md's Codes table is the table", async () => {
  const audit = await Deno.readTextFile(new URL("docs/audit.md", ROOT));
  const section = audit.split("## Codes")[1]?.split("\n## ")[0] ?? "";
  const rows = section.split("\n").filter((l) => /^\| `/.test(l)).map((l) =>
    l.split("|").slice(1, -1).map((c) => c.trim()).join(" | ")
  );
  const expected = Object.entries(OUTCOMES).map(([c, o]) =>
    [
      `\`${c}\``,
      o.verdict,
      `${o.status}${o.otherwise ? ` (else: ${o.otherwise})` : ""}`,
      o.stage,
      o.meaning,
    ].join(" | ")
  );
  assertEquals(
    rows,
    expected,
    "regenerate the Codes table in docs/audit.md from policy/outcomes.ts",
  );
  const field = audit.split("\n").find((l) => l.startsWith("| `code`"));
  assert(field?.includes("[codes](#codes)"), "the `code` field points at the Codes table");
});

Deno.test("OUTCOMES: every code in lib/ and policy/ sources is a row of the table", async () => {
  // Every `code: "x"`, errorResponse(STATUS, "x", …), rawError(…, "x", …) literal in the sources.
  const unknown: string[] = [];
  for (const dir of ["lib", "policy"]) {
    for await (const path of walk(new URL(`${dir}/`, ROOT))) {
      const text = await Deno.readTextFile(path);
      const codes = [
        ...text.matchAll(/\bcode: "([a-z][a-z-]*)"/g),
        ...text.matchAll(/errorResponse\(\s*\d+,\s*"([a-z-]+)"/g),
      ].map((m) => m[1]);
      for (const c of codes) if (!isOutcomeCode(c)) unknown.push(`${path.pathname}: ${c}`);
    }
  }
  assertEquals(unknown, []);
});

Deno.test("OUTCOMES: a denial is 4xx or 503, an upstream failure 502/504, and each has a meaning", () => {
  for (const [code, o] of Object.entries(OUTCOMES)) {
    assert(o.meaning.length > 10, code);
    if (o.stage === "upstream" && code !== "allow-rule") {
      assert(o.status === 502 || o.status === 504, `${code}: ${o.status}`);
    }
    if (o.verdict === "deny") assert(o.status >= 400 && o.status < 500 || o.status === 503, code);
  }
});

async function* walk(dir: URL): AsyncGenerator<URL> {
  for await (const e of Deno.readDir(dir)) {
    const u = new URL(e.name + (e.isDirectory ? "/" : ""), dir);
    if (e.isDirectory) yield* walk(u);
    else if (e.name.endsWith(".ts")) yield u;
  }
}
