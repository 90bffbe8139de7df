/**
 * The request stage: every HTTP request sluice can see (intercepted HTTPS,
 * plain HTTP through the explicit or transparent listeners) is decided here
 * and, if allowed, forwarded upstream with its response streamed back.
 *
 * Order, and why:
 *   1. a connection already denied answers every request with its 403;
 *   2. the request's host must be the one the connection was for (SNI or
 *      CONNECT target): no domain fronting past a host rule;
 *   3. the policy's request decision (methods, paths);
 *   4. resolve, then the address decision (`private` guard) on what we will
 *      actually connect to;
 *   5. forward; upstream failures become 502 (or 504 on timeouts) with the
 *      reason in the body, never a hang.
 * Each request leaves one audit record when its response has been sent.
 *
 * Why one file of ~650 lines: the steps above share the request's decision, its audit fields
 * and one `finish()`; every refusal of every step goes through them, in this order.
 *
 * @module
 */
import { formatHostPort } from "../../policy/address.ts";
import { type Decision, formatDestination } from "../../policy/mod.ts";
import { planRequest } from "../../policy/plan.ts";
import { type AuditRecord, decidedFields, writeDecided } from "../ops/audit.ts";
import type { Metrics } from "../ops/metrics.ts";
import { chooseAddress } from "../upstream/connect.ts";
import type { ProxyContext } from "../gateway/context.ts";
import { denyResponse, errorResponse } from "./respond.ts";
import type { Connections, HopMeta } from "../ingress/terminator.ts";
import { UpstreamError, type UpstreamPool, type UpstreamResponse } from "../upstream/client.ts";
import { removeHopByHop } from "../http1/response.ts";
import { isWebSocketUpgrade, proxyWebSocket } from "./websocket/mod.ts";
import { BUFFERED_BODY_LIMIT } from "../credentials/broker.ts";
import type { SecretValue } from "../credentials/secrets.ts";
import { parseSigV4, resign } from "../credentials/sigv4.ts";
import type { Credential } from "../../policy/types.ts";
import { grpcRefusal, isGrpc } from "../http2/grpc.ts";
import { isHttp2, setTrailers } from "../http2/meta.ts";

/** Request headers a proxy must not pass on (besides hop-by-hop ones). */
const PROXY_ONLY = new Set(["proxy-authorization", "proxy-connection", "proxy-authenticate"]);
/** Request fields never forwarded besides the hop-by-hop ones: the proxy's own, and Host. */
const NOT_FORWARDED: ReadonlySet<string> = new Set([...PROXY_ONLY, "host"]);

/**
 * The fields with the client's accept-encoding (and grpc-accept-encoding) replaced by
 * `identity`: asked when a credential was applied, so an echoed secret can be scrubbed.
 */
function identityEncoding(fields: [string, string][], grpc: boolean): [string, string][] {
  const out = fields.filter(([n]) => {
    const lower = n.toLowerCase();
    return lower !== "accept-encoding" && lower !== "grpc-accept-encoding";
  });
  out.push(["accept-encoding", "identity"]);
  if (grpc) out.push(["grpc-accept-encoding", "identity"]);
  return out;
}

/** No credentials substituted or injected (a policy without credentials), shared. */
const NOTHING: readonly string[] = Object.freeze([]);

/**
 * `URL.parse`, through `new URL`: Deno 2.9 parses simple http(s) URLs in JS on that path, while
 * `URL.parse` always calls the native parser (~0.5 µs more per request in the profiles of
 * bench/request_path_bench.ts). Same answer: null where `new URL` throws.
 */
function parseUrl(text: string): URL | null {
  try {
    return new URL(text);
  } catch {
    return null;
  }
}

/**
 * The fields of a Headers object as its iterator gives them (lowercased names, sorted, repeats
 * joined with ", ", each set-cookie apart), through `forEach`. Why: Deno 2.9's Headers iterator
 * recomputes the sorted list on every step for a mutable Headers (a server request's, or one we
 * built), so `[...headers]` of a 6-field request cost ~4 µs against ~0.6 µs this way (measured,
 * Deno.bench).
 */
function headerFields(headers: Headers): [string, string][] {
  const fields: [string, string][] = [];
  headers.forEach((value, name) => {
    fields.push([name, value]);
  });
  return fields;
}

