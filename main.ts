/**
 * sluice: an egress policy proxy. This file only parses the command line and
 * wires the parts together; every behaviour lives in policy/ or lib/.
 *
 * @module
 */
import { Command, CommanderError } from "commander";
import denoJson from "./deno.json" with { type: "json" };
import { runCheck } from "./lib/cli/check.ts";
import { knownPlaceholders, parseHeaderArgs, runExplain } from "./lib/cli/explain.ts";
import { readPolicyFile } from "./lib/gateway/policy_file.ts";
import { existingCa, formatCa, runCaExport, runCaInit, stateDirFrom } from "./lib/cli/ca.ts";
import { runServe } from "./lib/cli/serve.ts";
import { runPlaceholders } from "./lib/cli/placeholders.ts";
import { runRules } from "./lib/cli/rules.ts";
import { runRun } from "./lib/cli/run.ts";
import { makeLogger, resolveLogFormat } from "./lib/ops/log.ts";

/** Exit codes: 0 ok, 1 invalid input (policy), 2 usage, 3 denied (explain). */
const EXIT_USAGE = 2;

const out = (s: string) => console.log(s);
const err = (s: string) => console.error(s);

function example(...lines: string[]): string {
  return `\nExample:\n${lines.map((l) => `  ${l}`).join("\n")}\n`;
}

