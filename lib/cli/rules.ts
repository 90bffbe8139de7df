/**
 * `sluice rules --policy FILE [--apply | --remove]`: the netfilter rules the
 * policy's `enforce` section asks for: printed, applied, or removed.
 *
 * @module
 */
import type { Policy } from "../../policy/types.ts";
import {
  applyRules,
  DEFAULT_REDIRECT,
  detectBackend,
  hostSpec,
  type RedirectPorts,
  removeRules,
  renderRules,
} from "../enforce/host.ts";
import { readPolicyFile } from "../gateway/policy_file.ts";

/** The listener ports the rules redirect to: the policy's, else the defaults. */
export function redirectPorts(policy: Policy): RedirectPorts {
  return {
    https: policy.listen.transparent?.https?.port ?? DEFAULT_REDIRECT.https,
    http: policy.listen.transparent?.http?.port ?? DEFAULT_REDIRECT.http,
    dns: policy.listen.dns?.port ?? DEFAULT_REDIRECT.dns,
    proxy: policy.listen.proxy?.port ?? 3128,
  };
}

/** Runs `sluice rules`; returns the text to print. */
export async function runRules(opts: {
  policy: string;
  apply?: boolean;
  remove?: boolean;
  table?: string;
  backend?: string;
}): Promise<string> {
  if (opts.apply && opts.remove) throw new Error("--apply and --remove exclude each other");
  const { compiled } = await readPolicyFile(opts.policy);
  const policy = compiled.policy;
  const pref = (opts.backend ?? policy.enforce.backend) as Policy["enforce"]["backend"];
  const table = opts.table ?? "sluice";
  // Printing needs no netfilter program: show nft unless iptables was asked for.
  const backend = opts.apply || opts.remove
    ? await detectBackend(pref)
    : pref === "iptables"
    ? "iptables"
    : pref === "none"
    ? "none"
    : "nftables";
  if (opts.remove) {
    await removeRules(table, backend);
    return `removed table ${table} (${backend})`;
  }
  // No `self`: these rules are served by a sluice started elsewhere (its unit), whose uid and
  // cgroup this command cannot know; `serve --enforce` checks its own (docs/enforcement.md).
  const spec = await hostSpec(policy, redirectPorts(policy), { table });
  if (opts.apply) {
    await applyRules(spec, backend);
    return `applied table ${table} (${backend}); remove with: sluice rules --policy ${opts.policy} --remove`;
  }
  return renderRules(spec, backend).trimEnd();
}