/**
 * The value of a field in {@link headerFields}' list, as `Headers.get` gives it (that list has
 * one entry per name, repeats joined, and set-cookie is never asked for here): null if absent.
 */
function fieldValue(fields: readonly [string, string][], name: string): string | null {
  for (let i = 0; i < fields.length; i++) if (fields[i][0] === name) return fields[i][1];
  return null;
}

/**
 * The per-request metrics' label sets, each keyed once per handler: building a label key sorts,
 * escapes and joins its labels (~0.5 µs, twice per request; bench/request_path_bench.ts).
 */
type RequestSeries = {
  requests: Record<"allow" | "deny", Record<HopMeta["mode"], { inc(): void }>>;
  duration: Record<"allow" | "deny", { observe(seconds: number): void }>;
};

function requestSeries(m: Metrics): RequestSeries {
  const requests = (verdict: "allow" | "deny") => ({
    explicit: m.requests.series({ verdict, mode: "explicit" }),
    transparent: m.requests.series({ verdict, mode: "transparent" }),
  });
  return {
    requests: { allow: requests("allow"), deny: requests("deny") },
    duration: {
      allow: m.duration.series({ verdict: "allow" }),
      deny: m.duration.series({ verdict: "deny" }),
    },
  };
}

/**
 * Builds the handler the HTTP servers call for each request: the terminator's internal servers
 * (behind a hop) and the direct listener (lib/ingress/direct.ts). `connections` tells who the
 * client behind a request is.
 */
