/**
 * The admin listener (`listen.admin`, loopback by default): `/healthz`,
 * `/metrics` (Prometheus text), `/ca.crt` (the PUBLIC CA certificate, for
 * clients to trust), and `POST /reload`.
 *
 * It exposes no secret and changes nothing but the policy (reload re-reads the
 * same file the server was started with), so binding it beyond loopback is
 * the operator's explicit choice.
 *
 * @module
 */

/** What the admin endpoints read and do. */
export type AdminHooks = {
  healthy: () => boolean;
  /** The exposition text; a promise when it must be gathered (`serve --workers N`). */
  metrics: () => string | Promise<string>;
  caPem: () => string;
  /** Re-reads the policy; resolves to an error message when the new policy was refused. */
  reload: () => Promise<string | undefined>;
};

/** Starts the admin HTTP server. */
export function startAdmin(addr: { hostname: string; port: number }, hooks: AdminHooks) {
  const server = Deno.serve(
    { hostname: addr.hostname, port: addr.port, onListen: () => {} },
    async (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/healthz" && (req.method === "GET" || req.method === "HEAD")) {
        return hooks.healthy()
          ? new Response("ok\n", { headers: { "content-type": "text/plain" } })
          : new Response("not ready\n", { status: 503 });
      }
      if (path === "/metrics" && req.method === "GET") {
        return new Response(await hooks.metrics(), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      }
      if (path === "/ca.crt" && req.method === "GET") {
        return new Response(hooks.caPem(), {
          headers: { "content-type": "application/x-pem-file" },
        });
      }
      if (path === "/reload") {
        if (req.method !== "POST") {
          return new Response("use POST /reload\n", {
            status: 405,
            headers: { allow: "POST" },
          });
        }
        const error = await hooks.reload();
        return error
          ? new Response(`reload refused; the running policy stays in force:\n${error}\n`, {
            status: 422,
          })
          : new Response("reloaded\n");
      }
      return new Response("sluice admin: /healthz, /metrics, /ca.crt, POST /reload\n", {
        status: 404,
      });
    },
  );
  return { addr: server.addr as Deno.NetAddr, close: () => server.shutdown() };
}
