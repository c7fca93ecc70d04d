import { Buffer } from "node:buffer";
import { pseudoRandom } from "../fixtures.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import {
  chunkLengths,
  FastCdcChunker,
  type FastCdcParams,
  gearTable,
  OBJECTSTORE_CHUNKING,
} from "../../src/castore/blob/fastcdc.ts";

// Straightforward 64-bit BigInt transcription of the 2020 cut (slow): the
// reference the fast split-integer version is checked against. Returns
// [gear hash, chunk length] like the crate's `cut`.
const MASK_BY_BITS: Record<number, bigint> = {
  7: 0x0000000018035100n,
  9: 0x0000019000353000n,
  13: 0x0000d90303530000n,
  14: 0x0000d90313530000n,
  15: 0x0000d90f03530000n,
  16: 0x0000d90303537000n,
  17: 0x0000d90703537000n,
  19: 0x0000d91707537000n,
};
const U64 = (1n << 64n) - 1n;
const GEAR = gearTable();
const GEAR_LS = GEAR.map((g) => (g << 1n) & U64);

function referenceCut(src: Uint8Array, p: FastCdcParams): [bigint, number] {
  let remaining = src.length;
  if (remaining <= p.minSize) return [0n, remaining];
  let center = p.avgSize;
  if (remaining > p.maxSize) remaining = p.maxSize;
  else if (remaining < center) center = remaining;
  const bits = Math.round(Math.log2(p.avgSize));
  const maskS = MASK_BY_BITS[bits + 1], maskL = MASK_BY_BITS[bits - 1];
  let index = Math.floor(p.minSize / 2);
  let hash = 0n;
  for (
    const [stop, mask] of [[Math.floor(center / 2), maskS], [
      Math.floor(remaining / 2),
      maskL,
    ]] as const
  ) {
    for (; index < stop; index++) {
      const a = index * 2;
      hash = ((hash << 2n) + GEAR_LS[src[a]]) & U64;
      if ((hash & (mask << 1n)) === 0n) return [hash, a];
      hash = (hash + GEAR[src[a + 1]]) & U64;
      if ((hash & mask) === 0n) return [hash, a + 1];
    }
  }
  return [hash, remaining];
}

function referenceLengths(data: Uint8Array, p: FastCdcParams): number[] {
  const out: number[] = [];
  for (let pos = 0; pos < data.length;) {
    const [, n] = referenceCut(data.subarray(pos), p);
    out.push(n);
    pos += n;
  }
  return out;
}

function streamLengths(data: Uint8Array, pieceSizes: () => number, p = OBJECTSTORE_CHUNKING) {
  const chunker = new FastCdcChunker(p);
  const chunks: Uint8Array[] = [];
  for (let pos = 0; pos < data.length;) {
    const n = Math.min(pieceSizes(), data.length - pos);
    chunks.push(...chunker.push(data.subarray(pos, pos + n)));
    pos += n;
  }
  chunks.push(...chunker.finish());
  return chunks;
}

Deno.test("gear table matches the crate's constants", () => {
  assertEquals(GEAR[0], 0x3b5d3c7d207e37dcn);
  assertEquals(GEAR[1], 0x784d68ba91123086n);
  assertEquals(GEAR[128], 0xc0ce47f889336346n);
  assertEquals(GEAR[149], 0x8764bbbe99b26ca2n);
  assertEquals(GEAR[255], 0xaabd2b2a451504e1n);
  // The crate's shifted table, entries 0 and 255.
  assertEquals(GEAR_LS[0], 0x76ba78fa40fc6fb8n);
  assertEquals(GEAR_LS[255], 0x557a56548a2a09c2n);
});

Deno.test("all-zero input: crate vector (64/256/1024 → 1024-byte chunks, known hash)", () => {
  const p = { minSize: 64, avgSize: 256, maxSize: 1024 };
  const zeros = new Uint8Array(10240);
  for (let pos = 0; pos < zeros.length; pos += 1024) {
    const [hash, n] = referenceCut(zeros.subarray(pos), p);
    assertEquals(hash, 14169102344523991076n);
    assertEquals(n, 1024);
  }
  assertEquals(chunkLengths(zeros, p), new Array(10).fill(1024));
});

