import { assert, assertEquals } from "../../_assert.ts";
import { splice } from "../../../lib/ingress/splice.ts";

async function pair(): Promise<[Deno.Conn, Deno.Conn, () => void]> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [a, b] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: (l.addr as Deno.NetAddr).port }),
    l.accept(),
  ]);
  return [a, b, () => l.close()];
}

Deno.test("splice() moves bytes both ways, replaying the first bytes, and counts them", async () => {
  const [client, sluiceSide, close1] = await pair();
  const [upstreamSide, server, close2] = await pair();
  const done = splice(sluiceSide, upstreamSide, new TextEncoder().encode("hello "));
  await client.write(new TextEncoder().encode("world"));
  await client.closeWrite();
  const got = new Uint8Array(64);
  let n = 0;
  while (n < 11) n += (await server.read(got.subarray(n))) ?? 0;
  assertEquals(new TextDecoder().decode(got.subarray(0, n)), "hello world");
  await server.write(new TextEncoder().encode("back"));
  server.close();
  const back = new Uint8Array(16);
  assertEquals(await client.read(back), 4);
  const r = await done;
  assertEquals([r.aToB, r.bToA], [11, 4]);
  client.close();
  close1();
  close2();
});

Deno.test("splice() closes both sides after the idle timeout", async () => {
  const [client, sluiceSide, close1] = await pair();
  const [upstreamSide, server, close2] = await pair();
  const started = Date.now();
  const r = await splice(sluiceSide, upstreamSide, undefined, 200);
  const elapsed = Date.now() - started;
  assert(r.idle, "the idle timeout should have ended the splice");
  assert(elapsed >= 200 && elapsed < 2000, `ended after ${elapsed} ms`);
  assertEquals(await client.read(new Uint8Array(1)), null);
  assertEquals(await server.read(new Uint8Array(1)), null);
  client.close();
  server.close();
  close1();
  close2();
});

Deno.test("splice() keeps bytes intact across its small and large buffers, bulk and chatty in turn", async () => {
  const [client, sluiceSide, close1] = await pair();
  const [upstreamSide, server, close2] = await pair();
  const done = splice(sluiceSide, upstreamSide);
  // Bulk (fills the small buffer: moves to a large one), then small writes (back to the
  // small one), then bulk again: each phase must arrive whole and in order.
  const bulk = (n: number, seed: number) =>
    Uint8Array.from({ length: n }, (_, i) => (i * seed) & 255);
  const phases = [
    bulk(1 << 20, 7),
    new Uint8Array([1, 2, 3]),
    bulk(300_000, 13),
    new Uint8Array([9]),
  ];
  const total = phases.reduce((n, p) => n + p.length, 0);
  const received = new Uint8Array(total);
  const reading = (async () => {
    let n = 0;
    while (n < total) {
      const r = await server.read(received.subarray(n));
      if (r === null) break;
      n += r;
    }
    return n;
  })();
  for (const p of phases) {
    for (let at = 0; at < p.length;) at += await client.write(p.subarray(at));
    await new Promise((r) => setTimeout(r, 20)); // let the small write be read on its own
  }
  assertEquals(await reading, total);
  let at = 0;
  for (const p of phases) {
    assertEquals(received.subarray(at, at + p.length), p);
    at += p.length;
  }
  client.close();
  server.close();
  const r = await done;
  assertEquals(r.aToB, total);
  close1();
  close2();
});

Deno.test("splice() reports each direction's bytes to an Activity, and sets no timer of its own", async () => {
  const [client, sluiceSide, close1] = await pair();
  const [upstreamSide, server, close2] = await pair();
  const seen = { up: 0, down: 0 };
  const done = splice(sluiceSide, upstreamSide, new TextEncoder().encode("first"), {
    up: () => seen.up++,
    down: () => seen.down++,
  });
  await client.write(new TextEncoder().encode("ping"));
  const buf = new Uint8Array(16);
  let n = 0;
  while (n < 9) n += (await server.read(buf.subarray(n))) ?? 0;
  await server.write(new TextEncoder().encode("pong"));
  await client.read(buf);
  // The replayed first bytes are not the client's activity; the ping and the pong are.
  assertEquals(seen, { up: 1, down: 1 });
  client.close();
  server.close();
  const r = await done;
  assertEquals([r.aToB, r.bToA, r.idle], [9, 4, false]);
  close1();
  close2();
});
