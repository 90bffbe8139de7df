/**
 * Reading a YAML or JSON policy into nodes that remember where they came from.
 *
 * The validator walks `SourceNode`s instead of plain objects so that every
 * problem can name its `file:line:col`. JSON is parsed by the same YAML parser
 * (YAML 1.2 is a superset of JSON), so both forms report positions the same way.
 *
 * @module
 */
import {
  isAlias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  type Node as YamlNode,
  parseAllDocuments,
} from "yaml";
import type { Loc, PolicyIssue } from "./errors.ts";

/** A parsed value with its location and its path in the document. */
export type SourceNode =
  | { kind: "map"; loc: Loc; path: string; entries: MapEntry[] }
  | { kind: "seq"; loc: Loc; path: string; items: SourceNode[] }
  | { kind: "scalar"; loc: Loc; path: string; value: string | number | boolean | null };

/** One `key: value` pair of a map; `key` keeps its own location for "unknown key" errors. */
export type MapEntry = { key: string; keyLoc: Loc; value: SourceNode };

/** The result of reading a policy text: a root node, or the syntax problems found. */
export type ReadResult = { root?: SourceNode; issues: PolicyIssue[] };

/**
 * Parses policy text (YAML or JSON) into a located tree. Syntax errors,
 * duplicate keys and multiple documents are reported as issues; nothing throws.
 *
 * @param text the file's contents
 * @param file the name used in locations (usually the path as the user gave it)
 */
export function readPolicySource(text: string, file: string): ReadResult {
  const lineCounter = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter, uniqueKeys: true, prettyErrors: false });
  const locAt = (offset: number): Loc => {
    const { line, col } = lineCounter.linePos(offset);
    return { file, line, col };
  };
  const issues: PolicyIssue[] = [];
  const list = Array.isArray(docs) ? docs : [];
  if (list.length === 0) {
    issues.push({
      severity: "error",
      loc: { file, line: 1, col: 1 },
      path: "",
      message: "the policy is empty",
      hint: "start with `version: 1` and a `network:` section (see docs/policy.md)",
    });
    return { issues };
  }
  for (const doc of list) {
    for (const e of doc.errors) {
      issues.push({
        severity: "error",
        loc: locAt(e.pos[0]),
        path: "",
        message: yamlMessage(e.code, e.message),
      });
    }
  }
  if (list.length > 1) {
    const second = list[1];
    issues.push({
      severity: "error",
      loc: locAt(second.range?.[0] ?? 0),
      path: "",
      message: "a policy file holds exactly one YAML document",
      hint: "remove the `---` separator and merge the documents",
    });
  }
  if (issues.length > 0) return { issues };

  const doc = list[0];
  const seen = new Set<YamlNode>();
  const convert = (node: unknown, path: string, fallback: Loc): SourceNode => {
    if (isAlias(node)) {
      const target = node.resolve(doc);
      // An alias to itself (or a cycle through aliases) would recurse forever.
      if (!target || seen.has(target as YamlNode)) {
        return { kind: "scalar", loc: fallback, path, value: null };
      }
      seen.add(target as YamlNode);
      const out = convert(target, path, fallback);
      seen.delete(target as YamlNode);
      return out;
    }
    const range = (node as YamlNode | null)?.range;
    const loc = range ? locAt(range[0]) : fallback;
    if (isMap(node)) {
      const entries: MapEntry[] = [];
      for (const pair of node.items) {
        const keyNode = pair.key;
        const keyLoc = isScalar(keyNode) && keyNode.range ? locAt(keyNode.range[0]) : loc;
        const key = isScalar(keyNode) ? String(keyNode.value) : String(keyNode);
        const childPath = path ? `${path}.${key}` : key;
        entries.push({ key, keyLoc, value: convert(pair.value, childPath, keyLoc) });
      }
      return { kind: "map", loc, path, entries };
    }
    if (isSeq(node)) {
      return {
        kind: "seq",
        loc,
        path,
        items: node.items.map((item, i) => convert(item, `${path}[${i}]`, loc)),
      };
    }
    if (isScalar(node)) {
      const v = node.value;
      const value = typeof v === "string" || typeof v === "number" || typeof v === "boolean"
        ? v
        : v === null || v === undefined
        ? null
        : String(v);
      return { kind: "scalar", loc, path, value };
    }
    return { kind: "scalar", loc, path, value: null };
  };
  return { root: convert(doc.contents, "", { file, line: 1, col: 1 }), issues };
}

function yamlMessage(code: string, message: string): string {
  // The yaml package appends " at line L, column C:" and a source excerpt; we
  // print our own location, so keep only the sentence.
  const first = message.split(/ at line \d+, column \d+/)[0].split("\n")[0];
  return code === "DUPLICATE_KEY"
    ? `${first} (a key, such as a credential name, appears twice)`
    : `YAML syntax: ${first}`;
}
