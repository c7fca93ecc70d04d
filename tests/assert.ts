/**
 * Test assertions (JSR's @std/assert is not reachable from our machines),
 * built on node:assert's deep strict equality.
 *
 * @module
 */
import { deepStrictEqual, notDeepStrictEqual } from "node:assert";
import { errorMessage } from "../src/errors.ts";

/** Throws unless `cond` is truthy. */
export function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new Error(msg);
}

/** Deep strict equality (typed arrays compared by content). */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  if (msg === undefined) deepStrictEqual(actual, expected);
  else deepStrictEqual(actual, expected, msg);
}

/** Throws unless `text` matches `pattern`. */
export function assertMatch(text: string, pattern: RegExp, msg?: string): void {
  if (!pattern.test(text)) throw new Error(msg ?? `expected ${pattern} to match: ${text}`);
}

/** Deep strict inequality. */
export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  if (msg === undefined) notDeepStrictEqual(actual, expected);
  else notDeepStrictEqual(actual, expected, msg);
}

type Ctor<E> = abstract new (...args: never[]) => E;

function check<E extends Error>(err: unknown, cls?: Ctor<E>, includes?: string): E {
  if (cls && !(err instanceof cls)) {
    throw new Error(
      `expected ${cls.name}, got ${err instanceof Error ? err.name : typeof err}: ${err}`,
    );
  }
  if (includes !== undefined && !errorMessage(err).includes(includes)) {
    throw new Error(`expected message to include ${JSON.stringify(includes)}, got: ${err}`);
  }
  return err as E;
}

/** Runs `fn`, expects it to throw (an instance of `cls`, with `includes` in its message). */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  cls?: Ctor<E>,
  includes?: string,
): E {
  try {
    fn();
  } catch (err) {
    return check(err, cls, includes);
  }
  throw new Error("expected function to throw");
}

/** Awaits `fn`, expects it to reject (an instance of `cls`, with `includes` in its message). */
export async function assertRejects<E extends Error = Error>(
  fn: () => Promise<unknown>,
  cls?: Ctor<E>,
  includes?: string,
): Promise<E> {
  try {
    await fn();
  } catch (err) {
    return check(err, cls, includes);
  }
  throw new Error("expected promise to reject");
}
