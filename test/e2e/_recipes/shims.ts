/**
 * Stand-ins the documented recipes run with, written into a temp `bin/` put first on PATH.
 * Each is a few lines of sh, says what it stands in for, and refuses anything it does not
 * understand, so a recipe cannot pass by accident through a shim.
 *
 * - `sluice`: the release binary is this source tree run by deno (what compile.sh bakes in).
 * - `sudo`: tests run as root already; the shim does what matters for the recipes, the
 *   environment, as sudo's `env_reset` does: only PATH, TERM, LANG, the variables named by
 *   `--preserve-env=A,B` and those in `$RCP_SUDO_ENV_KEEP` (standing in for a sudoers
 *   `env_keep`) reach the command, with USER=root, LOGNAME=root, SUDO_USER, and HOME set to
 *   root's home (`$RCP_SUDO_HOME`, a stand-in for /root) unless HOME is kept. So a recipe that
 *   forgets `--preserve-env=NPM_TOKEN` fails here as it would on a runner.
 * - `npx`: only `npx -y deno@VERSION ARGS`, run as the local deno when it is that version (the
 *   npm registry is unreachable here).
 *
 * @module
 */

/** Where the stand-ins are and what they run. */
export type Shims = {
  /** `sudo` and `npx`. */
  bin: string;
  /** A directory holding only `sluice`, as if installed (put it on PATH, or not). */
  installed: string;
  /** The "release binary" (the same script as the installed one), for the install step. */
  release: string;
  /** The Node preload, see {@link DNS_PIN}. */
  dnsPin: string;
  /** The deno cache the test runs with (DENO_DIR for anything that runs deno). */
  denoDir: string;
};

function sh(lines: string[]): string {
  return ["#!/bin/sh", ...lines, ""].join("\n");
}

/** The deno cache the test itself uses, so shims run with a warm cache whatever HOME is. */
async function denoDir(): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json"],
    stdout: "piped",
    stderr: "null",
  }).output();
  return (JSON.parse(new TextDecoder().decode(out.stdout)) as { denoDir: string }).denoDir;
}

/**
 * Writes the stand-ins into `dir/bin` and the Node DNS pin into `dir/dns_pin.cjs`.
 *
 * @param dir a temp directory (made world-readable: the recipes drop to another user)
 * @param root the repository (with main.ts and deno.json)
 */
export async function writeShims(dir: string, root: string): Promise<Shims> {
  const bin = `${dir}/bin`;
  const installed = `${dir}/installed`;
  await Deno.mkdir(bin, { recursive: true });
  await Deno.mkdir(installed, { recursive: true });
  await Deno.mkdir(`${dir}/release`, { recursive: true });
  const deno = Deno.execPath();
  const cache = await denoDir();
  const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
  const files: Record<string, string> = {
    "release/sluice": sh([
      "# stand-in for the sluice release binary: this source tree, run by deno",
      `exec env DENO_DIR=${q(cache)} ${q(deno)} run -A --config ${q(`${root}deno.json`)} ${
        q(`${root}main.ts`)
      } "$@"`,
    ]),
    "bin/sudo": sh([
      "# stand-in for sudo (the tests already run as root): env_reset, --preserve-env=LIST, exec",
      'keep="PATH TERM LANG $RCP_SUDO_ENV_KEEP"',
      "while [ $# -gt 0 ]; do",
      '  case "$1" in',
      '    --preserve-env=*) keep="$keep $(printf %s "${1#--preserve-env=}" | tr , " ")"; shift ;;',
      "    --) shift; break ;;",
      '    -*) echo "sudo (test stand-in): option $1 is not supported" >&2; exit 1 ;;',
      "    *) break ;;",
      "  esac",
      "done",
      '[ $# -gt 0 ] || { echo "sudo (test stand-in): no command given" >&2; exit 1; }',
      '[ -n "$RCP_SUDO_HOME" ] || { echo "sudo (test stand-in): RCP_SUDO_HOME (root\'s home) is not set" >&2; exit 1; }',
      "for name in $keep; do",
      '  case "$name" in *[!A-Za-z0-9_]* | [0-9]*) echo "sudo (test stand-in): bad name $name" >&2; exit 1 ;; esac',
      '  eval "isset=\\${$name+x} value=\\${$name-}"',
      '  [ -n "$isset" ] && set -- "$name=$value" "$@"',
      "done",
      "# what sudo sets comes first, so a kept variable (HOME) overrides it",
      'set -- USER=root LOGNAME=root "SUDO_USER=${USER:-root}" "HOME=$RCP_SUDO_HOME" "$@"',
      'exec env -i "$@"',
    ]),
    "bin/npx": sh([
      "# stand-in for `npx -y deno@VERSION ARGS` (the npm registry is unreachable here)",
      '[ "$1" = "-y" ] && shift',
      'case "$1" in',
      "  deno@*) want=${1#deno@}; shift ;;",
      '  *) echo "npx (test stand-in): only npx -y deno@VERSION is supported, got: $*" >&2; exit 1 ;;',
      "esac",
      `have=$(${q(deno)} --version | head -n 1 | cut -d " " -f 2)`,
      '[ "$have" = "$want" ] || { echo "npx (test stand-in): the docs ask for deno@$want, the local deno is $have" >&2; exit 1; }',
      `exec env DENO_DIR=${q(cache)} ${q(deno)} "$@"`,
    ]),
  };
  for (const [name, text] of Object.entries(files)) {
    await Deno.writeTextFile(`${dir}/${name}`, text, { mode: 0o755 });
  }
  await Deno.copyFile(`${dir}/release/sluice`, `${installed}/sluice`);
  const dnsPin = `${dir}/dns_pin.cjs`;
  await Deno.writeTextFile(dnsPin, DNS_PIN, { mode: 0o644 });
  return { bin, installed, release: `${dir}/release/sluice`, dnsPin, denoDir: cache };
}

