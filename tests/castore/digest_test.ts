import { assertEquals, assertThrows } from "../assert.ts";
import {
  blake3,
  compareBytes,
  concatBytes,
  fromBase64,
  fromHex,
  newBlake3Hasher,
  toBase64,
  toHex,
} from "../../src/castore/digest.ts";
import * as F from "../fixtures.ts";

Deno.test("streamed hashing equals one-shot hashing, however the input is split", async () => {
  for (const split of [1, 7, 4096, 100_000, F.BLOB_B.length]) {
    const h = await newBlake3Hasher();
    for (let at = 0; at < F.BLOB_B.length; at += split) h.update(F.BLOB_B.subarray(at, at + split));
    assertEquals(toHex(h.digest()), toHex(F.BLOB_B_DIGEST));
  }
});

Deno.test("reused hashers start from scratch, and a finished hasher refuses more input", async () => {
  const first = await newBlake3Hasher();
  first.update(F.BLOB_A);
  assertEquals(first.digest(), F.BLOB_A_DIGEST);
  assertThrows(() => first.update(F.BLOB_A), Error, "after digest()");
  assertThrows(() => first.digest(), Error, "after digest()");
  // The next hashers come from the pool the first one returned to.
  const many = await Promise.all(Array.from({ length: 100 }, () => newBlake3Hasher()));
  many.forEach((h, i) => h.update(new Uint8Array([i])));
  many.forEach((h, i) => assertEquals(h.digest(), blake3(new Uint8Array([i]))));
  const empty = await newBlake3Hasher();
  assertEquals(empty.digest(), F.EMPTY_BLOB_DIGEST);
});

Deno.test("hex and base64 round trips; bytewise comparison", () => {
  assertEquals(fromHex(toHex(F.BLOB_A_DIGEST)), F.BLOB_A_DIGEST);
  assertEquals(fromBase64(toBase64(F.BLOB_B_DIGEST)), F.BLOB_B_DIGEST);
  assertThrows(() => fromHex("abc"), TypeError);
  assertThrows(() => fromHex("zz"), TypeError);
  assertEquals(Math.sign(compareBytes(F.b("a"), F.b("b"))), -1);
  assertEquals(Math.sign(compareBytes(F.b("ab"), F.b("a"))), 1);
  assertEquals(compareBytes(F.b("a"), F.b("a")), 0);
});

Deno.test("toHex: lowercase, only the view's bytes, also in shared memory", () => {
  assertEquals(toHex(new Uint8Array(0)), "");
  assertEquals(toHex(Uint8Array.of(0, 9, 10, 171, 255)), "00090aabff");
  const backing = Uint8Array.of(1, 2, 0xde, 0xad, 3);
  assertEquals(toHex(backing.subarray(2, 4)), "dead");
  const shared = new Uint8Array(new SharedArrayBuffer(8), 4, 2);
  shared.set([0xbe, 0xef]);
  assertEquals(toHex(shared), "beef");
});

Deno.test("concatBytes joins in order and always returns a fresh array", () => {
  assertEquals(concatBytes([]), new Uint8Array(0));
  const one = F.b("abc");
  const joined = concatBytes([one]);
  assertEquals(joined, one);
  joined[0] = 0;
  assertEquals(one, F.b("abc"));
  assertEquals(concatBytes([F.b("ab"), new Uint8Array(0), F.b("c"), F.b("de")]), F.b("abcde"));
});
