import assert from "node:assert/strict";
import { resolveStateDir, StateDirError, SYSTEM_STATE_DIR } from "../../../lib/ops/state_dir.ts";

type Case = {
  name: string;
  flag?: string;
  env: Record<string, string>;
  uid: number | null;
  home?: string;
  want: string;
};

const user = { HOME: "/home/ada" };

const cases: Case[] = [
  {
    name: "takes --state over every variable, even as root",
    flag: "/srv/sluice",
    env: { SLUICE_STATE_DIR: "/a", STATE_DIRECTORY: "/b", XDG_STATE_HOME: "/c", ...user },
    uid: 0,
    want: "/srv/sluice",
  },
  {
    name: "takes $SLUICE_STATE_DIR over $STATE_DIRECTORY",
    env: { SLUICE_STATE_DIR: "/a", STATE_DIRECTORY: "/b", ...user },
    uid: 1000,
    want: "/a",
  },
  {
    name: "takes systemd's $STATE_DIRECTORY over the root default",
    env: { STATE_DIRECTORY: "/var/lib/sluice-prod" },
    uid: 0,
    want: "/var/lib/sluice-prod",
  },
  {
    name: "takes the first entry of a colon-separated $STATE_DIRECTORY",
    env: { STATE_DIRECTORY: "/var/lib/one:/var/lib/two" },
    uid: 0,
    want: "/var/lib/one",
  },
  {
    name: "uses /var/lib/sluice for root without variables",
    env: { HOME: "/root", XDG_STATE_HOME: "/root/.xdg" },
    uid: 0,
    want: SYSTEM_STATE_DIR,
  },
  {
    name: "uses $XDG_STATE_HOME/sluice for a user",
    env: { XDG_STATE_HOME: "/home/ada/.xdg-state", ...user },
    uid: 1000,
    want: "/home/ada/.xdg-state/sluice",
  },
  {
    name: "ignores a relative $XDG_STATE_HOME, as the XDG spec requires",
    env: { XDG_STATE_HOME: "state", ...user },
    uid: 1000,
    want: "/home/ada/.local/state/sluice",
  },
  {
    name: "falls back to ~/.local/state/sluice for a user",
    env: user,
    uid: 1000,
    want: "/home/ada/.local/state/sluice",
  },
  {
    name: "prefers the injected home over $HOME",
    env: user,
    uid: 1000,
    home: "/Users/ada",
    want: "/Users/ada/.local/state/sluice",
  },
  {
    name: "treats a null uid (no uids on this platform) as a user",
    env: user,
    uid: null,
    want: "/home/ada/.local/state/sluice",
  },
  {
    name: "treats empty values as unset",
    flag: "",
    env: { SLUICE_STATE_DIR: "", STATE_DIRECTORY: "", XDG_STATE_HOME: "", ...user },
    uid: 1000,
    want: "/home/ada/.local/state/sluice",
  },
  {
    name: "strips one trailing slash",
    env: { XDG_STATE_HOME: "/x/", HOME: "/h/" },
    uid: 1000,
    want: "/x/sluice",
  },
  {
    name: "keeps a --state of / as is",
    flag: "/",
    env: {},
    uid: 1000,
    want: "/",
  },
];

for (const c of cases) {
  Deno.test(`resolveStateDir() ${c.name}`, () => {
    const got = resolveStateDir({
      flag: c.flag,
      env: (name) => c.env[name],
      uid: c.uid,
      home: c.home,
    });
    assert.equal(got, c.want);
  });
}

Deno.test("resolveStateDir() throws a StateDirError naming the fix when nothing applies", () => {
  assert.throws(
    () => resolveStateDir({ env: () => undefined, uid: 1000 }),
    (e: unknown) =>
      e instanceof StateDirError && e.name === "StateDirError" &&
      e.message.includes("--state DIR") && e.message.includes("SLUICE_STATE_DIR"),
  );
});

Deno.test("resolveStateDir() never reads variables a higher rule made irrelevant", () => {
  const read: string[] = [];
  resolveStateDir({
    env: (name) => {
      read.push(name);
      return name === "SLUICE_STATE_DIR" ? "/a" : "/other";
    },
    uid: 1000,
  });
  assert.deepEqual(read, ["SLUICE_STATE_DIR"]);
});
