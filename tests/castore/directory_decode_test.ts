/**
 * The direct Directory decoder against the generated one: the same result
 * for every input, taking the direct path for what stores hold, and
 * validation against a plain model of its rules.
 */
import { assert, assertEquals } from "../assert.ts";
import {
  decodeCommonDirectory,
  decodeDirectory,
  type Directory,
  encodeDirectory,
  validateDirectory,
  ValidateDirectoryError,
} from "../../src/castore/directory.ts";
import { Directory as Generated } from "../../src/proto/tvix/castore/protos/castore.ts";
import { isValidName } from "../../src/castore/node.ts";
import * as F from "../fixtures.ts";

/** Numbers below `n` drawn from `pseudoRandom` bytes: the same cases on every run. */
function random(seed: number): (n: number) => number {
  const bytes = F.pseudoRandom(4 << 20, seed);
  let at = 0;
  return (n) => {
    if (at + 3 > bytes.length) at = 0;
    const value = bytes[at] | bytes[at + 1] << 8 | bytes[at + 2] << 16;
    at += 3;
    return value % n;
  };
}

/** Names from a small alphabet, so lists collide, repeat and come out of order. */
function randomDirectory(next: (n: number) => number, sorted: boolean): Directory {
  const name = () => {
    const length = next(4); // 0 is invalid on purpose
    return new Uint8Array(Array.from({ length }, () => [0x61, 0x62, 0x2e, 0xff][next(4)]));
  };
  const digest = () => {
    const d = new Uint8Array(next(8) === 0 ? 31 : 32);
    d[0] = next(256);
    return d;
  };
  const size = () => [0n, 1n, 127n, 128n, 2n ** 48n, 2n ** 49n, 2n ** 64n - 1n][next(7)];
  const list = <T extends { name: Uint8Array }>(make: () => T): T[] => {
    const items = Array.from({ length: next(5) }, make);
    if (sorted) items.sort((x, y) => Buffer.compare(x.name, y.name));
    return items;
  };
  return {
    directories: list(() => ({ name: name(), digest: digest(), size: size() })),
    files: list(() => ({
      name: name(),
      digest: digest(),
      size: size(),
      executable: next(2) === 1,
    })),
    symlinks: list(() => ({
      name: name(),
      target: next(6) === 0 ? new Uint8Array(0) : F.b(["t", "x/y", "a\0b"][next(3)]),
    })),
  };
}

/** `decodeDirectory(bytes)` equals the generated decoder's result, or both throw. */
function assertSameDecoding(bytes: Uint8Array): void {
  let expected: Directory | Error, actual: Directory | Error;
  try {
    expected = Generated.decode(bytes);
  } catch (err) {
    expected = err as Error;
  }
  try {
    actual = decodeDirectory(bytes);
  } catch (err) {
    actual = err as Error;
  }
  if (expected instanceof Error || actual instanceof Error) {
    assert(expected instanceof Error && actual instanceof Error, `one decoder threw: ${bytes}`);
  } else assertEquals(actual, expected);
}

Deno.test("directory decoding: encoded directories take the direct path, with the same result", () => {
  const next = random(7);
  for (let i = 0; i < 2000; i++) {
    const directory = randomDirectory(next, i % 2 === 0);
    const bytes = encodeDirectory(directory);
    const direct = decodeCommonDirectory(bytes);
    const hasHugeSize = [...directory.directories, ...directory.files]
      .some((n) => n.size >= 2n ** 49n);
    // Sizes of 2^49 and more are left to the generated decoder.
    assertEquals(direct === undefined, hasHugeSize);
    assertSameDecoding(bytes);
  }
  assertEquals(
    decodeCommonDirectory(encodeDirectory(F.DIRECTORY_COMPLICATED)),
    F.DIRECTORY_COMPLICATED,
  );
});

Deno.test("directory decoding: damaged and unusual encodings decode as the generated decoder does", () => {
  const next = random(11);
  for (let i = 0; i < 3000; i++) {
    const bytes = encodeDirectory(randomDirectory(next, true));
    if (bytes.length === 0) continue;
    const damaged = [
      // a flipped byte
      () => {
        const c = bytes.slice();
        c[next(c.length)] ^= 1 << next(8);
        return c;
      },
      // cut short
      () => bytes.slice(0, next(bytes.length)),
      // an unknown field (number 7, varint) in front
      () => new Uint8Array([0x38, 0x01, ...bytes]),
      // a node field repeated: the last one wins
      () => new Uint8Array([...bytes, 0x12, 0x04, 0x0a, 0x02, 0x7a, 0x7a]),
      // a tag in a non-minimal varint
      () => new Uint8Array([0x8a, 0x00, 0x00, ...bytes]),
    ][i % 5]();
    assertSameDecoding(damaged);
  }
  // A bool written as a varint other than 0 and 1 is true, on the direct path too.
  const file = [0x0a, 0x01, 0x61, 0x12, 0x20, ...new Uint8Array(32), 0x18, 0x01, 0x20, 0x02];
  const unusualBool = new Uint8Array([0x12, file.length, ...file]);
  assertEquals(decodeCommonDirectory(unusualBool)?.files[0].executable, true);
  assertSameDecoding(unusualBool);
});

/** The rules, stated plainly: the first problem in list order, one Set of every name seen. */
function modelKind(d: Directory): ValidateDirectoryError["kind"] | undefined {
  const seen = new Set<string>();
  const lists: [Uint8Array, boolean][][] = [
    d.directories.map((n) => [n.name, n.digest.length === 32]),
    d.files.map((n) => [n.name, n.digest.length === 32]),
    d.symlinks.map((n) => [n.name, n.target.length > 0 && !n.target.includes(0)]),
  ];
  for (const list of lists) {
    let previous = "";
    for (const [name, ok] of list) {
      if (!ok || !isValidName(name)) return "InvalidNode";
      const key = String.fromCharCode(...name);
      if (key < previous) return "WrongSorting";
      if (seen.has(key)) return "DuplicateName";
      seen.add(key);
      previous = key;
    }
  }
  const count = d.directories.length + d.files.length + d.symlinks.length;
  const total = d.directories.reduce((sum, n) => sum + n.size, BigInt(count));
  return total > 2n ** 64n - 1n ? "SizeOverflow" : undefined;
}

Deno.test("directory validation agrees with a plain model of its rules", () => {
  const next = random(3);
  const kinds = new Map<string, number>();
  for (let i = 0; i < 5000; i++) {
    const d = randomDirectory(next, i % 3 !== 0);
    let kind: string | undefined;
    try {
      validateDirectory(d);
    } catch (err) {
      if (!(err instanceof ValidateDirectoryError)) throw err;
      kind = err.kind;
    }
    const expected = modelKind(d);
    assertEquals(kind, expected, JSON.stringify(d, (_, v) => typeof v === "bigint" ? `${v}` : v));
    kinds.set(String(kind), (kinds.get(String(kind)) ?? 0) + 1);
  }
  // Every outcome occurred.
  for (const k of ["undefined", "InvalidNode", "WrongSorting", "DuplicateName", "SizeOverflow"]) {
    assert((kinds.get(k) ?? 0) > 10, `${k}: ${kinds.get(k)}`);
  }
});
