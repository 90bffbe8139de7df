/**
 * The tests' own leak oracle, written independently of lib/credentials/scrub.ts (which the
 * code under test uses): the forms that mean "this text holds the secret" — raw,
 * percent-encoded, and the base64 / base64url cores that appear in any base64 text holding the
 * secret at each of the three byte offsets (a Basic `user:secret` included).
 */

/**
 * The forms of each secret that mean "this text holds it": raw,
 * base64 / base64url (with and without padding), percent-encoded, and base64
 * at each of the three byte offsets, so a secret inside a longer base64 text
 * (Basic `user:secret`) is found too.
 */
export function secretForms(values: readonly string[]): string[] {
  const out = new Set<string>();
  for (const v of values) {
    out.add(v);
    out.add(encodeURIComponent(v));
    const bytes = new TextEncoder().encode(v);
    for (let shift = 0; shift < 3; shift++) {
      // Prefix `shift` bytes, encode, then drop the characters that depend on the prefix
      // or on what follows the secret: what is left appears in any base64 text holding it.
      const padded = new Uint8Array(shift + bytes.length);
      padded.set(bytes, shift);
      const b64 = btoa(String.fromCharCode(...padded));
      const start = shift === 0 ? 0 : shift === 1 ? 2 : 3;
      const stable = Math.floor((shift + bytes.length) / 3) * 4;
      const core = b64.slice(start, stable);
      if (core.length >= 8) {
        out.add(core);
        out.add(core.replaceAll("+", "-").replaceAll("/", "_"));
      }
    }
  }
  return [...out];
}
