/**
 * OAuth2 credentials (`kind: oauth2`): sluice holds the long-lived material (a refresh token,
 * a client secret, or a service-account key) and mints the short-lived access tokens it
 * substitutes for the workload's placeholder. The workload never sees either: its placeholder is
 * replaced only toward the credential's hosts (as for a static credential), and the current
 * token, the four before it and the material are scrubbed from responses (a token older than
 * that has expired long since; docs/credentials.md).
 *
 * - Grants: `refresh_token` (RFC 6749 §6), `client_credentials` (§4.4), `jwt_bearer` (RFC 7523,
 *   an RS256 assertion as Google's service accounts use; the key may be the service-account JSON).
 * - One {@link TokenCell} per credential holds the current token; it is fetched on first use,
 *   reused until shortly before `expires_in` runs out, and renewed once when the API answers 401.
 *   Concurrent requests that need a token share one fetch (single flight).
 * - Cells outlive policy reloads while the credential's endpoint, grant and material are
 *   unchanged ({@link OAuth2Tokens.cell}), so a reload does not throw away a token or a rotated
 *   refresh token; a rotated refresh token also outlives a restart, in the state directory
 *   ({@link fileRefreshStore}), because providers that rotate revoke the one it replaced.
 * - The HTTP exchange itself is not here: the gateway gives {@link OAuth2Tokens.connect} a
 *   function that posts through sluice's own upstream client (policy, resolver, trust), so the
 *   token endpoint is reached exactly as `network` and `tls.upstream` say.
 *
 * @module
 */
import { createHash, createPrivateKey, type KeyObject, sign } from "node:crypto";
import type { Credential, OAuth2Spec } from "../../policy/types.ts";
import {
  type EnvReader,
  formatSource,
  readSecretField,
  SecretError,
  SecretValue,
  type TextFileReader,
} from "./secrets.ts";

/** The long-lived material of one oauth2 credential, as loaded from its sources. */
export type OAuth2Material = {
  clientSecret?: SecretValue;
  refreshToken?: SecretValue;
  /** jwt_bearer: the signing key and the issuer (from the policy or the service-account JSON). */
  key?: { value: SecretValue; object: KeyObject; issuer: string };
};

/**
 * Reads every oauth2 credential's material; a key is parsed (PEM RSA, or a service-account JSON
 * file with `private_key` and `client_email`) so a bad one stops the start, not the first request.
 *
 * @throws {SecretError} listing every problem (names and sources, never values)
 */
export async function loadOAuth2Material(
  creds: readonly Credential[],
  env: EnvReader,
  readFile: TextFileReader,
  directory: string | undefined,
): Promise<Map<string, OAuth2Material>> {
  const out = new Map<string, OAuth2Material>();
  const problems: string[] = [];
  for (const c of creds) {
    const spec = c.oauth2;
    if (!spec) continue;
    const m: OAuth2Material = {};
    const io = { env, readFile, directory };
    const read = (field: string, from: OAuth2Spec["clientSecret"]) =>
      readSecretField(c.name, field, from, io, problems, (v) => v === "" ? "is empty" : null);
    m.clientSecret = await read("client_secret", spec.clientSecret);
    m.refreshToken = await read("refresh_token", spec.refreshToken);
    const key = await read("key", spec.key);
    if (key) {
      const parsed = parseKey(key.reveal(), spec.issuer);
      if (typeof parsed === "string") {
        problems.push(`credential ${c.name}: ${formatSource(spec.key!)} ${parsed}`);
      } else m.key = { value: key, ...parsed };
    }
    out.set(c.name, m);
  }
  if (problems.length) throw new SecretError(problems);
  return out;
}

/** A PEM RSA key, or a service-account JSON key; the issuer from the policy or the JSON. */
function parseKey(
  text: string,
  issuer: string | undefined,
): { object: KeyObject; issuer: string } | string {
  let pem = text;
  if (text.trimStart().startsWith("{")) {
    let json: { private_key?: unknown; client_email?: unknown };
    try {
      json = JSON.parse(text);
    } catch {
      return "is neither a PEM key nor valid JSON";
    }
    if (typeof json.private_key !== "string") {
      return "is JSON without a private_key (expected a service-account key file)";
    }
    pem = json.private_key;
    if (issuer === undefined && typeof json.client_email === "string") issuer = json.client_email;
  }
  let object: KeyObject;
  try {
    object = createPrivateKey(pem);
  } catch {
    return "does not hold a PEM private key";
  }
  if (object.asymmetricKeyType !== "rsa") {
    return `holds a ${object.asymmetricKeyType} key; the jwt_bearer grant signs with RS256 (RSA)`;
  }
  if (!issuer) return "gives no issuer: set `issuer:` (the service account's email)";
  return { object, issuer };
}

const encoder = new TextEncoder();

