/**
 * A stand-in for the npm registry, for the recipes in docs/ci.md and the README: an HTTPS
 * server on a loopback address (never 127.0.0.1, which run_test.ts binds) with a certificate
 * for registry.npmjs.org from a throwaway openssl CA (test/_pki.ts), so nothing in sluice's
 * own certificate code makes the fixture.
 *
 * It answers what `npm publish` and `curl https://registry.npmjs.org/` need, and records
 * every request: the Authorization header sluice forwarded and, for a publish, the package.
 *
 * @module
 */
import { opensslPki } from "../../_pki.ts";

/** One request the stand-in received. */
export type RegistryRequest = {
  method: string;
  path: string;
  authorization?: string;
  /** For a publish (PUT /<name>): the package name and version, and the tarball's bytes. */
  publish?: { name: string; version: string; tarball: Uint8Array };
  status: number;
};

/** A running stand-in registry. */
export type Registry = {
  hostname: string;
  port: number;
  /** Path of the CA certificate (PEM) that signed the registry's certificate. */
  caPath: string;
  /** Every request so far, oldest first. */
  requests: RegistryRequest[];
  /** The next publish of package `name` is answered with `status` (once), as the registry does for a bad token. */
  failNextPublish(name: string, status: number): void;
  close(): Promise<void>;
};

/**
 * Starts the stand-in on `hostname:443`.
 *
 * @param hostname a loopback address other than 127.0.0.1
 * @param dir where the CA certificate is written
 */
export async function startRegistry(hostname: string, dir: string): Promise<Registry> {
  const pki = await opensslPki("registry.npmjs.org");
  const caPath = `${dir}/registry-ca.crt`;
  await Deno.writeTextFile(caPath, pki.ca);
  await Deno.remove(pki.dir, { recursive: true });
  const requests: RegistryRequest[] = [];
  const failures = new Map<string, number>();
  const server = Deno.serve({
    hostname,
    port: 443,
    cert: pki.cert,
    key: pki.key,
    onListen: () => {},
  }, async (req) => {
    const url = new URL(req.url);
    const path = decodeURIComponent(url.pathname);
    const entry: RegistryRequest = {
      method: req.method,
      path,
      authorization: req.headers.get("authorization") ?? undefined,
      status: 200,
    };
    requests.push(entry);
    const answer = (status: number, body: unknown) => {
      entry.status = status;
      return Response.json(body, { status });
    };
    if (req.method === "PUT" && path.length > 1) {
      // npm publish: PUT /<name> with the packument and the tarball as a base64 attachment.
      const doc = await req.json() as {
        name: string;
        "dist-tags"?: Record<string, string>;
        _attachments?: Record<string, { data: string }>;
      };
      const version = doc["dist-tags"]?.latest ?? "";
      const att = Object.values(doc._attachments ?? {})[0];
      entry.publish = {
        name: doc.name,
        version,
        tarball: att ? Uint8Array.from(atob(att.data), (c) => c.charCodeAt(0)) : new Uint8Array(),
      };
      const fail = failures.get(doc.name);
      if (fail) {
        failures.delete(doc.name);
        return answer(fail, { error: "You do not have permission to publish this package" });
      }
      if (!entry.authorization) return answer(401, { error: "authentication required" });
      return answer(200, { ok: true, id: doc.name });
    }
    await req.body?.cancel();
    if (req.method === "GET" && path === "/") return answer(200, { db_name: "registry" });
    return answer(404, { error: "Not found" });
  });
  return {
    hostname,
    port: 443,
    caPath,
    requests,
    failNextPublish: (name, status) => failures.set(name, status),
    close: () => server.shutdown(),
  };
}

/** The text of the files in a gzipped tarball (enough to find a marker in a small package). */
export async function tarballText(tgz: Uint8Array): Promise<string> {
  const stream = new Blob([tgz as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new DecompressionStream("gzip"),
  );
  return new TextDecoder().decode(await new Response(stream).arrayBuffer());
}
