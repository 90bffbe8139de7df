import { assertEquals, assertMatch, assertThrows } from "../_assert.ts";
import { bindAddr, parseListen } from "../../lib/cli/serve.ts";

Deno.test("parseListen() keeps a bare port without a host, for bindAddr() to place", () => {
  assertEquals(parseListen("15443", "--transparent-https"), { hostname: undefined, port: 15443 });
  assertEquals(parseListen(":15443", "--transparent-https"), { hostname: undefined, port: 15443 });
  assertEquals(parseListen("10.0.0.1:80", "--proxy"), { hostname: "10.0.0.1", port: 80 });
  assertEquals(parseListen("[::1]:80", "--proxy"), { hostname: "::1", port: 80 });
  assertMatch(
    assertThrows(() => parseListen("host:99999", "--proxy"), Error).message,
    /--proxy "host:99999" is not an address/,
  );
});

Deno.test("bindAddr() binds a port alone on loopback, except redirected listeners of a gateway", () => {
  const at = (gateway: boolean, redirected: boolean, hostname?: string) =>
    bindAddr({ hostname, port: 15443 }, {
      setting: "listen.transparent.https",
      gateway,
      redirected,
    });
  assertEquals(at(false, true), { hostname: "127.0.0.1", port: 15443 });
  assertEquals(at(true, true), { hostname: "0.0.0.0", port: 15443 });
  // The explicit proxy and admin listeners are not redirect targets: loopback stays the default.
  assertEquals(at(true, false), { hostname: "127.0.0.1", port: 15443 });
  assertEquals(at(true, false, "127.0.0.1"), { hostname: "127.0.0.1", port: 15443 });
  // An explicit interface address is the user's choice.
  assertEquals(at(true, true, "10.232.0.1"), { hostname: "10.232.0.1", port: 15443 });
  assertEquals(at(false, true, "127.0.0.2"), { hostname: "127.0.0.2", port: 15443 });
});

Deno.test("bindAddr() refuses loopback for a gateway's redirected listener, naming the setting and the fix", () => {
  for (const hostname of ["127.0.0.1", "127.1.2.3", "::1", "localhost"]) {
    const e = assertThrows(
      () =>
        bindAddr({ hostname, port: 15053 }, {
          setting: "listen.dns",
          gateway: true,
          redirected: true,
        }),
      Error,
    );
    assertMatch(e.message, /^listen\.dns is .*:15053, but enforce\.subjects\.interfaces/);
    assertMatch(e.message, /Write the port alone \(listen\.dns: 15053\)/);
  }
  const flag = assertThrows(
    () =>
      bindAddr(parseListen("127.0.0.1:16443", "--transparent-https"), {
        setting: "--transparent-https",
        gateway: true,
        redirected: true,
      }),
    Error,
  );
  assertMatch(flag.message, /Write the port alone \(--transparent-https 16443\)/);
});
