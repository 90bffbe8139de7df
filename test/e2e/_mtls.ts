/**
 * An upstream that requires a client certificate: `openssl s_server -www -Verify 1`, a real TLS
 * stack that is not sluice's or Deno's. Shared by the client_cert tests and the docs recipes.
 *
 * @module
 */

/** `openssl s_server -www` that requires a client certificate from the test CA. */
export async function mtlsServer(
  dir: string,
  cert: string,
  key: string,
  ca: string,
  hostname = "127.0.0.1",
  fixedPort?: number,
) {
  let port = fixedPort;
  if (port === undefined) {
    const probe = Deno.listen({ hostname, port: 0 });
    port = probe.addr.port;
    probe.close();
  }
  const child = new Deno.Command("openssl", {
    args: [
      "s_server",
      "-accept",
      `${hostname}:${port}`,
      "-cert",
      cert,
      "-key",
      key,
      "-CAfile",
      ca,
      "-Verify",
      "1",
      "-www",
      "-quiet",
    ],
    cwd: dir,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (let i = 0; i < 100; i++) {
    try {
      (await Deno.connect({ hostname, port })).close();
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    port: port!,
    close: async () => {
      child.kill("SIGKILL");
      await child.status;
    },
  };
}