function buildProgram(): Command {
  const program = new Command()
    .name("sluice")
    .description(
      "An egress policy proxy: workloads reach only the network their policy allows,\n" +
        "and only ever hold placeholders for credentials.",
    )
    .version(`sluice ${denoJson.version} (deno ${Deno.version.deno})`, "-V, --version")
    .showHelpAfterError("(run with --help for usage)")
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput({
      writeOut: (s) => Deno.stdout.writeSync(new TextEncoder().encode(s)),
      writeErr: (s) => Deno.stderr.writeSync(new TextEncoder().encode(s)),
    });

  program
    .command("check")
    .description("validate policies and print a normalized summary (exit 0 valid, 1 invalid)")
    .argument("<policy...>", "policy files (YAML or JSON)")
    .option("-q, --quiet", "print nothing on success")
    .addHelpText(
      "after",
      example(
        "sluice check examples/ai-agent.yaml",
        "sluice check -q /etc/sluice/policy.yaml && echo valid",
      ),
    )
    .action(async (files: string[], opts: { quiet?: boolean }) => {
      Deno.exitCode = await runCheck(files, opts, out, err);
    });

  program
    .command("explain")
    .description("show what sluice would do with a request, and why (exit 0 allowed, 3 denied)")
    .argument("<request...>", "[METHOD] URL: the method (default GET) and the request URL")
    .requiredOption("-p, --policy <file>", "policy file")
    .option("-H, --header <header>", 'request header "Name: value" (repeatable)', collect, [])
    .option("--json", "print the explanation as JSON")
    .option(
      "--state <dir>",
      "state directory, to recognise derived placeholders (default as serve)",
    )
    .addHelpText(
      "after",
      example(
        "sluice explain --policy examples/ai-agent.yaml https://api.openai.com/v1/models",
        "sluice explain -p ci.yaml PUT https://registry.npmjs.org/pkg -H 'Authorization: Bearer npm-sluice-...'",
      ),
    )
    .action(
      async (
        request: string[],
        opts: { policy: string; header: string[]; json?: boolean; state?: string },
      ) => {
        if (request.length > 2) {
          err(
            `explain takes [METHOD] URL, got ${request.length} arguments; quote a URL with spaces`,
          );
          Deno.exitCode = EXIT_USAGE;
          return;
        }
        const [method, url] = request.length === 1 ? ["GET", request[0]] : [request[0], request[1]];
        const headers = parseHeaderArgs(opts.header);
        if (typeof headers === "string") {
          err(headers);
          Deno.exitCode = EXIT_USAGE;
          return;
        }
        const loaded = await readPolicyFile(opts.policy);
        let stateDir: string | undefined;
        try {
          stateDir = stateDirFrom(opts.state);
        } catch { /* no state directory: fixed placeholders only */ }
        const placeholders = await knownPlaceholders(loaded.compiled, stateDir);
        const [text, code] = runExplain(loaded.compiled, {
          method,
          url,
          headers,
          json: !!opts.json,
        }, placeholders);
        out(text);
        Deno.exitCode = code;
      },
    );

  program
    .command("serve")
    .description(
      "run the proxy: explicit (HTTP_PROXY/CONNECT) and transparent listeners, enforcing the policy",
    )
    .requiredOption("-p, --policy <file>", "policy file")
    .option("--proxy <addr>", "explicit proxy address (default: listen.proxy, else 127.0.0.1:3128)")
    .option(
      "--transparent-https <addr>",
      "transparent TLS listener (default: listen.transparent.https)",
    )
    .option(
      "--transparent-http <addr>",
      "transparent HTTP listener (default: listen.transparent.http)",
    )
    .option(
      "--state <dir>",
      "state directory for the CA (default: $SLUICE_STATE_DIR, $STATE_DIRECTORY, ...)",
    )
    .option("--ephemeral-ca", "use a CA generated in memory, never written to disk")
    .option(
      "--resolve <name=addr>",
      "resolve NAME to ADDR instead of asking DNS (repeatable)",
      collect,
      [],
    )
    .option("--audit-log <target>", "stderr, stdout or a file (default: audit.log from the policy)")
    .option(
      "--admin <addr>",
      "admin listener for /healthz, /metrics, /ca.crt, POST /reload (default: listen.admin)",
    )
    .option("--enforce", "apply the policy's netfilter rules while serving (removed on exit)")
    .option(
      "--data-path <path>",
      "how intercepted transparent HTTPS is served: auto (no loopback hop unless the policy " +
        "passes TLS through), hop, or direct (default: $SLUICE_DATA_PATH, else auto; " +
        "docs/performance.md)",
    )
    .option(
      "--workers <n>",
      "data-path threads sharing each port (SO_REUSEPORT); 1 = a single thread " +
        "(default: $SLUICE_WORKERS, else the number of cores, at most 4; docs/data-path.md)",
    )
    .option(
      "--limit <name=value>",
      "a connection limit or deadline, e.g. per-client=64, head=5s, keep-alive=30s " +
        "(repeatable; names and defaults in docs/data-path.md)",
      collect,
      [],
    )
    .option(
      "--drain-timeout <seconds>",
      "on SIGTERM/SIGINT, how long in-flight requests may finish",
      "30",
    )
    .option(
      "--log-format <format>",
      "operational logs: text, json, or auto (text on a terminal)",
      "auto",
    )
    .addHelpText(
      "after",
      example(
        "sluice serve --policy examples/ai-agent.yaml",
        'HTTPS_PROXY=http://127.0.0.1:3128 curl --cacert "$(sluice ca export --out ca.crt; echo ca.crt)" https://api.openai.com/',
        "sluice serve --policy examples/ai-agent.yaml --workers 2   # two data-path threads",
      ),
    )
    .action(async (opts) => {
      const log = makeLogger(resolveLogFormat(opts.logFormat, Deno.stderr.isTerminal()));
      Deno.exitCode = await runServe({ ...opts, resolve: opts.resolve ?? [] }, log);
    });

  program
    .command("placeholders")
    .description(
      "print each credential's placeholder: what the workload is given instead of the secret",
    )
    .requiredOption("-p, --policy <file>", "policy file")
    .option("--state <dir>", "state directory holding the placeholder key (created on first use)")
    .option("--format <format>", "env (NAME=placeholder lines) or json", "env")
    .addHelpText(
      "after",
      example(
        "sluice placeholders --policy ci.yaml",
        "export $(sluice placeholders --policy ci.yaml)   # the workload's environment",
      ),
    )
    .action(async (opts: { policy: string; state?: string; format?: string }) => {
      out(await runPlaceholders(opts));
    });

  program
    .command("rules")
    .description("print the netfilter rules for the policy's enforce section, or apply/remove them")
    .requiredOption("-p, --policy <file>", "policy file")
    .option("--apply", "load the rules (atomically, replacing sluice's table)")
    .option("--remove", "delete sluice's table (no error if it is absent)")
    .option("--table <name>", "table name", "sluice")
    .option("--backend <backend>", "auto, nftables, iptables or none (default: enforce.backend)")
    .addHelpText(
      "after",
      example(
        "sluice rules --policy examples/host-users.yaml            # print the nftables ruleset",
        "sudo sluice rules --policy examples/host-users.yaml --apply",
      ),
    )
    .action(
      async (
        opts: {
          policy: string;
          apply?: boolean;
          remove?: boolean;
          table?: string;
          backend?: string;
        },
      ) => {
        out(await runRules(opts));
      },
    );

  program
    .command("run")
    .description(
      "run a command whose network is only what the policy allows, with placeholders for secrets",
    )
    .requiredOption("-p, --policy <file>", "policy file")
    .option("--user <user>", "run the command as this user (drops root)")
    .option(
      "--weak",
      "no namespace or rules: only set HTTP(S)_PROXY and CA variables (nothing enforced)",
    )
    .option("-q, --quiet", "no summary at the end")
    .option(
      "--clear-env",
      "give the command only PATH, HOME, USER, LOGNAME, SHELL, TERM, LANG, LANGUAGE, TZ, TMPDIR\n" +
        "(plus --pass-env names, placeholders and CA variables) instead of sluice's environment",
    )
    .option(
      "--pass-env <name>",
      "with --clear-env: also pass this variable (repeatable; never one holding a secret)",
      collect,
      [],
    )
    .option("--state <dir>", "state directory (placeholder key)")
    .option(
      "--data-path <path>",
      "how intercepted transparent HTTPS is served: auto (no loopback hop unless the policy " +
        "passes TLS through), hop, or direct (default: $SLUICE_DATA_PATH, else auto; " +
        "docs/performance.md)",
    )
    .option(
      "--resolve <name=addr>",
      "resolve NAME to ADDR instead of asking DNS (repeatable)",
      collect,
      [],
    )
    .option(
      "--audit-log <target>",
      "stderr, stdout or a file (default: audit.log when it is a file)",
    )
    .argument("<command...>", "the command and its arguments, after --")
    .passThroughOptions()
    .addHelpText(
      "after",
      example(
        "sudo --preserve-env=NPM_TOKEN sluice run --policy examples/ci-npm-publish.yaml --user ci -- npm publish",
        "sluice run --weak --policy examples/ai-agent.yaml -- python agent.py   # not enforced",
      ) +
        "\nThe command's environment is sluice's minus every variable a credential is read from or\n" +
        "that holds a secret value (raw or encoded), plus the placeholders and CA variables.\n" +
        "\nExit status: the command's; 128+N when a signal N killed it; 127 when it was not found;\n" +
        "123 when sluice ended it after a credential violation; 125 when sluice itself failed.\n",
    )
    .action(async (command: string[], opts) => {
      Deno.exitCode = await runRun({ ...opts, resolve: opts.resolve ?? [] }, command, err);
    });

  const ca = program.command("ca").description(
    "manage the local CA that signs interception certificates",
  );
  ca.command("init")
    .description("create the CA in the state directory (key written 0600); keeps an existing one")
    .option("--state <dir>", "state directory")
    .option("--force", "replace an existing CA (clients must trust the new one)")
    .addHelpText("after", example("sluice ca init --state /var/lib/sluice"))
    .action(async (opts: { state?: string; force?: boolean }) => out(await runCaInit(opts)));
  ca.command("show")
    .description("print the CA's subject, SHA-256 fingerprint and validity")
    .option("--state <dir>", "state directory")
    .addHelpText("after", example("sluice ca show"))
    .action(async (opts: { state?: string }) => out(formatCa(await existingCa(opts.state))));
  ca.command("export")
    .description(
      "write the CA's PUBLIC certificate (for trust stores, NODE_EXTRA_CA_CERTS, containers)",
    )
    .option("--state <dir>", "state directory")
    .option("-o, --out <file>", "write to a file instead of stdout")
    .addHelpText(
      "after",
      example("sluice ca export --out /usr/local/share/ca-certificates/sluice.crt"),
    )
    .action(async (opts: { state?: string; out?: string }) => {
      const pem = await runCaExport(opts);
      if (pem) out(pem);
    });

  return program;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

if (import.meta.main && Deno.args[0] === "__run-init") {
  // The first process inside a `sluice run` sandbox (lib/run/init.ts); not for people.
  const { runInit } = await import("./lib/run/init.ts");
  Deno.exit(await runInit(Deno.args[1] ?? "{}"));
} else if (import.meta.main) {
  try {
    await buildProgram().parseAsync(Deno.args, { from: "user" });
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version arrive here too, with exit code 0.
      Deno.exit(e.exitCode === 0 ? 0 : EXIT_USAGE);
    }
    err((e as Error).message);
    Deno.exit(1);
  }
}
