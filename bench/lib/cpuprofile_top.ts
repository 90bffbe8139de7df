/**
 * Summarizes V8 .cpuprofile files (from `deno run --cpu-prof`): self time aggregated by
 * function (name + file:line) and by module (file), as a share of the sampled time.
 * Used by bench/peers.sh PROFILE=1 and for docs/performance.md.
 *
 *   deno run --allow-read cpuprofile_top.ts FILE.cpuprofile [TOP]
 *
 * @module
 */

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [file, topArg = "25"] = Deno.args;
if (!file) {
  console.error("usage: cpuprofile_top.ts FILE.cpuprofile [TOP]");
  Deno.exit(2);
}
const top = Number(topArg);
const profile = JSON.parse(Deno.readTextFileSync(file)) as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));

/** Shortens a URL to something readable: repo-relative for sluice, package@version for npm. */
function shortUrl(url: string): string {
  if (!url) return "(native/V8)";
  const npm = url.match(
    /node_modules\/(?:\.deno\/)?([^/]+)\/node_modules\/((?:@[^/]+\/)?[^/]+)\/(.*)$/,
  );
  if (npm) return `npm:${npm[2]}/${npm[3]}`;
  const repo = url.match(/\/work\/main\/(.*)$/);
  if (repo) return repo[1];
  return url.replace(/^file:\/\//, "");
}

// Self time: each sample's delta belongs to the node that was on top of the stack.
const fnTime = new Map<string, number>();
const modTime = new Map<string, number>();
let total = 0;
for (let i = 0; i < profile.samples.length; i++) {
  const node = byId.get(profile.samples[i]);
  const dt = profile.timeDeltas[i] ?? 0;
  if (!node) continue;
  total += dt;
  const { functionName, url, lineNumber } = node.callFrame;
  const mod = shortUrl(url);
  const fn = `${functionName || "(anonymous)"}  ${mod}${url ? `:${lineNumber + 1}` : ""}`;
  fnTime.set(fn, (fnTime.get(fn) ?? 0) + dt);
  modTime.set(mod, (modTime.get(mod) ?? 0) + dt);
}

function print(title: string, m: Map<string, number>): void {
  console.log(`\n${title}`);
  console.log("| self % | self ms | where |\n|---:|---:|---|");
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`| ${(100 * v / total).toFixed(1)} | ${(v / 1000).toFixed(0)} | \`${k}\` |`);
  }
}

console.log(`${file}: ${(total / 1e6).toFixed(1)} s sampled, ${profile.samples.length} samples`);
print("Self time by function", fnTime);
print("Self time by module", modTime);
