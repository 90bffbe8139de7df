/**
 * The S3 stand-in (test/e2e/_s3_standin.py, Debian's python3 and botocore) and the AWS CLI, for
 * the aws_sigv4 tests and docs/ci.md's AWS recipe: the real keys it accepts, and starting it.
 */
import { ROOT } from "./_harness.ts";

export const KEY_ID = "AKIAREALKEY0EXAMPLE7";
export const SECRET = "real/Secret+Access/Key0000sluiceTEST1234";
export const TOKEN = "real-session-token-FwoGZXIvYXdzEJr/example==";
export const PY = "/usr/bin/python3";
export const AWS = "/usr/bin/aws";
export const STANDIN = `${ROOT}test/e2e/_s3_standin.py`;

/** Whether Debian's python3 and aws are installed (CI installs them: .ci/run). */
export const available: boolean = (
  await Promise.all([PY, AWS].map((p) => Deno.stat(p).then(() => true, () => false)))
).every(Boolean);

/**
 * Starts the stand-in on `at` (host:port; port 0 picks one), accepting KEY_ID/SECRET and, when
 * `token` is true, requiring TOKEN.
 */
export async function startStandin(
  dir: string,
  cert: string,
  key: string,
  at = "127.0.0.1:0",
  token = true,
) {
  const [host, port] = at.split(":");
  const child = new Deno.Command(PY, {
    args: [STANDIN, port, cert, key, `${dir}/s3.jsonl`, host],
    env: {
      REAL_AWS_ACCESS_KEY_ID: KEY_ID,
      REAL_AWS_SECRET_ACCESS_KEY: SECRET,
      REAL_AWS_SESSION_TOKEN: token ? TOKEN : "",
    },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!/ready \d+/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the S3 stand-in exited: ${text}`);
    text += value;
  }
  reader.releaseLock();
  return {
    port: Number(/ready (\d+)/.exec(text)![1]),
    log: async () =>
      (await Deno.readTextFile(`${dir}/s3.jsonl`).catch(() => "")).split("\n").filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    stop: async () => {
      child.kill("SIGKILL");
      await child.status;
      await child.stdout.cancel().catch(() => {});
    },
  };
}
