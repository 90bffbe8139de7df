/**
 * Credential values and their placeholders: loading the real secrets from
 * where the policy says they live, wrapping them so they cannot leak by
 * accident, and deriving the stable placeholders the workload holds instead.
 *
 * Nothing in this module ever puts a secret value in an error message, a log
 * line or a string conversion: errors name the credential and its source.
 *
 * @module
 */
import type { Credential, CredentialSource } from "../../policy/types.ts";

/**
 * A credential could not be loaded, or its value cannot be brokered safely.
 * Names credentials and sources, never values. `problems` holds one line per
 * problem; the message lists them all.
 */
export class SecretError extends Error {
  /** One sentence per problem, each starting with `credential NAME:`. */
  readonly problems: readonly string[];

  /**
   * @param problems one sentence per problem (never containing a secret value)
   * @param options the underlying error, if any
   */
  constructor(problems: readonly string[], options?: { cause?: unknown }) {
    super(
      problems.length === 1
        ? problems[0]
        : `${problems.length} credential problems:\n${problems.map((p) => `  ${p}`).join("\n")}`,
      options,
    );
    this.name = "SecretError";
    this.problems = problems;
  }
}

const encoder = new TextEncoder();

/**
 * A credential's real value. It prints as `[secret NAME]` everywhere
 * (`String()`, template literals, `JSON.stringify`, `Deno.inspect`,
 * `console.log`, node's `util.inspect`); the value itself is reachable only
 * through {@link SecretValue.reveal} and {@link SecretValue.revealBytes}, so
 * every use of it is a deliberate, greppable call.
 */
export class SecretValue {
  /** The credential's name (not secret). */
  readonly name: string;
  // A true private field: invisible to inspection, spreading, structuredClone and JSON.
  #value: string;
  #bytes: Uint8Array | undefined;

  /**
   * @param name the credential's name, shown in place of the value
   * @param value the real value
   */
  constructor(name: string, value: string) {
    this.name = name;
    this.#value = value;
  }

  /** The real value. Call only where it is about to be sent to an allowed host. */
  reveal(): string {
    return this.#value;
  }

  /** The real value as UTF-8 bytes. Shared, not copied: never mutate it. */
  revealBytes(): Uint8Array {
    return this.#bytes ??= encoder.encode(this.#value);
  }

  /** Length of the UTF-8 value in bytes; safe to log. */
  get byteLength(): number {
    return this.revealBytes().length;
  }

  /** @returns `[secret NAME]` */
  toString(): string {
    return `[secret ${this.name}]`;
  }

  /** @returns `[secret NAME]`, so JSON.stringify never sees the value */
  toJSON(): string {
    return this.toString();
  }

  /** Deno.inspect / console.log. */
  [Symbol.for("Deno.customInspect")](): string {
    return this.toString();
  }

  /** node:util inspect. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  /** Template literals and `+` with a hint. */
  [Symbol.toPrimitive](): string {
    return this.toString();
  }
}

/** Where {@link loadSecrets} reads environment variables (Deno.env fits). */
export type EnvReader = { get(name: string): string | undefined };

/** Reads a whole file as UTF-8 text (Deno.readTextFile fits). */
export type TextFileReader = (path: string) => Promise<string>;

/**
 * Secrets shorter than this are refused: scrubbing responses replaces every
 * occurrence of the value, and a short value would match ordinary text (the
 * policy asks the same of fixed placeholders).
 */
export const MIN_SECRET_LENGTH = 8;

/** Formats a source as written in the policy (`env:NAME`, `file:/path`, `credential:NAME`). */
export function formatSource(source: CredentialSource): string {
  switch (source.kind) {
    case "env":
      return `env:${source.name}`;
    case "file":
      return `file:${source.path}`;
    case "credential":
      return `credential:${source.name}`;
  }
}

/**
 * Loads every credential's real value.
 *
 * Sources:
 * - `env:NAME`: the variable in sluice's own environment, used as is;
 * - `file:/path`: the file's contents with ONE trailing line ending removed
 *   (`\n` or `\r\n`), because `echo token > file` and editors add one; any
 *   other whitespace is kept, since it could be part of the value;
 * - `credential:NAME`: `$CREDENTIALS_DIRECTORY/NAME` (systemd `LoadCredential=`),
 *   trimmed like a file.
 *
 * A value is refused when it is missing, empty, shorter than
 * {@link MIN_SECRET_LENGTH}, or, for a credential that can end up in a header
 * (`in: [header]` or `inject`), when it holds CR, LF or NUL (it would split or
 * truncate the header).
 *
 * @param credentials the policy's credentials
 * @param env sluice's environment
 * @param readFile reads a file as text
 * @param credentialsDirectory `$CREDENTIALS_DIRECTORY`, or undefined when unset
 * @returns credential name to value, for every static credential
 * @throws {SecretError} listing every credential that could not be loaded (names and sources only)
 */
