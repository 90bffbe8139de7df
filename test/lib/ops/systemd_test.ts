import { assertEquals } from "../../_assert.ts";
import { sdNotify } from "../../../lib/ops/systemd.ts";

Deno.test("sdNotify() does nothing without NOTIFY_SOCKET", async () => {
  assertEquals(await sdNotify("READY=1", () => undefined), false);
});

Deno.test("sdNotify() writes the state to a real unix datagram socket", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/notify`;
  const server = Deno.listenDatagram({ transport: "unixpacket", path });
  try {
    const sent = await sdNotify(
      "READY=1\nSTATUS=x",
      (n) => (n === "NOTIFY_SOCKET" ? path : undefined),
    );
    assertEquals(sent, true);
    const [data] = await server.receive();
    assertEquals(new TextDecoder().decode(data), "READY=1\nSTATUS=x");
  } finally {
    server.close();
    await Deno.remove(dir, { recursive: true });
  }
});
