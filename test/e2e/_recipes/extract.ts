/**
 * Finds every fenced block in README.md and docs/*.md, and every `run:` step of a GitHub
 * Actions workflow shown in one, each with a stable key: the file and the block's first
 * command line (comments and repeated spaces left out, so rewording a comment or realigning
 * the block does not change it).
 *
 * @module
 */
import { parse as parseYaml } from "yaml";

/** One fenced block (or one `run:` step of a workflow block). */
export type Block = {
  /** `README.md` or `docs/NAME.md`. */
  file: string;
  /** 1-based line of the opening fence. */
  line: number;
  /** The fence's info string (`sh`, `console`, `text`, `yaml`, ...), or `actions-run` for a step. */
  lang: string;
  /** The block's text, without the fences. */
  text: string;
  /** `FILE: first command line`, the table's key. */
  key: string;
  /** For a workflow step: its name and env as written. */
  step?: { name?: string; env?: Record<string, string> };
};

const COMMAND_LANGS = new Set(["sh", "bash", "shell", "zsh", ""]);

/** The text with a trailing shell comment removed (quote-aware), spaces collapsed. */
export function withoutComment(line: string): string {
  let quote = "";
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === quote) quote = "";
      else if (c === "\\" && quote === '"') i++;
    } else if (c === "'" || c === '"') quote = c;
    else if (c === "\\") i++;
    else if (c === "#" && (i === 0 || /\s/.test(line[i - 1]))) return tidy(line.slice(0, i));
  }
  return tidy(line);
}

function tidy(s: string): string {
  return s.trim().replace(/\s+/g, " ");
}

/** The first command of a block: what the table is keyed by. */
export function firstCommand(lang: string, text: string): string {
  const lines = text.split("\n");
  if (lang === "console") {
    const l = lines.find((l) => l.startsWith("$ "));
    if (l) return withoutComment(l.slice(2));
  }
  if (COMMAND_LANGS.has(lang) || lang === "actions-run") {
    for (const c of commands(text).map(withoutComment)) if (c) return c;
  }
  return tidy(lines.find((l) => l.trim()) ?? "");
}

/** The commands of a shell block, one per entry, backslash continuations joined. */
export function commands(text: string): string[] {
  const out: string[] = [];
  let cur = "";
  for (const l of text.split("\n")) {
    if (cur || !/^\s*(#|$)/.test(l)) cur += l;
    if (cur.endsWith("\\")) {
      cur = cur.slice(0, -1) + " ";
      continue;
    }
    if (cur) out.push(cur.trim());
    cur = "";
  }
  return out;
}

/** Every fenced block of one markdown text. */
export function fencedBlocks(file: string, markdown: string): Block[] {
  const lines = markdown.split("\n");
  const out: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*([^`\s]*)/.exec(lines[i]);
    if (!open) continue;
    const [, indent, fence, lang] = open;
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      const l = lines[j];
      if (
        l.trim().startsWith(fence[0].repeat(fence.length)) && l.trim().replace(/[`~]/g, "") === ""
      ) {
        break;
      }
      body.push(l.startsWith(indent) ? l.slice(indent.length) : l.trimStart());
    }
    const text = body.join("\n");
    out.push({ file, line: i + 1, lang, text, key: `${file}: ${firstCommand(lang, text)}` });
    i = j;
  }
  return out;
}

type Workflow = {
  jobs?: Record<
    string,
    { steps?: { name?: string; run?: string; env?: Record<string, string> }[] }
  >;
};

/** The `run:` steps of a GitHub Actions workflow block, each a block of its own. */
export function workflowSteps(block: Block): Block[] {
  if (block.lang !== "yaml" && block.lang !== "yml") return [];
  let doc: Workflow;
  try {
    doc = parseYaml(block.text) as Workflow;
  } catch {
    return [];
  }
  if (!doc || typeof doc !== "object" || !doc.jobs) return [];
  const out: Block[] = [];
  for (const job of Object.values(doc.jobs)) {
    for (const step of job.steps ?? []) {
      if (typeof step.run !== "string") continue;
      const text = step.run.replace(/\n$/, "");
      out.push({
        file: block.file,
        line: block.line,
        lang: "actions-run",
        text,
        key: `${block.file}: run: ${firstCommand("actions-run", text)}`,
        step: { name: step.name, env: step.env },
      });
    }
  }
  return out;
}

/** Every block of README.md and docs/*.md under `root`, in file order. */
export async function extractBlocks(root: string): Promise<Block[]> {
  const files = ["README.md"];
  for await (const e of Deno.readDir(`${root}docs`)) {
    if (e.isFile && e.name.endsWith(".md")) files.push(`docs/${e.name}`);
  }
  files.sort((a, b) => a === "README.md" ? -1 : b === "README.md" ? 1 : a.localeCompare(b));
  const out: Block[] = [];
  for (const f of files) {
    for (const b of fencedBlocks(f, await Deno.readTextFile(`${root}${f}`))) {
      out.push(b, ...workflowSteps(b));
    }
  }
  return out;
}