export async function loadSecrets(
  credentials: readonly Credential[],
  env: EnvReader,
  readFile: TextFileReader,
  credentialsDirectory: string | undefined,
): Promise<Map<string, SecretValue>> {
  const problems: string[] = [];
  const out = new Map<string, SecretValue>();
  // oauth2 credentials have no value of their own: sluice mints it (oauth2.ts).
  credentials = credentials.filter((c) => c.from !== null);
  const results = await Promise.all(
    credentials.map((c) => readSource(c.name, c.from!, env, readFile, credentialsDirectory)),
  );
  for (let i = 0; i < credentials.length; i++) {
    const c = credentials[i];
    const r = results[i];
    if (typeof r === "object") {
      problems.push(r.problem);
      continue;
    }
    const where = `credential ${c.name}: ${formatSource(c.from!)}`;
    if (r === "") {
      problems.push(`${where} is empty; put the real value there`);
      continue;
    }
    if (r.length < MIN_SECRET_LENGTH) {
      problems.push(
        `${where} holds ${r.length} characters; at least ${MIN_SECRET_LENGTH} are needed, ` +
          "or scrubbing responses would rewrite ordinary text",
      );
      continue;
    }
    if ((c.in.includes("header") || c.inject) && /[\r\n\0]/.test(r)) {
      problems.push(
        `${where} contains a line break or NUL, which cannot go in a header; ` +
          "remove it (or drop header and inject from this credential)",
      );
      continue;
    }
    out.set(c.name, new SecretValue(c.name, r));
  }
  if (problems.length) throw new SecretError(problems);
  return out;
}

/**
 * The text of a credential source (the environment, a file, a systemd credential), or a problem
 * sentence naming the credential and the source (never the value).
 *
 * @param name the credential's name, for the problem sentence
 * @param from the source
 * @param env sluice's environment
 * @param readFile reads a file as text
 * @param credentialsDirectory `$CREDENTIALS_DIRECTORY`, or undefined when unset
 * @returns the text (one trailing newline removed), or the problem
 */
export async function readSource(
  name: string,
  from: CredentialSource,
  env: EnvReader,
  readFile: TextFileReader,
  credentialsDirectory: string | undefined,
): Promise<string | { problem: string }> {
  const where = `credential ${name}: ${formatSource(from)}`;
  switch (from.kind) {
    case "env": {
      const v = env.get(from.name);
      if (v === undefined) {
        return {
          problem: `${where} is not set; export it in sluice's environment (not the workload's)`,
        };
      }
      return v;
    }
    case "file":
      return await readTrimmed(where, from.path, readFile);
    case "credential":
      if (!credentialsDirectory) {
        return {
          problem: `${where}: $CREDENTIALS_DIRECTORY is not set; run sluice under systemd with ` +
            `LoadCredential=${from.name}:/path/to/secret in its unit, or use file: instead`,
        };
      }
      return await readTrimmed(
        where,
        `${credentialsDirectory.replace(/\/+$/, "")}/${from.name}`,
        readFile,
      );
  }
}

/**
 * One secret field of a credential (an oauth2 credential's client secret, an AWS key...): its
 * value, or undefined with the problem added to `problems`. `invalid` says what is wrong with a
 * value that was read (null: nothing).
 *
 * @param field the policy key, for the problem sentence and the value's name
 * @param from the field's source; undefined when the policy does not set the field
 */
export async function readSecretField(
  name: string,
  field: string,
  from: CredentialSource | undefined,
  io: { env: EnvReader; readFile: TextFileReader; directory: string | undefined },
  problems: string[],
  invalid: (value: string) => string | null,
): Promise<SecretValue | undefined> {
  if (!from) return undefined;
  const r = await readSource(`${name} (${field})`, from, io.env, io.readFile, io.directory);
  if (typeof r === "object") {
    problems.push(r.problem);
    return undefined;
  }
  const why = invalid(r);
  if (why !== null) {
    problems.push(`credential ${name} (${field}): ${formatSource(from)} ${why}`);
    return undefined;
  }
  return new SecretValue(`${name}.${field}`, r);
}

async function readTrimmed(
  where: string,
  path: string,
  readFile: TextFileReader,
): Promise<string | { problem: string }> {
  let text: string;
  try {
    text = await readFile(path);
  } catch (e) {
    // Only the error's kind: a message from an unknown reader could quote content.
    const kind = e instanceof Error ? e.name : "error";
    const why = kind === "NotFound"
      ? `${path} does not exist`
      : kind === "PermissionDenied"
      ? `${path} is not readable by sluice (check its owner and mode)`
      : `${path} could not be read (${kind})`;
    return { problem: `${where}: ${why}` };
  }
  if (text.endsWith("\r\n")) return text.slice(0, -2);
  if (text.endsWith("\n")) return text.slice(0, -1);
  return text;
}

// ---------------------------------------------------------------------------------------------
// Placeholders

/** The file in the state directory that holds the placeholder key. */
export const PLACEHOLDER_KEY_FILE = "placeholder.key";

const KEY_BYTES = 32;