export function makeRequestHandler(
  ctx: ProxyContext,
  connections: () => Connections,
  pool: UpstreamPool,
): (req: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>) => Promise<Response> {
  // Responses whose body is still streaming from upstream: their request is
  // in flight until the body ends (tracked for graceful drain).
  const streaming = new WeakMap<Response, () => void>();
  // Made on first use: a stage test's context may carry no metrics.
  let series: RequestSeries | undefined;
  const handle = async (
    req: Request,
    // The client's address, read once: `info.remoteAddr` is an op that builds a new object.
    peer: Deno.NetAddr,
    release: () => void,
  ): Promise<Response> => {
    const started = performance.now();
    const meta = connections().meta(peer);
    if (!meta) {
      // Only hops reach the internal listeners; anything else is refused.
      return errorResponse(
        421,
        "no-route",
        "this listener only serves connections sluice accepted",
      );
    }
    // Deno's server builds the URL from the Host header (or an absolute-form target) without
    // checking that it is one: a host no URL can hold (a%00.test, [::1%25lo]) is bad input.
    const parsedUrl = parseUrl(req.url);
    // What every record of this request shares; each ending adds its verdict, code and reason
    // (the outcome table's code is required: `finish` does not type-check without one).
    const base: Omit<AuditRecord, "verdict" | "code" | "reason"> = {
      event: "request",
      conn: meta.conn,
      client: meta.client,
      mode: meta.mode,
      tls: meta.secure ? "intercept" : "none",
      sni: meta.sni,
      method: req.method,
      path: parsedUrl?.pathname,
    };
    // The request's fields, read once: each `req.headers.get` converts its argument and walks
    // the header list again, and an allowed request reads several of them.
    const fields = headerFields(req.headers);
    // A gRPC call: its refusals are gRPC statuses (lib/http2/grpc.ts), its method is audited.
    const grpc = isGrpc(fieldValue(fields, "content-type"));
    if (grpc && parsedUrl) base.rpc = parsedUrl.pathname.slice(1);
    // An answer sluice gives itself: a gRPC call's refusal is a gRPC status, and it is counted.
    const answer = (given: Response, verdict: "allow" | "deny", reason: string): Response => {
      series ??= requestSeries(ctx.metrics);
      series.requests[verdict][meta.mode].inc();
      series.duration[verdict].observe((performance.now() - started) / 1000);
      return grpc && given.status !== 200 ? grpcRefusal(given, reason) : given;
    };
    const finish = (
      given: Response,
      extra: Partial<AuditRecord> & Pick<AuditRecord, "code" | "reason">,
    ): Response => {
      const res = answer(given, extra.verdict ?? "deny", extra.reason);
      ctx.audit.write({
        verdict: "deny",
        ...base,
        ...extra,
        status: given.status,
        duration_ms: Math.round(performance.now() - started),
      });
      return res;
    };
    // A refusal by a decision: its fields go with the decision, which the log serialises once
    // when the policy remembered it (lib/ops/audit.ts), as for an allowed request's record.
    const deny = (d: Decision, extra: Partial<AuditRecord> = {}, status = 403): Response => {
      const given = denyResponse(d, status);
      const res = answer(given, "deny", d.reason);
      // Every decision that reaches here is a denial; were one not, the record still says what
      // the client got.
      writeDecided(ctx.audit, d.verdict === "deny" ? d : { ...d, verdict: "deny" }, {
        ...base,
        ...extra,
        status: given.status,
        duration_ms: Math.round(performance.now() - started),
      });
      return res;
    };
    if (!parsedUrl) {
      const reason = `the request names the host ${
        JSON.stringify((req.headers.get("host") ?? "").slice(0, 200))
      }, which is not a valid host`;
      return finish(errorResponse(400, "invalid-host", reason), { code: "invalid-host", reason });
    }
    const url = parsedUrl;
    const violated = (c: Credential, d: Decision, status = 403): Response => {
      ctx.metrics.violations.inc({ credential: c.name });
      ctx.onViolation?.(c, base.host ?? "");
      return deny(d, { violation: c.name }, status);
    };

    if (meta.denied) {
      const d = meta.denied;
      return deny(d, {
        host: meta.target ? formatDestination(meta.target.dest) : meta.sni,
        port: meta.target?.port,
      });
    }

    if (grpc && !isHttp2(req)) {
      // Deno's own server (HTTP/1.1, and HTTP/2 on the direct path) cannot send trailers, and
      // a gRPC call without its trailers fails in the client with no reason: say why here.
      const reason = "gRPC needs HTTP/2 trailers, which this listener cannot send: " +
        (meta.nameUnknown
          ? "it is the direct data path; serve with --data-path hop (docs/data-path.md)"
          : "the client did not speak HTTP/2");
      return finish(errorResponse(503, "grpc-no-trailers", reason), {
        code: "grpc-no-trailers",
        reason,
      });
    }

    // The plan (policy/plan.ts): every decision about this request, made once, the same
    // one `sluice explain` prints. Where the request goes: for TLS the connection's target
    // port; for plain HTTP the URL's (absolute-form) or Host's port.
    const compiled = ctx.policy();
    const broker = ctx.broker();
    // The direct path knows no original port: the authority's (default 443) is the one
    // decided and dialled, so decision and destination agree.
    const port = meta.secure && !meta.nameUnknown
      ? (meta.target?.port ?? 443)
      : (url.port ? Number(url.port) : meta.secure ? 443 : 80);
    base.port = port;
    const plan = planRequest(compiled, {
      secure: meta.secure,
      connectionHost: meta.sni ?? (meta.target ? formatDestination(meta.target.dest) : undefined),
      nameUnknown: meta.nameUnknown,
      port,
      method: req.method,
      host: url.hostname,
      pathname: url.pathname,
      search: url.search,
      headers: fields,
      scanner: broker.scanner,
    });
    if (plan.host) base.host = plan.host;
    if (plan.verdict === "deny") {
      if (plan.violation) return violated(plan.violation, plan.decision, plan.status);
      return deny(plan.decision, {}, plan.status);
    }
    const decision = plan.decision;
    const dest = plan.dest;
    const hostText = plan.host;
    const path = plan.target;
    const query = path.indexOf("?");
    base.path = query < 0 ? path : path.slice(0, query);

    // Names are resolved only now, after every check that needs no network: the address
    // decision (private guard) runs on what will actually be dialled.
    const choice = await chooseAddress(ctx, dest, port);
    if (!choice.ok) {
      if ("denied" in choice) return deny(choice.denied);
      return finish(errorResponse(502, "resolve", choice.error), {
        code: "resolve",
        reason: choice.error,
      });
    }
    const address = formatHostPort(choice.ip.text, port);

    // Credentials: the plan refused any placeholder headed outside its scope; substitute
    // the rest where each credential's `in` allows. The Host sent is the one decided on:
    // the client's own Host header never reaches the upstream (no domain fronting).
    const bare = dest.kind === "name" ? dest.name : dest.ip.text;
    let headers = removeHopByHop(fields, undefined, NOT_FORWARDED);
    const allowed: Credential[] = plan.substitute;
    const violation = (c: Credential, where: string): Response =>
      violated(c, {
        verdict: "deny",
        code: "credential-violation",
        reason: `the request carries the placeholder of credential ${c.name} (${where}), ` +
          `which may only be sent to ${c.hosts.map((h) => h.source).join(", ")}, not ${hostText}`,
        rule: {
          list: "allow",
          index: -1,
          source: `credentials.${c.name}.hosts`,
          at: `${c.loc.file}:${c.loc.line}`,
        },
      });
    // oauth2 credentials about to be used: sluice obtains the access token first (one fetch
    // shared by every request waiting for it; lib/credentials/oauth2.ts). No token, no request.
    const minted = allowed.length === 0 ? NOTHING : broker.minted(
      allowed.filter((c) =>
        c.inject || plan.found.has(c.name) || (req.body !== null && c.in.includes("body"))
      ),
    );
    let tokensUsed: Map<string, SecretValue> | undefined;
    if (minted.length) {
      try {
        tokensUsed = await broker.tokens(minted);
      } catch (e) {
        const reason = (e as Error).message;
        return finish(errorResponse(502, "credential-token", reason), {
          code: "credential-token",
          reason,
        });
      }
    }
    const unrewritten = headers;
    let rewritten = broker.names.length
      ? broker.rewriteRequest(path, headers, allowed)
      : { target: path, headers, substituted: NOTHING, injected: NOTHING };
    headers = rewritten.headers;
    // Filled by loops, not `new Set(iterable)`: the iterable form showed in the request path's
    // CPU profile, for a set that is empty on most requests.
    const applied = new Set<string>();
    for (let i = 0; i < rewritten.substituted.length; i++) applied.add(rewritten.substituted[i]);
    for (let i = 0; i < rewritten.injected.length; i++) applied.add(rewritten.injected[i]);

    const lengthHeader = fieldValue(fields, "content-length");
    let bodyLength = lengthHeader !== null && /^\d+$/.test(lengthHeader)
      ? Number(lengthHeader)
      : undefined;
    let body: ReadableStream<Uint8Array> | Uint8Array | null = req.body;
    /** A small body as the client sent it (to rewrite again for a retry after a 401). */
    let whole: Uint8Array | undefined;
    let bodyViolation: Credential | undefined;
    if (req.body && broker.names.length) {
      if (bodyLength !== undefined && bodyLength <= BUFFERED_BODY_LIMIT) {
        // Small bodies are read whole, so a violation is refused before any byte is sent.
        whole = new Uint8Array(await req.arrayBuffer());
        const rb = broker.rewriteBody(whole, allowed);
        if (rb.violations.length) {
          return violation(compiled.credentials.find((c) => c.name === rb.violations[0])!, "body");
        }
        rb.substituted.forEach((n) => applied.add(n));
        body = rb.body;
        bodyLength = rb.body.length;
      } else {
        const transform = broker.requestBodyStream(allowed, (name) => {
          if (!allowed.some((c) => c.name === name)) {
            bodyViolation = compiled.credentials.find((c) => c.name === name);
          } else applied.add(name);
        });
        if (transform) {
          body = req.body.pipeThrough(transform);
          // Substitution may change the length: send it chunked.
          if (allowed.some((c) => c.in.includes("body"))) bodyLength = undefined;
        }
      }
    }
    let upstreamPath = rewritten.target;
    // aws_sigv4: a request signed with a credential's placeholder keys is verified with them and
    // re-signed with the real ones (lib/credentials/sigv4.ts); nothing is substituted as text.
    if (broker.hasSigv4) {
      const auth = parseSigV4(path, fields);
      const cred = auth && !("error" in auth) ? broker.sigv4(allowed, auth.keyId) : undefined;
      const signedFor = allowed.find((c) => c.kind === "aws_sigv4" && plan.found.has(c.name));
      if (cred && auth && !("error" in auth)) {
        // The Host the client signed is the authority it asked for, which is the one decided.
        const host: [string, string] = ["host", new URL(req.url).host];
        const r = resign(
          cred.name,
          auth,
          {
            method: req.method,
            target: path,
            headers: [...fields.filter(([n]) => n.toLowerCase() !== "host"), host],
          },
          { target: upstreamPath, headers: [...headers, host] },
          whole ?? (req.body === null ? null : undefined),
          cred.placeholders,
          cred.keys,
        );
        if (!r.ok) {
          return finish(errorResponse(403, "credential-signature", r.reason), {
            code: "credential-signature",
            reason: r.reason,
          });
        }
        headers = r.headers.filter(([n]) => n.toLowerCase() !== "host");
        upstreamPath = r.target;
        if (r.body && body !== null) {
          const stream = body instanceof Uint8Array
            ? new Blob([body as Uint8Array<ArrayBuffer>]).stream()
            : body;
          body = stream.pipeThrough(r.body);
        }
        applied.add(cred.name);
      } else if (signedFor) {
        const reason = `credential ${signedFor.name}: the request carries its placeholder keys ` +
          `but no SigV4 signature sluice can verify (${
            auth && "error" in auth ? auth.error : "the placeholder is not the signing key id"
          })`;
        return finish(errorResponse(403, "credential-signature", reason), {
          code: "credential-signature",
          reason,
        });
      }
    }
    if (applied.size) headers = identityEncoding(headers, grpc);
    const trust = ctx.trust().forHost(bare);
    // A client_cert credential scoped to this host and port: sluice presents it (mTLS).
    const presented = meta.secure ? broker.clientCerts.forHost(bare, port) : undefined;
    if (presented) applied.add(presented.name);
    const target = {
      host: bare,
      port,
      address: choice.ip.text,
      tls: meta.secure,
      caCerts: trust.caCerts.length ? trust.caCerts : undefined,
      verify: trust.verify,
      clientCert: presented,
    };
    if (applied.size) {
      for (const name of applied) ctx.metrics.credentialUses.inc({ credential: name });
    }
    // The plan allowed the request, so the decision's verdict is "allow".
    const allowAudit: Partial<AuditRecord> & Pick<AuditRecord, "verdict" | "code" | "reason"> = {
      ...decidedFields(decision),
      address,
      ...(applied.size ? { credentials: [...applied] } : {}),
    };
    const upstreamFailure = (e: unknown): Response => {
      const kind = e instanceof UpstreamError ? e.kind : "connect";
      ctx.metrics.upstreamErrors.inc({ kind });
      const status = kind === "timeout" ? 504 : 502;
      // The message may quote what the upstream sent (a malformed header's value): it goes to
      // the workload and the audit log, so it is scrubbed like any response.
      const raw = (e as Error).message;
      const message = broker.responseScrubber()?.text(raw) ?? raw;
      return finish(errorResponse(status, `upstream-${kind}`, message), {
        ...allowAudit,
        code: `upstream-${kind}`,
        reason: message,
      });
    };

    // Only a request with an Upgrade field can be one: most requests skip the Headers reads.
    if (fieldValue(fields, "upgrade") !== null && isWebSocketUpgrade(req)) {
      // The handshake was decided like any GET above (host, path, credentials in its
      // headers); from the 101 on, messages are relayed until either side closes, and the
      // session counts as in flight (graceful drain) until then. With credentials in the
      // policy each message is brokered like a body: placeholders substituted or refused
      // (1008) on the way up, every real value scrubbed on the way down, and a non-101
      // answer scrubbed like any response.
      const scrubber = broker.responseScrubber();
      let refused: { code: "upstream-encoding" | "upstream-reset"; reason: string } | undefined;
      let session: Response;
      try {
        session = await proxyWebSocket(
          req,
          (fields) =>
            pool.request(
              target,
              { method: "GET", path: upstreamPath, headers: fields, body: null },
              ctx.signal,
            ),
          {
            headers,
            brokering: scrubber === null ? undefined : {
              scrubBytes: (payload) => scrubber.bytes(payload),
              scrubText: (text) => scrubber.text(text),
              scrubHeaders: (fields) => scrubber.headers(fields),
              refusal: async (up) => {
                const r = await broker.scrubResponse(up, up.status === 204 || up.status === 304);
                if (!r.ok) {
                  refused = r;
                  return errorResponse(502, r.code, r.reason);
                }
                const fields = new Headers();
                for (const [name, value] of r.headers) fields.append(name, value);
                try {
                  return new Response(r.body, {
                    status: r.status,
                    statusText: r.reason,
                    headers: fields,
                  });
                } catch {
                  return new Response(r.body, { status: r.status, headers: fields });
                }
              },
              message: (payload) => {
                const rb = broker.rewriteBody(payload, allowed);
                return rb.violations.length
                  ? { violation: rb.violations[0] }
                  : { payload: rb.body, substituted: rb.substituted };
              },
            },
            onViolation: (name) => {
              ctx.metrics.violations.inc({ credential: name });
              const c = compiled.credentials.find((c) => c.name === name);
              if (c) ctx.onViolation?.(c, hostText);
            },
            onClose: (stats) => {
              release();
              const used = new Set([
                ...(allowAudit.credentials ?? []),
                ...(stats.credentials ?? []),
              ]);
              ctx.audit.write({
                ...base,
                ...allowAudit,
                ...(used.size ? { credentials: [...used] } : {}),
                ...(stats.violation === undefined ? {} : {
                  verdict: "deny",
                  code: "credential-violation",
                  violation: stats.violation,
                }),
                status: 101,
                bytes_up: stats.up,
                bytes_down: stats.down,
                duration_ms: Math.round(performance.now() - started),
                reason: `${decision.reason}; WebSocket closed` +
                  (stats.code === undefined ? "" : ` with ${stats.code}`) +
                  (stats.violation === undefined ? "" : `: a message held the placeholder of ` +
                    `credential ${stats.violation}, which may not be sent to ${hostText}`),
              });
            },
          },
        );
      } catch (e) {
        return upstreamFailure(e);
      }
      if (refused !== undefined) {
        ctx.metrics.upstreamErrors.inc({ kind: refused.code.slice("upstream-".length) });
        return finish(session, { ...allowAudit, code: refused.code, reason: refused.reason });
      }
      if (session.status !== 101) return finish(session, allowAudit);
      series ??= requestSeries(ctx.metrics);
      series.requests.allow[meta.mode].inc();
      streaming.set(session, release);
      return session;
    }

    let upstream: UpstreamResponse;
    try {
      upstream = await pool.request(
        target,
        {
          method: req.method,
          path: upstreamPath,
          headers,
          body,
          bodyLength,
          http2: isHttp2(req),
        },
        ctx.signal,
      );
    } catch (e) {
      if (bodyViolation) return violation(bodyViolation, "body");
      return upstreamFailure(e);
    }

    // 401 with a token sluice minted: the token may have been revoked early. Renew it once
    // and send the request again, when its body can be sent again (none, or read whole).
    if (upstream.status === 401 && tokensUsed && !(body instanceof ReadableStream)) {
      let renewed = false;
      try {
        renewed = await broker.renewTokens(tokensUsed);
      } catch {
        // The token endpoint failed (audited as a token record): the client gets the 401.
      }
      if (renewed) {
        await upstream.body?.cancel().catch(() => {});
        rewritten = broker.rewriteRequest(path, unrewritten, allowed);
        if (whole) body = broker.rewriteBody(whole, allowed).body;
        try {
          upstream = await pool.request(
            target,
            {
              method: req.method,
              path: rewritten.target,
              headers: identityEncoding(rewritten.headers, grpc),
              body,
              bodyLength: body?.length,
              http2: isHttp2(req),
            },
            ctx.signal,
          );
        } catch (e) {
          return upstreamFailure(e);
        }
      }
    }

    // An upstream that echoes a real value gets it replaced by the placeholder
    // before the workload sees it: every loaded credential (not only those
    // substituted here), in the status line, every field and the body of any
    // type, decoded when content-encoded (lib/credentials/scrub.ts; docs/credentials.md).
    // A coding sluice cannot decode is refused, never passed unchecked. A
    // policy without credentials passes the response through untouched.
    // Responses to HEAD and 204/304 have no body whatever their headers say.
    const bodyless = req.method === "HEAD" || upstream.status === 204 || upstream.status === 304;
    const scrubbed = await broker.scrubResponse(upstream, bodyless);
    if (!scrubbed.ok) {
      ctx.metrics.upstreamErrors.inc({ kind: scrubbed.code.slice("upstream-".length) });
      return finish(errorResponse(502, scrubbed.code, scrubbed.reason), {
        ...allowAudit,
        code: scrubbed.code,
        reason: scrubbed.reason,
      });
    }
    // The fields go to the Response as they are: its Headers validates and lowercases them as a
    // Headers object would, and a repeated field stays one line per value (no copy through a
    // Headers object and its iterator: ~1 µs per response in the CPU profile).
    const responseFields = scrubbed.headers;
    let down = 0;
    let recorded = false;
    const record = (reason?: string) => {
      if (recorded) return;
      recorded = true;
      // Field by field, not by spreading `base` and `allowAudit` (copying two objects cost ~1 µs
      // per request, bench/request_path_bench.ts). Absent fields are undefined, which JSON
      // leaves out. The decision's own fields go with the decision, which the log serialises
      // once (lib/ops/audit.ts); a reason that says how the body ended is this request's own.
      const rest = {
        event: "request" as const,
        conn: base.conn,
        client: base.client,
        mode: base.mode,
        tls: base.tls,
        sni: base.sni,
        method: base.method,
        path: base.path,
        rpc: base.rpc,
        port: base.port,
        host: base.host,
        address: allowAudit.address,
        credentials: allowAudit.credentials,
        status: upstream.status,
        bytes_down: down,
        duration_ms: Math.round(performance.now() - started),
      };
      if (reason === undefined) return writeDecided(ctx.audit, decision, rest);
      ctx.audit.write({ ...rest, ...allowAudit, reason });
    };
    const init = { status: scrubbed.status, statusText: scrubbed.reason, headers: responseFields };
    // HTTP/2 upstream trailers (gRPC's status) follow the body, scrubbed like every field.
    const scrubTrailers = upstream.trailers === undefined ? undefined : (() => {
      const scrubber = broker.responseScrubber();
      return upstream.trailers.then((t) => scrubber === null ? t : scrubber.headers(t));
    })();
    const withTrailers = (res: Response): Response => {
      if (scrubTrailers !== undefined) setTrailers(res, scrubTrailers);
      return res;
    };
    series ??= requestSeries(ctx.metrics);
    series.requests.allow[meta.mode].inc();
    series.duration.allow.observe((performance.now() - started) / 1000);
    if (scrubbed.body instanceof Uint8Array) {
      // The whole body is at hand (it arrived with the head): answer with the bytes (one
      // write by Deno's server, no stream per response).
      down = scrubbed.body.length;
      record();
      return withTrailers(new Response(scrubbed.body, init));
    }
    if (scrubbed.body === null) {
      record();
      return withTrailers(new Response(null, init));
    }
    // The record is written when the body has been sent, or when the client
    // went away first, or the body failed to decode (then `reason` says so).
    const counted = scrubbed.body.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          down += chunk.length;
          controller.enqueue(chunk);
        },
        flush() {
          record();
          release();
        },
        cancel(why) {
          release();
          record(
            why instanceof Error && why.name === "BodyDecodeError"
              ? `${decision.reason}; ${why.message}: the response was cut off there`
              : `${decision.reason}; the client closed before the whole response was sent`,
          );
        },
      }),
    );
    const res = withTrailers(new Response(counted, init));
    streaming.set(res, release);
    return res;
  };
  return async (req, info) => {
    ctx.inflight.count++;
    let released = false;
    let streamingBody = false;
    const peer = info.remoteAddr;
    const release = () => {
      if (!released) {
        released = true;
        ctx.inflight.count--;
        // A streamed body that has ended: the hop's keep-alive clock runs again.
        if (streamingBody) connections().bodyEnded(peer);
      }
    };
    try {
      const res = await handle(req, peer, release);
      if (!streaming.has(res)) release();
      else if (!released) {
        // While a body streams (an SSE stream may be silent for minutes), the connection is
        // not idle: the keep-alive deadline waits for the body's end (lib/ingress/limits.ts).
        streamingBody = true;
        connections().bodyStarted(peer);
      }
      return res;
    } catch (e) {
      release();
      throw e;
    }
  };
}

export type { HopMeta };