function base64url(bytes: Uint8Array | string): string {
  const b = typeof bytes === "string" ? encoder.encode(bytes) : bytes;
  let s = "";
  for (const x of b) s += String.fromCharCode(x);
  return btoa(s).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/**
 * The RS256 JWT assertion of the jwt_bearer grant (RFC 7523 §2.1): `iss`, `aud` (the audience,
 * else the token URL), `iat`, `exp` one hour on, and `scope` and `sub` when set (Google reads
 * the scope from the assertion).
 */
export function jwtAssertion(
  spec: OAuth2Spec,
  key: NonNullable<OAuth2Material["key"]>,
  nowSec: number,
): string {
  const header = base64url(JSON.stringify({ alg: "RS256", typ: "JWT" }));
  const claims: Record<string, unknown> = {
    iss: key.issuer,
    aud: spec.audience ?? spec.tokenUrl,
    iat: nowSec,
    exp: nowSec + 3600,
  };
  if (spec.scope) claims.scope = spec.scope;
  if (spec.subject) claims.sub = spec.subject;
  const input = `${header}.${base64url(JSON.stringify(claims))}`;
  return `${input}.${base64url(sign("sha256", encoder.encode(input), key.object))}`;
}

/** A token request: the form body and the fields beside it (client authentication). */
export type TokenRequest = { form: string; headers: [string, string][] };

/**
 * The token request for a credential's grant.
 *
 * @param refreshToken the refresh token to use (the latest one the endpoint gave, else the
 *   material's)
 */
export function tokenRequest(
  spec: OAuth2Spec,
  material: OAuth2Material,
  refreshToken: SecretValue | undefined,
  nowSec: number,
): TokenRequest {
  const form = new URLSearchParams();
  const headers: [string, string][] = [
    ["content-type", "application/x-www-form-urlencoded"],
    ["accept", "application/json"],
  ];
  switch (spec.grant) {
    case "refresh_token":
      form.set("grant_type", "refresh_token");
      form.set("refresh_token", refreshToken?.reveal() ?? "");
      if (spec.scope) form.set("scope", spec.scope);
      break;
    case "client_credentials":
      form.set("grant_type", "client_credentials");
      if (spec.scope) form.set("scope", spec.scope);
      break;
    case "jwt_bearer":
      form.set("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer");
      form.set("assertion", jwtAssertion(spec, material.key!, nowSec));
      return { form: form.toString(), headers };
  }
  const secret = material.clientSecret?.reveal();
  if (spec.clientId !== undefined && secret !== undefined && spec.clientAuth === "basic") {
    // RFC 6749 §2.3.1: both parts form-encoded before Basic.
    const enc = (s: string) => new URLSearchParams({ x: s }).toString().slice(2);
    headers.push(["authorization", `Basic ${btoa(`${enc(spec.clientId)}:${enc(secret)}`)}`]);
  } else {
    if (spec.clientId !== undefined) form.set("client_id", spec.clientId);
    if (secret !== undefined) form.set("client_secret", secret);
  }
  return { form: form.toString(), headers };
}

/** What a token endpoint answered, read: a token, or why there is none (never a value). */
export type TokenAnswer =
  | { ok: true; accessToken: string; expiresIn: number | null; refreshToken?: string }
  | { ok: false; reason: string };

/**
 * Reads a token endpoint's answer (RFC 6749 §5.1, §5.2). The reason of a failure names the
 * status and the standard `error` code only: `error_description` is the server's free text.
 */
export function parseTokenResponse(status: number, body: Uint8Array): TokenAnswer {
  let json: Record<string, unknown> | undefined;
  try {
    const v = JSON.parse(new TextDecoder().decode(body));
    if (v && typeof v === "object" && !Array.isArray(v)) json = v;
  } catch {
    // Reported below.
  }
  if (status !== 200) {
    const code = typeof json?.error === "string" && /^[\x20-\x7e]{1,64}$/.test(json.error)
      ? ` (${json.error})`
      : "";
    return { ok: false, reason: `the token endpoint answered ${status}${code}` };
  }
  if (!json) return { ok: false, reason: "the token endpoint's answer is not a JSON object" };
  const token = json.access_token;
  if (typeof token !== "string" || token.length === 0) {
    return { ok: false, reason: "the token endpoint's answer has no access_token" };
  }
  if (!/^[\x21-\x7e]+$/.test(token)) {
    return { ok: false, reason: "the access token holds characters a header cannot carry" };
  }
  const e = typeof json.expires_in === "string" ? Number(json.expires_in) : json.expires_in;
  const expiresIn = typeof e === "number" && Number.isFinite(e) && e > 0 ? e : null;
  const refresh = typeof json.refresh_token === "string" && json.refresh_token
    ? json.refresh_token
    : undefined;
  return { ok: true, accessToken: token, expiresIn, ...(refresh ? { refreshToken: refresh } : {}) };
}

/** What the gateway's token fetcher returns: the status and the body (bounded by the caller). */
export type TokenResponse = { status: number; body: Uint8Array };

/** Posts a token request for a credential; rejects when the endpoint cannot be reached. */
export type TokenFetch = (cred: Credential, req: TokenRequest) => Promise<TokenResponse>;

/** One token fetch, for the audit trail and metrics (never a value). */
export type TokenEvent = {
  credential: string;
  grant: OAuth2Spec["grant"];
  tokenUrl: string;
  ok: boolean;
  status?: number;
  reason: string;
  durationMs: number;
};

/**
 * Where a rotated refresh token outlives the process: keyed by credential and by a fingerprint
 * of the refresh token its source holds, so a source that is given a new token wins again.
 */
export type RefreshStore = {
  load(credential: string, source: string): string | undefined;
  save(credential: string, source: string, token: string): void;
};

/** A SHA-256 fingerprint of a value (hex): what the store keeps of the source's token. */
function fingerprint(v: SecretValue): string {
  return createHash("sha256").update(v.revealBytes()).digest("hex");
}

/**
 * The refresh store in sluice's state directory: one JSON file, 0600, replaced whole on each
 * save (write then rename). `sluice run` keeps none (its state is the run's own).
 */
export function fileRefreshStore(path: string): RefreshStore {
  const read = (): Record<string, { source: string; token: string }> => {
    try {
      return JSON.parse(Deno.readTextFileSync(path));
    } catch {
      return {};
    }
  };
  return {
    load(credential, source) {
      const e = read()[credential];
      return e && e.source === source && typeof e.token === "string" ? e.token : undefined;
    },
    save(credential, source, token) {
      const all = read();
      all[credential] = { source, token };
      const tmp = `${path}.${Deno.pid}.tmp`;
      Deno.writeTextFileSync(tmp, JSON.stringify(all), { mode: 0o600 });
      Deno.chmodSync(tmp, 0o600);
      Deno.renameSync(tmp, path);
    },
  };
}

/** No access token could be had for a credential; the message names it and why. */
export class TokenError extends Error {
  readonly credential: string;

  /** @param credential the credential's name @param reason why (never a value) */
  constructor(credential: string, reason: string) {
    super(`credential ${credential}: no access token: ${reason}`);
    this.name = "TokenError";
    this.credential = credential;
  }
}

/** A token is renewed this long before it expires (or a tenth of its life, if shorter). */
export const EXPIRY_MARGIN_MS = 60_000;
/** How long a token without `expires_in` is used (until a 401 says otherwise). */
export const DEFAULT_LIFETIME_MS = 3_600_000;
/** Earlier tokens kept for scrubbing responses (an API may echo a token it was given). */
const KEEP_PREVIOUS = 4;

/** The token state of one credential: see the module doc. */
export class TokenCell {
  readonly spec: OAuth2Spec;
  readonly material: OAuth2Material;
  readonly credential: Credential;
  current: SecretValue | null = null;
  /** Earlier tokens, newest first, still scrubbed from responses. */
  previous: SecretValue[] = [];
  /** The newest refresh token the endpoint returned (rotation), else the material's. */
  refreshToken: SecretValue | undefined;
  #expiresAt = 0;
  #inflight: Promise<SecretValue> | null = null;
  readonly #owner: OAuth2Tokens;

  constructor(owner: OAuth2Tokens, credential: Credential, material: OAuth2Material) {
    this.#owner = owner;
    this.credential = credential;
    this.spec = credential.oauth2!;
    this.material = material;
    // A refresh token the endpoint rotated earlier (before a restart) replaces the source's, as
    // long as the source still holds the one it was rotated from.
    const rotated = material.refreshToken &&
      owner.store?.load(credential.name, fingerprint(material.refreshToken));
    this.refreshToken = rotated
      ? new SecretValue(`${credential.name}.refresh_token`, rotated)
      : material.refreshToken;
  }

  /** Every value of this credential to scrub from responses: tokens and material. */
  scrubValues(): SecretValue[] {
    const m = this.material;
    return [
      ...(this.current ? [this.current] : []),
      ...this.previous,
      ...[m.clientSecret, m.refreshToken, this.refreshToken, m.key?.value].filter((v) =>
        v !== undefined
      ),
    ];
  }

  /** A usable token: the cached one, or one fetch shared by every caller waiting now. */
  token(): Promise<SecretValue> {
    if (this.current && this.#owner.now() < this.#expiresAt) {
      return Promise.resolve(this.current);
    }
    return this.#inflight ??= this.#fetch().finally(() => {
      this.#inflight = null;
    });
  }

  /**
   * The API refused `used` (401): forget it and fetch a new one, unless another request already
   * did. Resolves to the token to retry with, or null when there is none newer.
   */
  async renew(used: SecretValue): Promise<SecretValue | null> {
    if (this.current === used) {
      this.#expiresAt = 0;
    }
    const next = await this.token();
    return next === used ? null : next;
  }

  async #fetch(): Promise<SecretValue> {
    const started = this.#owner.now();
    const name = this.credential.name;
    let status: number | undefined;
    const report = (ok: boolean, reason: string) =>
      this.#owner.report({
        credential: name,
        grant: this.spec.grant,
        tokenUrl: this.spec.tokenUrl,
        ok,
        status,
        reason,
        durationMs: this.#owner.now() - started,
      });
    let answer: TokenAnswer;
    try {
      const req = tokenRequest(
        this.spec,
        this.material,
        this.refreshToken,
        Math.floor(Date.now() / 1000),
      );
      const res = await this.#owner.fetch(this.credential, req);
      status = res.status;
      answer = parseTokenResponse(res.status, res.body);
    } catch (e) {
      answer = {
        ok: false,
        reason: `the token endpoint could not be reached: ${(e as Error).message}`,
      };
    }
    if (answer.ok) {
      const problem = this.#owner.check(name, answer.accessToken);
      if (problem) answer = { ok: false, reason: problem };
    }
    if (!answer.ok) {
      report(false, answer.reason);
      throw new TokenError(name, answer.reason);
    }
    const token = new SecretValue(`${name}.access_token`, answer.accessToken);
    if (this.current) this.previous = [this.current, ...this.previous].slice(0, KEEP_PREVIOUS);
    this.current = token;
    if (answer.refreshToken) {
      this.refreshToken = new SecretValue(`${name}.refresh_token`, answer.refreshToken);
      if (this.material.refreshToken) {
        this.#owner.store?.save(name, fingerprint(this.material.refreshToken), answer.refreshToken);
      }
    }
    const life = answer.expiresIn === null ? DEFAULT_LIFETIME_MS : answer.expiresIn * 1000;
    this.#expiresAt = this.#owner.now() + life - Math.min(EXPIRY_MARGIN_MS, life / 10);
    this.#owner.changed();
    report(
      true,
      `access token issued for ${
        answer.expiresIn === null ? "an unstated time" : `${answer.expiresIn} s`
      }` +
        (answer.refreshToken ? "; the refresh token was rotated" : ""),
    );
    return token;
  }
}

