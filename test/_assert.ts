/**
 * The few assertion names the policy and e2e tests use, on top of
 * node:assert (std's asserts live on JSR, which is unreachable here).
 *
 * @module
 */
import nodeAssert from "node:assert/strict";

/** Fails unless `value` is truthy. */
export function assert(value: unknown, message?: string): asserts value {
  nodeAssert.ok(value, message);
}

/** Deep, strict equality. */
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, message);
}

/** Fails unless `actual` matches `pattern`. */
export function assertMatch(actual: string, pattern: RegExp, message?: string): void {
  nodeAssert.match(actual, pattern, message);
}

/** Fails unless `actual` contains `expected`. */
export function assertStringIncludes(actual: string, expected: string, message?: string): void {
  nodeAssert.ok(
    actual.includes(expected),
    message ?? `expected to find ${JSON.stringify(expected)} in:\n${actual}`,
  );
}

/** Fails unless `fn` throws an instance of `type`; returns the error. */
export function assertThrows<E extends Error>(
  fn: () => unknown,
  type: new (...a: never[]) => E,
): E {
  try {
    fn();
  } catch (e) {
    nodeAssert.ok(e instanceof type, `expected ${type.name}, got ${e}`);
    return e as E;
  }
  throw new nodeAssert.AssertionError({ message: `expected ${type.name} to be thrown` });
}

/** Fails unless `fn`'s promise rejects with an instance of `type` (whose message includes `has`). */
export async function assertRejects<E extends Error>(
  fn: () => Promise<unknown>,
  type: new (...a: never[]) => E,
  has?: string,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    nodeAssert.ok(e instanceof type, `expected ${type.name}, got ${e}`);
    if (has !== undefined) nodeAssert.ok((e as E).message.includes(has), (e as E).message);
    return e as E;
  }
  throw new nodeAssert.AssertionError({ message: `expected ${type.name} to be rejected` });
}
