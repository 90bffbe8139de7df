/**
 * The layout docs are true to the tree: lib/README.md names every folder of lib/ and every
 * module in them (cli/ aside: one file per command), README's Layout names every folder, and a
 * module over 500 lines says in its header why it is one file (lib/README.md promises all three).
 */
import { assert } from "../_assert.ts";

const root = new URL("../../", import.meta.url);
const read = (path: string) => Deno.readTextFile(new URL(path, root));

async function modules(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(new URL(dir, root))) {
    if (e.isDirectory) out.push(...await modules(`${dir}${e.name}/`));
    else if (e.name.endsWith(".ts")) out.push(`${dir}${e.name}`);
  }
  return out.sort();
}

Deno.test("lib/README.md names every folder and module of lib/; README's Layout every folder", async () => {
  const libReadme = await read("lib/README.md");
  const readme = await read("README.md");
  const folders = new Set<string>();
  const missing: string[] = [];
  for (const path of await modules("lib/")) {
    const [, folder] = path.split("/");
    if (folder.endsWith(".ts")) {
      // A module outside the folders (lib/bytes.ts): named in lib/README.md like any other.
      if (!libReadme.includes(`\`${folder}\``)) missing.push(`${path}: not in lib/README.md`);
      continue;
    }
    folders.add(folder);
    if (folder === "cli") continue;
    const name = path.slice(`lib/${folder}/`.length).split("/").at(-1)!;
    if (!libReadme.includes(`\`${name}\``)) missing.push(`${path}: not in lib/README.md`);
  }
  for (const folder of folders) {
    if (!libReadme.includes(`\`${folder}/\``)) missing.push(`lib/${folder}/: not in lib/README.md`);
    if (!readme.includes(`\`${folder}/\``)) missing.push(`lib/${folder}/: not in README's Layout`);
  }
  assert(missing.length === 0, missing.join("\n"));
});

Deno.test("a module of lib/ or policy/ over 500 lines says why it is one file", async () => {
  const silent: string[] = [];
  for (const path of [...await modules("lib/"), ...await modules("policy/")]) {
    const lines = (await read(path)).split("\n");
    if (lines.length <= 500) continue;
    const header = lines.slice(0, 80).join("\n");
    if (!/Why one file|Over 500 lines/.test(header)) silent.push(`${path} (${lines.length} lines)`);
  }
  assert(silent.length === 0, `no reason given in the header:\n${silent.join("\n")}`);
});
