import { assert, assertEquals } from "../assert.ts";
import { pseudoRandom } from "../fixtures.ts";
import {
  decodeChunkSync,
  encodeChunk,
  encodeChunkSync,
  looksIncompressible,
  SAMPLE_FROM,
  SAMPLE_SIZE,
} from "../../src/castore/blob/chunk_codec.ts";
import { blake3 } from "../../src/castore/digest.ts";

const text = (n: number) =>
  new TextEncoder().encode("a line of a shared library's strings table\n".repeat(n / 40 + 1))
    .subarray(0, n);

Deno.test("a random chunk is stored raw, without a zstd frame, where raw is allowed", async () => {
  const chunk = pseudoRandom(256 * 1024, 3);
  assert(looksIncompressible(chunk));
  for (const e of [encodeChunkSync(chunk, true), await encodeChunk(chunk, true)]) {
    assert(e.raw);
    assertEquals(e.stored, chunk);
    assertEquals(e.digest, blake3(chunk));
    assertEquals(decodeChunkSync(e.stored, e.digest, chunk.length, true), chunk);
  }
});

Deno.test("without raw allowed (the object-store layout), a random chunk is a zstd frame", () => {
  const chunk = pseudoRandom(256 * 1024, 4);
  const e = encodeChunkSync(chunk, false);
  assert(!e.raw);
  assertEquals(decodeChunkSync(e.stored, e.digest, chunk.length), chunk);
});

Deno.test("one compressible sample is enough to compress the whole chunk", async () => {
  const size = 200 * 1024;
  // Random everywhere except around the middle sample.
  const chunk = pseudoRandom(size, 5);
  const mid = (size - SAMPLE_SIZE) >> 1;
  chunk.set(text(SAMPLE_SIZE * 3), mid - SAMPLE_SIZE);
  assert(!looksIncompressible(chunk));
  // Compressible at the start only.
  const head = pseudoRandom(size, 6);
  head.set(text(SAMPLE_SIZE));
  assert(!looksIncompressible(head));
  // A compressible chunk: zstd, round trip.
  const plain = text(size);
  assert(!looksIncompressible(plain));
  const e = await encodeChunk(plain, true);
  assert(!e.raw && e.stored.length < size / 4);
  assertEquals(decodeChunkSync(e.stored, e.digest, size, false), plain);
});

Deno.test("chunks below the sampling size are compressed whole to decide", () => {
  const small = pseudoRandom(SAMPLE_FROM - 1, 7);
  assert(!looksIncompressible(small));
  // Still raw, decided by the whole frame.
  assert(encodeChunkSync(small, true).raw);
});