Deno.test("fast cut points equal the 64-bit reference on pseudo-random data", () => {
  const cases: [FastCdcParams, number][] = [
    [{ minSize: 64, avgSize: 256, maxSize: 1024 }, 200_000],
    // Odd sizes: pairs start at 2 * floor(min / 2), the masks switch at an odd average.
    [{ minSize: 65, avgSize: 301, maxSize: 1025 }, 200_000],
    [{ minSize: 4096, avgSize: 16384, maxSize: 65535 }, 1_000_000],
    [{ minSize: 8192, avgSize: 32768, maxSize: 131072 }, 1_000_000],
    [OBJECTSTORE_CHUNKING, 4_000_000],
  ];
  for (const [p, size] of cases) {
    for (const seed of [1, 2, 3]) {
      const data = pseudoRandom(size + seed * 7, seed);
      const expected = referenceLengths(data, p);
      assert(expected.length > 3, "test data should yield several chunks");
      assertEquals(chunkLengths(data, p), expected, `params ${JSON.stringify(p)} seed ${seed}`);
    }
  }
});

Deno.test("chunks respect the size bounds and concatenate to the input", () => {
  const data = pseudoRandom(5_000_000, 42);
  const chunks = streamLengths(data, () => 65536);
  let pos = 0;
  chunks.forEach((c, i) => {
    assert(c.length <= OBJECTSTORE_CHUNKING.maxSize, `chunk ${i} too large: ${c.length}`);
    if (i < chunks.length - 1) {
      assert(c.length >= OBJECTSTORE_CHUNKING.minSize, `chunk ${i} too small: ${c.length}`);
    }
    assertEquals(c, data.subarray(pos, pos + c.length));
    pos += c.length;
  });
  assertEquals(pos, data.length);
});

Deno.test("cut points do not depend on how the input is split", () => {
  const data = pseudoRandom(3_000_000, 7);
  // Mostly repetitive data exercises max-size cuts as well.
  data.fill(0, 1_000_000, 2_200_000);
  const expected = chunkLengths(data);
  let x = 12345;
  const splits: (() => number)[] = [
    () => 1,
    () => 4096,
    () => 524288,
    () => 524289,
    () => 10_000_000,
    () => (x = (x * 1103515245 + 12345) % 2147483648) % 700_000 + 1,
  ];
  for (const split of splits) {
    // Feeding one byte at a time over 3 MB is slow; use a shorter prefix for it.
    const input = split() === 1 ? data.subarray(0, 1_200_000) : data;
    const want = split() === 1 ? chunkLengths(input) : expected;
    assertEquals(streamLengths(input, split).map((c) => c.length), want);
  }
});

Deno.test("tiny and empty inputs", () => {
  const chunker = new FastCdcChunker();
  assertEquals([...chunker.push(new Uint8Array(0))], []);
  assertEquals([...chunker.finish()], []);
  const small = pseudoRandom(1000, 5);
  const c2 = new FastCdcChunker();
  assertEquals([...c2.push(small)], []);
  assertEquals([...c2.finish()], [small]);
});

Deno.test("parameters outside the crate's bounds are rejected", () => {
  assertThrows(() => new FastCdcChunker({ minSize: 63, avgSize: 256, maxSize: 1024 }), RangeError);
  assertThrows(() => new FastCdcChunker({ minSize: 64, avgSize: 255, maxSize: 1024 }), RangeError);
  assertThrows(() => new FastCdcChunker({ minSize: 64, avgSize: 256, maxSize: 1023 }), RangeError);
});

Deno.test("chunks are the caller's own, even cut from a Node Buffer or the whole buffered input", () => {
  // A Buffer's `slice` is a view: a chunk cut that way would change (or
  // be detached) when the caller reuses or releases its input.
  const data = Buffer.from(pseudoRandom(1_500_000, 11));
  const original = new Uint8Array(data);
  const chunker = new FastCdcChunker();
  const chunks = [...chunker.push(data), ...chunker.finish()];
  data.fill(0);
  assertEquals(chunks.reduce((n, c) => n + c.length, 0), original.length);
  let at = 0;
  for (const c of chunks) {
    assert(c.buffer !== data.buffer, "a chunk shares the input's memory");
    assertEquals(c, original.subarray(at, at + c.length));
    at += c.length;
  }
  // A small blob written at once comes back as the chunker's own buffer.
  const small = new FastCdcChunker();
  const input = pseudoRandom(5000, 12);
  const [only] = [...small.push(input), ...small.finish()];
  input.fill(0);
  assertEquals(only, pseudoRandom(5000, 12));
});
