/**
 * AWS Signature Version 4 credentials (`kind: aws_sigv4`). The workload holds placeholder keys
 * (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optionally `AWS_SESSION_TOKEN`) and signs with
 * them as usual; the real secret key never travels, so substituting a string cannot work.
 * Instead, on a request to the credential's hosts that names the placeholder key id, sluice:
 *
 * 1. verifies the signature with the placeholder secret over the request as the client sent it
 *    (a request that does not verify was forged or altered: refused);
 * 2. re-signs it with the real keys over the request as sluice sends it: the `Authorization`
 *    header (header auth) or `X-Amz-Credential` / `X-Amz-Signature` (presigned URLs), with the
 *    session token put in place of its placeholder;
 * 3. for `aws-chunked` uploads (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`), re-signs every chunk
 *    signature in the body stream, chained from the new seed signature, chunk by chunk without
 *    buffering (chunk signatures are fixed-length, so `Content-Length` is unchanged).
 *
 * Region and service come from the request's credential scope. The payload hash is the one the
 * client declared (`x-amz-content-sha256`, as S3 requires; `UNSIGNED-PAYLOAD` included) or, when
 * there is none, the hash of the body, which then has to be one sluice read whole.
 *
 * Canonical forms follow the SigV4 specification (and botocore, whose S3 signer does not
 * normalize or re-encode the path while every other service's does).
 *
 * Why one file of ~500 lines: parsing the client's signature, the canonical request, verifying,
 * re-signing and the chunk-by-chunk body transform share the canonical forms and the signing-key
 * chain; split apart, each piece would export its internals to the others.
 *
 * @module
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import type { Credential } from "../../policy/types.ts";
import {
  type EnvReader,
  readSecretField,
  SecretError,
  type SecretValue,
  type TextFileReader,
} from "./secrets.ts";

/** The real keys of an aws_sigv4 credential. */
export type AwsKeys = {
  accessKeyId: SecretValue;
  secretAccessKey: SecretValue;
  sessionToken?: SecretValue;
};

/** The placeholder keys the workload signs with (not secret). */
export type AwsPlaceholders = {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
};

/** The placeholder map keys of an aws_sigv4 credential's further placeholders. */
export const SECRET_KEY_SUFFIX = "#secret_access_key";
export const SESSION_TOKEN_SUFFIX = "#session_token";

/** An aws_sigv4 credential's placeholders, from the map `placeholdersFor` made. */
export function awsPlaceholders(
  name: string,
  placeholders: ReadonlyMap<string, string>,
): AwsPlaceholders {
  const token = placeholders.get(name + SESSION_TOKEN_SUFFIX);
  return {
    accessKeyId: placeholders.get(name)!,
    secretAccessKey: placeholders.get(name + SECRET_KEY_SUFFIX)!,
    ...(token ? { sessionToken: token } : {}),
  };
}

/**
 * Reads every aws_sigv4 credential's keys.
 *
 * @throws {SecretError} listing every problem (names and sources, never values)
 */
export async function loadAwsKeys(
  creds: readonly Credential[],
  env: EnvReader,
  readFile: TextFileReader,
  directory: string | undefined,
): Promise<Map<string, AwsKeys>> {
  const out = new Map<string, AwsKeys>();
  const problems: string[] = [];
  for (const c of creds) {
    const s = c.sigv4;
    if (!s) continue;
    const io = { env, readFile, directory };
    const read = (field: string, from: typeof s.accessKeyId | undefined) =>
      readSecretField(
        c.name,
        field,
        from,
        io,
        problems,
        (v) =>
          /^[\x21-\x7e]{8,}$/.test(v)
            ? null
            : "is not a key (at least 8 printable characters, no spaces)",
      );
    const accessKeyId = await read("access_key_id", s.accessKeyId);
    const secretAccessKey = await read("secret_access_key", s.secretAccessKey);
    const sessionToken = await read("session_token", s.sessionToken);
    if (accessKeyId && secretAccessKey) {
      out.set(c.name, { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) });
    }
  }
  if (problems.length) throw new SecretError(problems);
  return out;
}