/**
 * Preloaded into Node (`NODE_OPTIONS=--require=dns_pin.cjs`) for the npm recipes: answers the
 * names in RCP_DNS_PIN ("name=ip,name=ip") itself, like curl's `--resolve`; every other name
 * goes to the system.
 *
 * Why: inside `sluice run`'s namespace, sluice's DNS answers what sluice's own `--resolve`
 * says, the loopback stand-in. A namespace cannot DNAT a connection to its own loopback out to
 * sluice (the source stays 127.0.0.1, which the host drops as martian), so npm is handed a
 * documentation address instead: every TCP 443 leaving the namespace goes to sluice anyway,
 * and sluice resolves the name itself (to the stand-in) and checks it against the policy.
 */
const DNS_PIN = `"use strict";
const dns = require("node:dns");
const pins = new Map((process.env.RCP_DNS_PIN || "").split(",").filter(Boolean).map((p) => p.split("=")));
const lookup = dns.lookup;
dns.lookup = function (hostname, options, callback) {
  if (typeof options === "function") [options, callback] = [{}, options];
  const ip = pins.get(String(hostname).toLowerCase());
  if (!ip) return lookup.call(this, hostname, options, callback);
  const opts = typeof options === "number" ? { family: options } : options || {};
  if (opts.family === 6) {
    const e = Object.assign(new Error("ENOTFOUND " + hostname), { code: "ENOTFOUND" });
    return process.nextTick(callback, e);
  }
  if (opts.all) return process.nextTick(callback, null, [{ address: ip, family: 4 }]);
  process.nextTick(callback, null, ip, 4);
};
`;

/** Accounts that exist only for the recipes, and how to run a script where they exist. */
export type Accounts = {
  /** Name to uid. */
  uids: Record<string, number>;
  /**
   * Prefix for a script's shell: a private mount namespace where /etc/passwd and /etc/group
   * are copies with these accounts added (bind-mounted), so `--user NAME` and `getent` find
   * them while the host's files stay untouched. `sluice run`'s namespace inherits the mounts.
   */
  shell(shell: string[]): string[];
};

/**
 * Adds users (each with its own group and a home it owns) to copies of /etc/passwd and
 * /etc/group in `dir`, with uids from 64101 up that the host does not use.
 *
 * @param users name and home directory (created, chowned to the user) of each account
 */
export async function writeAccounts(
  dir: string,
  users: { name: string; home: string }[],
): Promise<Accounts> {
  const passwd = await Deno.readTextFile("/etc/passwd");
  const group = await Deno.readTextFile("/etc/group");
  const taken = new Set(
    [...passwd.split("\n"), ...group.split("\n")].map((l) => Number(l.split(":")[2])),
  );
  const uids: Record<string, number> = {};
  let next = 64101;
  const pw: string[] = [], gr: string[] = [];
  for (const u of users) {
    assertFree(u.name, passwd, group);
    while (taken.has(next)) next++;
    uids[u.name] = next;
    pw.push(`${u.name}:x:${next}:${next}:sluice docs recipe:${u.home}:/bin/sh`);
    gr.push(`${u.name}:x:${next}:`);
    await Deno.mkdir(u.home, { recursive: true });
    await Deno.chown(u.home, next, next);
    next++;
  }
  const paths = { passwd: `${dir}/passwd`, group: `${dir}/group` };
  await Deno.writeTextFile(paths.passwd, `${passwd.trimEnd()}\n${pw.join("\n")}\n`, {
    mode: 0o644,
  });
  await Deno.writeTextFile(paths.group, `${group.trimEnd()}\n${gr.join("\n")}\n`, { mode: 0o644 });
  return {
    uids,
    shell: (shell) => [
      "unshare",
      "--mount",
      "--propagation",
      "private",
      "sh",
      "-c",
      'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && exec "$@"',
      "accounts",
      paths.passwd,
      paths.group,
      ...shell,
    ],
  };
}

function assertFree(name: string, passwd: string, group: string): void {
  if (passwd.split("\n").some((l) => l.startsWith(`${name}:`))) {
    throw new Error(`user ${name} already exists on this host; the recipes need their own`);
  }
  if (group.split("\n").some((l) => l.startsWith(`${name}:`))) {
    throw new Error(`group ${name} already exists on this host; the recipes need their own`);
  }
}