/**
 * Loads the placeholder key from `${stateDir}/placeholder.key`, creating it
 * (32 random bytes, mode 0600 from the first byte written) if absent, so
 * derived placeholders survive restarts. If another process creates the file
 * at the same moment, its key is used.
 *
 * @param stateDir sluice's state directory (created, mode 0700, if missing)
 * @returns the 32-byte key
 * @throws {SecretError} when the file exists with the wrong size, or cannot be read or written
 */
export async function loadOrCreatePlaceholderKey(stateDir: string): Promise<Uint8Array> {
  const path = `${stateDir.replace(/\/+$/, "")}/${PLACEHOLDER_KEY_FILE}`;
  const existing = await readKey(path);
  if (existing) return existing;
  await Deno.mkdir(stateDir, { recursive: true, mode: 0o700 });
  const key = crypto.getRandomValues(new Uint8Array(KEY_BYTES));
  try {
    // createNew: never overwrite a key someone else just wrote; mode at creation, not chmod
    // later, so the key is never readable by others even for a moment.
    await Deno.writeFile(path, key, { mode: 0o600, createNew: true });
    return key;
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) {
      throw new SecretError([`placeholder key: cannot create ${path}: ${(e as Error).message}`], {
        cause: e,
      });
    }
  }
  // Lost the race: the winner may still be writing its 32 bytes.
  for (let attempt = 0; attempt < 20; attempt++) {
    const k = await readKey(path, true);
    if (k) return k;
    await new Promise((r) => setTimeout(r, 10));
  }
  return (await readKey(path))!; // throws the size error if it is still wrong
}

/** The key, undefined if the file does not exist (or, when racing, is still short). */
async function readKey(path: string, racing = false): Promise<Uint8Array | undefined> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new SecretError([`placeholder key: cannot read ${path}: ${(e as Error).message}`], {
      cause: e,
    });
  }
  if (bytes.length === KEY_BYTES) return bytes;
  if (racing && bytes.length < KEY_BYTES) return undefined;
  throw new SecretError([
    `placeholder key: ${path} holds ${bytes.length} bytes, not ${KEY_BYTES}; ` +
    "delete it to generate a new key (every derived placeholder will change)",
  ]);
}

const BASE32 = "abcdefghijklmnopqrstuvwxyz234567";

/** Number of base32 characters in a derived placeholder's random part (130 bits). */
export const PLACEHOLDER_RANDOM_CHARS = 26;

/**
 * Derives a credential's placeholder: `sluice-<name>-<26 base32 chars>` where
 * `<name>` is the credential name lowercased with every run of other
 * characters than a-z0-9 turned into `-`, and the random part is
 * HMAC-SHA256(key, "sluice-placeholder-v1:" + name) in lowercase base32.
 * Stable for a key and a name; unreserved URL characters only, so it travels
 * unescaped in headers, URLs and JSON, and is recognisable in logs.
 *
 * @param key the placeholder key ({@link loadOrCreatePlaceholderKey})
 * @param name the credential name
 * @returns the placeholder
 */
export async function derivePlaceholder(key: Uint8Array, name: string): Promise<string> {
  const k = await crypto.subtle.importKey(
    "raw",
    key as Uint8Array<ArrayBuffer>,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = new Uint8Array(
    await crypto.subtle.sign("HMAC", k, encoder.encode(`sluice-placeholder-v1:${name}`)),
  );
  let out = "";
  let bits = 0;
  let acc = 0;
  for (let i = 0; out.length < PLACEHOLDER_RANDOM_CHARS; i++) {
    acc = (acc << 8) | mac[i];
    bits += 8;
    while (bits >= 5 && out.length < PLACEHOLDER_RANDOM_CHARS) {
      bits -= 5;
      out += BASE32[(acc >> bits) & 31];
    }
    acc &= (1 << bits) - 1;
  }
  const label = name.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "");
  return `sluice-${label ? `${label}-` : ""}${out}`;
}

/**
 * Every credential's placeholder: the policy's fixed one when set, else derived.
 *
 * @param credentials the policy's credentials
 * @param key the placeholder key
 * @returns credential name to placeholder
 */
export async function placeholdersFor(
  credentials: readonly Credential[],
  key: Uint8Array,
): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const c of credentials) {
    if (c.kind === "aws_sigv4") {
      // Placeholder keys shaped like AWS's own (some tools check the key id's form), and a
      // secret key and session token of their own, under `NAME#...` (lib/credentials/sigv4.ts).
      const id = await derivePlaceholder(key, c.name);
      out.set(c.name, `AKIA${id.slice(-16).toUpperCase()}`);
      out.set(`${c.name}#secret_access_key`, await derivePlaceholder(key, `${c.name}#secret`));
      if (c.sigv4?.sessionToken) {
        out.set(`${c.name}#session_token`, await derivePlaceholder(key, `${c.name}#session`));
      }
      continue;
    }
    out.set(c.name, c.placeholder ?? await derivePlaceholder(key, c.name));
  }
  return out;
}