/** What a request's SigV4 signature declares. */
export type SigV4Auth = {
  where: "header" | "query";
  keyId: string;
  /** yyyymmdd, region, service: the credential scope. */
  date: string;
  region: string;
  service: string;
  signedHeaders: string[];
  signature: string;
  /** The request time, `x-amz-date` (or `X-Amz-Date`), as sent. */
  amzDate: string;
};

const ALGORITHM = "AWS4-HMAC-SHA256";
const AUTH_HEADER =
  /^AWS4-HMAC-SHA256\s+Credential=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,\s*Signature=([0-9a-f]{64})\s*$/;

function header(headers: readonly [string, string][], name: string): string | undefined {
  for (const [n, v] of headers) if (n.toLowerCase() === name) return v;
  return undefined;
}

/** The query's pairs, percent-decoded (`+` is a plus: SigV4 encodes spaces as %20). */
function queryPairs(query: string): [string, string][] {
  if (!query) return [];
  return query.split("&").filter((p) => p !== "").map((p) => {
    const i = p.indexOf("=");
    const k = i < 0 ? p : p.slice(0, i);
    const v = i < 0 ? "" : p.slice(i + 1);
    return [decode(k), decode(v)];
  });
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** SigV4's URI encoding: everything but the unreserved characters, upper-case hex. */
export function awsEncode(s: string, keepSlash = false): string {
  let out = "";
  for (const b of new TextEncoder().encode(s)) {
    const c = String.fromCharCode(b);
    if (/[A-Za-z0-9\-_.~]/.test(c) || (keepSlash && c === "/")) out += c;
    else out += `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/**
 * Reads the SigV4 signature of a request (header or query auth).
 *
 * @returns null when the request is not SigV4-signed; `{ error }` when it claims to be but the
 *   fields do not parse
 */
export function parseSigV4(
  target: string,
  headers: readonly [string, string][],
): SigV4Auth | null | { error: string } {
  const auth = header(headers, "authorization");
  const q = target.indexOf("?");
  const query = q < 0 ? "" : target.slice(q + 1);
  const scope = (credential: string) => {
    const parts = credential.split("/");
    if (parts.length !== 5 || parts[4] !== "aws4_request" || !/^\d{8}$/.test(parts[1])) {
      return null;
    }
    return { keyId: parts[0], date: parts[1], region: parts[2], service: parts[3] };
  };
  if (auth !== undefined && auth.startsWith(ALGORITHM)) {
    const m = AUTH_HEADER.exec(auth);
    const s = m && scope(m[1]);
    const amzDate = header(headers, "x-amz-date");
    if (!m || !s || !amzDate) {
      return { error: "the AWS4-HMAC-SHA256 Authorization header or x-amz-date does not parse" };
    }
    return {
      where: "header",
      ...s,
      signedHeaders: m[2].split(";"),
      signature: m[3],
      amzDate,
    };
  }
  if (!/(^|&)X-Amz-Algorithm=/.test(query)) return null;
  const p = new Map(queryPairs(query));
  const s = scope(p.get("X-Amz-Credential") ?? "");
  const sig = p.get("X-Amz-Signature") ?? "";
  const amzDate = p.get("X-Amz-Date");
  if (p.get("X-Amz-Algorithm") !== ALGORITHM || !s || !/^[0-9a-f]{64}$/.test(sig) || !amzDate) {
    return { error: "the presigned URL's X-Amz-* parameters do not parse" };
  }
  return {
    where: "query",
    ...s,
    signedHeaders: (p.get("X-Amz-SignedHeaders") ?? "host").split(";"),
    signature: sig,
    amzDate,
  };
}

const sha256Hex = (data: string | Uint8Array) => createHash("sha256").update(data).digest("hex");
export const EMPTY_SHA256 = sha256Hex("");

function hmac(key: string | Uint8Array, data: string): Uint8Array {
  return createHmac("sha256", key).update(data).digest();
}

function hmacHex(key: Uint8Array, data: string): string {
  return createHmac("sha256", key).update(data).digest("hex");
}

/** Signing keys by secret and scope: four HMACs each, and a scope changes once a day. */
const keyCache = new Map<string, Uint8Array>();

/** The signing key of a scope (kSigning), cached (bench/credential_kinds_bench.ts: ~76 -> ~40 µs per re-signed request). */
export function signingKey(secret: string, date: string, region: string, service: string) {
  const k = `${secret}\0${date}\0${region}\0${service}`;
  let key = keyCache.get(k);
  if (!key) {
    if (keyCache.size >= 64) keyCache.clear();
    key = hmac(hmac(hmac(hmac(`AWS4${secret}`, date), region), service), "aws4_request");
    keyCache.set(k, key);
  }
  return key;
}

/** What is signed: the request as the signer saw it. */
export type SignedRequest = {
  method: string;
  /** The origin-form target, query included, as it is (or was) on the wire. */
  target: string;
  /** Header fields; `host` must be among them. */
  headers: readonly [string, string][];
  /** The payload hash to sign with. */
  payloadHash: string;
};

/** The canonical request (SigV4 task 1), signing with `signedHeaders`. */
export function canonicalRequest(
  r: SignedRequest,
  auth: Pick<SigV4Auth, "where" | "service" | "signedHeaders">,
): string {
  const q = r.target.indexOf("?");
  const rawPath = q < 0 ? r.target : r.target.slice(0, q);
  // S3 signs the path as sent; other services sign it encoded once more.
  const path = auth.service === "s3" ? rawPath || "/" : awsEncode(rawPath || "/", true);
  const pairs = queryPairs(q < 0 ? "" : r.target.slice(q + 1))
    .filter(([k]) => !(auth.where === "query" && k === "X-Amz-Signature"))
    .map(([k, v]) => [awsEncode(k), awsEncode(v)])
    .sort(([a, x], [b, y]) => (a < b ? -1 : a > b ? 1 : x < y ? -1 : x > y ? 1 : 0));
  const lines = auth.signedHeaders.map((name) => {
    const values = r.headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) =>
      v.trim().replace(/\s+/g, " ")
    );
    return `${name}:${values.join(",")}\n`;
  });
  return [
    r.method,
    path,
    pairs.map(([k, v]) => `${k}=${v}`).join("&"),
    lines.join(""),
    auth.signedHeaders.join(";"),
    r.payloadHash,
  ].join("\n");
}

/** The signature of a request with a secret key (SigV4 tasks 2 and 3). */
export function signature(
  r: SignedRequest,
  auth: Pick<SigV4Auth, "where" | "service" | "signedHeaders" | "date" | "region" | "amzDate">,
  secret: string,
): string {
  const scope = `${auth.date}/${auth.region}/${auth.service}/aws4_request`;
  const toSign = `${ALGORITHM}\n${auth.amzDate}\n${scope}\n${sha256Hex(canonicalRequest(r, auth))}`;
  return hmacHex(signingKey(secret, auth.date, auth.region, auth.service), toSign);
}

function sameHex(a: string, b: string): boolean {
  return a.length === b.length &&
    timingSafeEqual(new TextEncoder().encode(a), new TextEncoder().encode(b));
}

/** The largest aws-chunked chunk sluice holds while hashing it (SDKs send 64 KiB to 8 MiB). */
const MAX_CHUNK = 16 << 20;

/** The streaming payload mode of an aws-chunked body, from `x-amz-content-sha256`. */
const SIGNED_CHUNKS = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";

/** A request re-signed with the real keys, or why it cannot be. */
export type Resigned =
  | {
    ok: true;
    target: string;
    headers: [string, string][];
    /** For aws-chunked uploads: re-signs each chunk's signature. */
    body?: TransformStream<Uint8Array, Uint8Array>;
  }
  | { ok: false; reason: string };

/**
 * Verifies a request signed with the placeholder keys and re-signs it with the real ones.
 *
 * @param received the request as the client sent it (its target and fields, Host included)
 * @param outgoing the target and fields sluice will send (Host included; placeholders of other
 *   credentials already substituted)
 * @param body the whole body, when sluice read it (needed only without x-amz-content-sha256)
 */
export function resign(
  name: string,
  auth: SigV4Auth,
  received: { method: string; target: string; headers: readonly [string, string][] },
  outgoing: { target: string; headers: readonly [string, string][] },
  body: Uint8Array | null | undefined,
  ph: AwsPlaceholders,
  keys: AwsKeys,
): Resigned {
  const declared = header(received.headers, "x-amz-content-sha256");
  let payloadHash: string;
  if (declared !== undefined) payloadHash = declared;
  else if (auth.where === "query" && auth.service === "s3") payloadHash = "UNSIGNED-PAYLOAD";
  else if (body === null) payloadHash = EMPTY_SHA256;
  else if (body !== undefined) payloadHash = sha256Hex(body);
  else {
    return {
      ok: false,
      reason: `credential ${name}: the request has no x-amz-content-sha256 and a streamed body; ` +
        "sluice re-signs such requests only with bodies of up to 1 MiB and a Content-Length",
    };
  }
  if (
    payloadHash.startsWith("STREAMING-") && payloadHash !== SIGNED_CHUNKS &&
    payloadHash !== "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
  ) {
    return { ok: false, reason: `credential ${name}: ${payloadHash} uploads are not supported` };
  }
  if (!auth.signedHeaders.includes("host")) {
    return { ok: false, reason: `credential ${name}: the signature does not cover Host` };
  }
  const got = signature({ ...received, payloadHash }, auth, ph.secretAccessKey);
  if (!sameHex(got, auth.signature)) {
    return {
      ok: false,
      reason: `credential ${name}: the request names the placeholder key id but its signature ` +
        "does not verify with the placeholder secret key (a forged or altered request)",
    };
  }
  const token = keys.sessionToken?.reveal();
  // The session token goes where its placeholder was; sent without one, it is added and signed.
  let headers = outgoing.headers.map(([n, v]): [string, string] =>
    n.toLowerCase() === "x-amz-security-token" && ph.sessionToken && v === ph.sessionToken && token
      ? [n, token]
      : [n, v]
  );
  let signedHeaders = auth.signedHeaders;
  if (auth.where === "header" && token && !header(headers, "x-amz-security-token")) {
    headers.push(["x-amz-security-token", token]);
    signedHeaders = [...signedHeaders, "x-amz-security-token"].sort();
  }
  const realId = keys.accessKeyId.reveal();
  const secret = keys.secretAccessKey.reveal();
  const scope = `${auth.date}/${auth.region}/${auth.service}/aws4_request`;
  if (auth.where === "header") {
    headers = headers.filter(([n]) => n.toLowerCase() !== "authorization");
    const a = { ...auth, signedHeaders };
    const sig = signature(
      { method: received.method, target: outgoing.target, headers, payloadHash },
      a,
      secret,
    );
    headers.push([
      "authorization",
      `${ALGORITHM} Credential=${realId}/${scope}, SignedHeaders=${
        signedHeaders.join(";")
      }, Signature=${sig}`,
    ]);
    const chunks = payloadHash === SIGNED_CHUNKS
      ? chunkResigner(name, auth, { seed: auth.signature, secret: ph.secretAccessKey }, {
        seed: sig,
        secret,
      })
      : undefined;
    return { ok: true, target: outgoing.target, headers, ...(chunks ? { body: chunks } : {}) };
  }
  // Presigned: the query carries the key id, the token and the signature.
  const q = outgoing.target.indexOf("?");
  const path = outgoing.target.slice(0, q);
  const params = outgoing.target.slice(q + 1).split("&").filter((p) => {
    const k = decode(p.split("=")[0]);
    return k !== "X-Amz-Signature";
  }).map((p) => {
    const k = decode(p.split("=")[0]);
    if (k === "X-Amz-Credential") return `X-Amz-Credential=${awsEncode(`${realId}/${scope}`)}`;
    if (k === "X-Amz-Security-Token" && token) return `X-Amz-Security-Token=${awsEncode(token)}`;
    return p;
  });
  const unsigned = `${path}?${params.join("&")}`;
  const sig = signature(
    { method: received.method, target: unsigned, headers, payloadHash },
    auth,
    secret,
  );
  return { ok: true, target: `${unsigned}&X-Amz-Signature=${sig}`, headers };
}

/**
 * The aws-chunked body transform: each `size;chunk-signature=SIG\r\n DATA \r\n` chunk's
 * signature is checked against the placeholder chain and replaced by the real chain's.
 * Chunk signature = HMAC(kSigning, "AWS4-HMAC-SHA256-PAYLOAD\n" time "\n" scope "\n" previous
 * "\n" hash("") "\n" hash(data)). The data passes as it comes; only the hash needs all of a
 * chunk, and it is computed incrementally.
 */
function chunkResigner(
  name: string,
  auth: SigV4Auth,
  placeholder: { seed: string; secret: string },
  real: { seed: string; secret: string },
): TransformStream<Uint8Array, Uint8Array> {
  const scope = `${auth.date}/${auth.region}/${auth.service}/aws4_request`;
  const phKey = signingKey(placeholder.secret, auth.date, auth.region, auth.service);
  const realKey = signingKey(real.secret, auth.date, auth.region, auth.service);
  const chunkSig = (key: Uint8Array, prev: string, dataHash: string) =>
    hmacHex(
      key,
      `AWS4-HMAC-SHA256-PAYLOAD\n${auth.amzDate}\n${scope}\n${prev}\n${EMPTY_SHA256}\n${dataHash}`,
    );
  let prevPh = placeholder.seed;
  let prevReal = real.seed;
  /** Bytes of a chunk head being read, or null while inside data. */
  let head: number[] = [];
  let remaining = 0; // data bytes left in the current chunk
  let trailer = 0; // CRLF bytes left after the data
  let hash = createHash("sha256");
  let pendingHead: { size: number; sig: string; prefix: string } | null = null;
  let done = false;
  const fail = (why: string) => {
    throw new Error(`credential ${name}: aws-chunked body: ${why}`);
  };
  // A chunk's new head can be written only once its data is hashed: hold the data.
  let held: Uint8Array[] = [];
  return new TransformStream({
    transform(chunk, controller) {
      let i = 0;
      while (i < chunk.length) {
        if (done && trailer === 0) fail("bytes after the final chunk");
        if (pendingHead === null && trailer === 0) {
          // Reading a head up to CRLF.
          const b = chunk[i++];
          head.push(b);
          if (head.length > 200) fail("a chunk header is too long");
          if (head.length >= 2 && head[head.length - 2] === 13 && b === 10) {
            const text = String.fromCharCode(...head.slice(0, -2));
            const m = /^([0-9a-fA-F]+);chunk-signature=([0-9a-f]{64})$/.exec(text);
            if (!m) fail("a chunk header does not parse");
            const size = parseInt(m![1], 16);
            if (size > MAX_CHUNK) {
              fail(`a chunk of ${size} bytes (sluice holds at most ${MAX_CHUNK})`);
            }
            pendingHead = { size, sig: m![2], prefix: m![1] };
            remaining = size;
            head = [];
            hash = createHash("sha256");
            held = [];
            if (size === 0) i = finishChunk(controller, i);
          }
          continue;
        }
        if (pendingHead !== null && remaining > 0) {
          const n = Math.min(remaining, chunk.length - i);
          const part = chunk.subarray(i, i + n);
          hash.update(part);
          held.push(part.slice());
          remaining -= n;
          i += n;
          if (remaining === 0) i = finishChunk(controller, i);
          continue;
        }
        // The CRLF after a chunk's data.
        const b = chunk[i++];
        if ((trailer === 2 && b !== 13) || (trailer === 1 && b !== 10)) fail("no CRLF after data");
        trailer--;
        if (trailer === 0) controller.enqueue(new Uint8Array([13, 10]));
      }
      function finishChunk(
        c: TransformStreamDefaultController<Uint8Array>,
        at: number,
      ): number {
        const h = pendingHead!;
        const dataHash = h.size === 0 ? EMPTY_SHA256 : hash.digest("hex");
        const want = chunkSig(phKey, prevPh, dataHash);
        if (!sameHex(want, h.sig)) {
          fail("a chunk signature does not verify with the placeholder key");
        }
        prevPh = h.sig;
        prevReal = chunkSig(realKey, prevReal, dataHash);
        c.enqueue(new TextEncoder().encode(`${h.prefix};chunk-signature=${prevReal}\r\n`));
        for (const p of held) c.enqueue(p);
        held = [];
        pendingHead = null;
        trailer = 2;
        if (h.size === 0) done = true;
        return at;
      }
    },
    flush() {
      if (!done || trailer !== 0) fail("the body ended inside a chunk");
    },
  });
}
