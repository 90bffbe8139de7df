/**
 * systemd integration: `Type=notify` readiness through $NOTIFY_SOCKET.
 *
 * sluice writes the datagram itself (`Deno.listenDatagram` with
 * `unixpacket`, enabled by the `net` unstable feature in deno.json and in the
 * compiled binary). Where that is not possible (an abstract socket name, or a
 * runtime without the feature) it falls back to the `systemd-notify` tool,
 * which needs `NotifyAccess=all` in the unit because the message then comes
 * from a child process.
 *
 * @module
 */

const encoder = new TextEncoder();

type DatagramApi = (opts: { transport: "unixpacket"; path: string }) => Deno.DatagramConn;

/** Sends one notification (`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=...`). Never throws. */
export async function sdNotify(
  state: string,
  env: (n: string) => string | undefined = (n) => Deno.env.get(n),
): Promise<boolean> {
  const socket = env("NOTIFY_SOCKET");
  if (!socket) return false;
  const listen = (Deno as unknown as { listenDatagram?: DatagramApi }).listenDatagram;
  if (listen && socket.startsWith("/")) {
    const own = `${Deno.makeTempDirSync({ prefix: "sluice-notify-" })}/s`;
    try {
      const conn = listen({ transport: "unixpacket", path: own });
      try {
        await conn.send(
          encoder.encode(state),
          { transport: "unix", path: socket } as Deno.UnixAddr,
        );
        return true;
      } finally {
        conn.close();
      }
    } catch {
      // fall through to systemd-notify
    } finally {
      Deno.removeSync(own.slice(0, -2), { recursive: true });
    }
  }
  try {
    const out = await new Deno.Command("systemd-notify", {
      args: [`--pid=${Deno.pid}`, ...state.split("\n").filter(Boolean)],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}