/**
 * Every oauth2 credential's token state, shared by the brokers of successive policy loads.
 */
export class OAuth2Tokens {
  /** Bumped whenever any cell's token changes: brokers rebuild what depends on tokens. */
  version = 0;
  readonly now: () => number;
  #fetch: TokenFetch | null = null;
  #cells = new Map<string, TokenCell>();
  #onEvent: (e: TokenEvent) => void;
  /** Checks a new token against the broker's rules (no placeholder inside, and so on). */
  check: (credential: string, token: string) => string | null = () => null;

  /** Where rotated refresh tokens are kept across restarts (none: memory only). */
  readonly store: RefreshStore | undefined;

  constructor(
    opts: { now?: () => number; onEvent?: (e: TokenEvent) => void; store?: RefreshStore } = {},
  ) {
    this.now = opts.now ?? (() => performance.now());
    this.#onEvent = opts.onEvent ?? (() => {});
    this.store = opts.store;
  }

  /** Sets how token requests are sent (the gateway's upstream client). */
  connect(fetch: TokenFetch, onEvent?: (e: TokenEvent) => void): void {
    this.#fetch = fetch;
    if (onEvent) this.#onEvent = onEvent;
  }

  /** @internal posts through the connected fetcher */
  fetch(cred: Credential, req: TokenRequest): Promise<TokenResponse> {
    if (!this.#fetch) return Promise.reject(new Error("sluice is not serving yet"));
    return this.#fetch(cred, req);
  }

  /** @internal */
  report(e: TokenEvent): void {
    this.#onEvent(e);
  }

  /** @internal */
  changed(): void {
    this.version++;
  }

  /**
   * The cell for a credential: the existing one when name, endpoint, grant and material are
   * unchanged (a reload keeps its token and any rotated refresh token), else a new one.
   */
  cell(cred: Credential, material: OAuth2Material): TokenCell {
    // The material by fingerprint: no copy of a secret is kept as a map key.
    const key = JSON.stringify([
      cred.name,
      cred.oauth2,
      ...[material.clientSecret, material.refreshToken, material.key?.value].map((v) =>
        v && fingerprint(v)
      ),
    ]);
    let c = this.#cells.get(key);
    if (!c) {
      c = new TokenCell(this, cred, material);
      this.#cells.set(key, c);
    }
    return c;
  }
}
