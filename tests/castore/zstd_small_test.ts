import { zstdCompressSync, zstdDecompressSync } from "node:zlib";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import {
  decodeSmallFrame,
  ENCODE_FRAME_MAX,
  encodeFrame,
  frameEncoderAvailable,
  SMALL_FRAME_MAX,
  smallFrameDecoderAvailable,
  SmallFrameError,
} from "../../src/castore/blob/zstd_small.ts";
import { decodeChunkSync } from "../../src/castore/blob/chunk_codec.ts";
import { blake3, concatBytes } from "../../src/castore/digest.ts";
import { StorageError } from "../../src/errors.ts";
import * as F from "../fixtures.ts";

const text = (n: number) =>
  new Uint8Array(n).map((_, i) => "/nix/store/abc-hello/share\n".charCodeAt(i % 27));
const frame = (data: Uint8Array) => new Uint8Array(zstdCompressSync(data));

Deno.test("zstd_small: the reused contexts are in use on this Deno", () => {
  // If node:zlib's internals change, reads and writes stay right but slow: this says so.
  assert(smallFrameDecoderAvailable(), "reused zstd decompression context unavailable");
  assert(frameEncoderAvailable(), "reused zstd compression context unavailable");
});

Deno.test("zstd_small: reused compression gives frames that decode to the input, at each level", async () => {
  for (const level of [1, 3, 1]) {
    for (const n of [1, 100, 4096, 30_000, SMALL_FRAME_MAX]) {
      for (const data of [text(n), F.pseudoRandom(n, n + 7)]) {
        const f = encodeFrame(data, level);
        assert(f, `${n} bytes at level ${level} encoded`);
        assertEquals(f.byteLength, f.buffer.byteLength, "a buffer of its own");
        assertEquals(new Uint8Array(zstdDecompressSync(f)), data, `${n} bytes, level ${level}`);
        assertEquals(decodeSmallFrame(f, n), data, "the small-frame decoder reads it too");
      }
    }
  }
  // The level is applied: real text (not a repeated pattern, which every
  // level shrinks alike) shrinks more at 3 than at 1, as with zstdCompressSync.
  const sample = (await Deno.readFile(new URL(import.meta.url))).subarray(0, 6000);
  assert(encodeFrame(sample, 3)!.length < encodeFrame(sample, 1)!.length);
  // Frames declare a 128 KiB window (windowLog 17), not the level's 2 MiB:
  // byte 4 is the frame header descriptor, byte 5 the window descriptor.
  const f = encodeFrame(sample, 3)!;
  assertEquals((f[4] >> 5) & 1, 0, "no single-segment frame");
  assertEquals((f[5] >> 3) + 10, 17, "window log");
  // Out of range: left to zstdCompressSync.
  assertEquals(encodeFrame(new Uint8Array(0), 3), undefined);
  assertEquals(encodeFrame(text(ENCODE_FRAME_MAX + 1), 3), undefined);
});

Deno.test("zstd_small: reused compression of chunks up to the FastCDC maximum, with a 512 KiB window", () => {
  const library = F.pseudoRandom(ENCODE_FRAME_MAX, 11).map((b, i) => (i % 3 === 0 ? b : i & 0x3f));
  // Sizes around the switch between windows, and small ones after large
  // ones (the scratch buffer has grown; each frame must still be its own).
  for (
    const n of [SMALL_FRAME_MAX + 1, 128 * 1024, 128 * 1024 + 1, 300_000, ENCODE_FRAME_MAX, 10]
  ) {
    for (const data of [text(n), library.subarray(0, n), F.pseudoRandom(n, n)]) {
      const f = encodeFrame(data, 3);
      assert(f, `${n} bytes encoded`);
      assertEquals(f.byteLength, f.buffer.byteLength, "a buffer of its own");
      assertEquals(new Uint8Array(zstdDecompressSync(f)), data, `${n} bytes`);
      assertEquals((f[5] >> 3) + 10, n <= 128 * 1024 ? 17 : 19, `window log for ${n} bytes`);
      // What a reader of the chunk does with it (its size comes from the index).
      assertEquals(decodeChunkSync(new Uint8Array(f), blake3(data), n), data);
    }
  }
});

Deno.test("zstd_small: decodes like zstdDecompressSync, for any size up to the limit", () => {
  for (const n of [1, 100, 4096, 30_000, SMALL_FRAME_MAX]) {
    for (const data of [text(n), F.pseudoRandom(n, n + 1)]) {
      const f = frame(data);
      const got = decodeSmallFrame(f, n);
      assertEquals(got, new Uint8Array(zstdDecompressSync(f)), `${n} bytes`);
      assertEquals(got!.byteLength, got!.buffer.byteLength, "a buffer of its own");
    }
  }
  // Out of range: left to zstdDecompressSync.
  assertEquals(decodeSmallFrame(frame(text(10)), SMALL_FRAME_MAX + 1), undefined);
  assertEquals(decodeSmallFrame(frame(text(0)), 0), undefined);
});

Deno.test("zstd_small: anything but exactly the frame of `size` bytes fails, and the next frame still decodes", () => {
  const data = text(5000);
  const good = frame(data);
  const damaged = good.slice();
  damaged[1] ^= 0xff; // the magic number
  const cases: [string, Uint8Array, number][] = [
    ["damaged", damaged, 5000],
    ["truncated", good.subarray(0, good.length - 4), 5000],
    ["longer than listed", good, 4999],
    ["shorter than listed", good, 5001],
    ["followed by other bytes", new Uint8Array([...good, 1, 2, 3]), 5000],
  ];
  for (const [what, bytes, size] of cases) {
    // Never a result here (an error, or left to zstdDecompressSync) ...
    let result: Uint8Array | undefined;
    try {
      result = decodeSmallFrame(bytes, size);
    } catch (err) {
      assert(err instanceof SmallFrameError, `${what}: ${err}`);
    }
    assertEquals(result, undefined, what);
    // ... and an error through the codec.
    assertThrows(() => decodeChunkSync(bytes.slice(), blake3(data), size), StorageError);
    assertEquals(decodeSmallFrame(good, 5000), data, `after ${what}`);
  }
  // Frames one after the other decode to their contents one after the other.
  assertEquals(
    decodeSmallFrame(new Uint8Array([...good, ...good]), 10_000),
    concatBytes([data, data]),
  );
});

Deno.test("zstd_small: a damaged chunk is a StorageError through the codec, never wrong bytes", () => {
  const data = text(3000);
  const stored = frame(data);
  stored[stored.length - 8] ^= 0x55;
  assertThrows(() => decodeChunkSync(stored, blake3(data), data.length), StorageError);
  assertEquals(decodeChunkSync(frame(data), blake3(data), data.length), data);
});
