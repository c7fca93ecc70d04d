/**
 * The per-chunk work of the object-store blob service: BLAKE3 + zstd
 * compression when writing, zstd decompression + verification when reading.
 * Pure functions of their input, run either in a chunk Worker
 * (`chunk_worker.ts`) or on the calling thread (`chunk_pool.ts` falls back to
 * the async variants here when Workers are unavailable), so both paths give
 * byte-identical results.
 *
 * @module
 */
import {
  constants as zc,
  zstdCompress,
  zstdCompressSync,
  zstdDecompress,
  zstdDecompressSync,
} from "node:zlib";
import { Buffer } from "node:buffer";
import { promisify } from "node:util";
import { b3Display, blake3, bytesEqual, type Digest } from "../digest.ts";
import { CorruptionError, errorMessage } from "../../errors.ts";
import { decodeSmallFrame, encodeFrame, frameBound, frameEncoderAvailable } from "./zstd_small.ts";

/**
 * zstd level of chunk objects. Any level decodes the same way, so this only
 * trades write speed against size. Measured on shared-library bytes from
 * `/usr/lib` (a stand-in for Nix store paths) in FastCDC chunks: the codec
 * alone compresses ~500 MB/s to 41.3 % at level 1 and ~390 MB/s to 38.4 %
 * at level 3 (zstd's default, and the reference's). Through the whole
 * write path (`objectstore+file`, 2 cores) level 1 was no faster — the time
 * goes to hashing, chunking and creating files — so level 3 is kept for
 * the 7 % smaller store. A pack store's `compression-level` sets another
 * (docs/storage.md#compression-level).
 */
export const ZSTD_LEVEL = 3;

/** Lowest and highest zstd level a store may ask for (zstd's own range). */
export const MIN_ZSTD_LEVEL = 1, MAX_ZSTD_LEVEL = 19;

/**
 * zstd level of chunks up to {@linkcode ENCODE_INLINE_LIMIT} (whole small
 * files, or the last piece of a larger blob), compressed on the writer's
 * own thread (a daemon's main thread).
 * Measured over 16,000 files of up to 16 KiB each (text and libraries from
 * `/usr/share` and `/usr/lib`, and the import benchmark's small files),
 * level 1 compressed 1.3-1.6x faster than level 3 and stored 1.2-1.9
 * points more of their size (e.g. 42.1 % against 40.2 %). Small files are
 * most files of a store but a small share of its bytes.
 */
export const ZSTD_SMALL_LEVEL = 1;

/**
 * Upper bound for a chunk read by digest alone (size unknown): far above the
 * 512 KiB FastCDC maximum, low enough that a hostile object cannot exhaust
 * memory when decompressed.
 */
export const MAX_UNLISTED_CHUNK = 16 * 1024 * 1024;

/**
 * Chunks up to this size are encoded and decoded synchronously on the
 * calling thread: handing one to another thread and back costs ~100 µs of
 * latency, about what the work itself takes for 64 KiB. Small files (most
 * files of a store path) are written and read one after the other, so
 * their latency is their throughput. FastCDC chunks of large blobs are at
 * least 128 KiB, except the last, so those still go to the Workers.
 */
export const INLINE_LIMIT = 64 * 1024;

/**
 * Chunks up to this size are encoded on the calling thread even when a
 * chunk Worker exists. Smaller than {@linkcode INLINE_LIMIT}: uploads of
 * small files run many at once (the import keeps dozens in flight), so a
 * Worker's latency is hidden, while compressing them inline made zstd the
 * largest cost on the writer's thread. It was 4 KiB until small chunks got
 * a reused zstd context (zstd_small.ts); at 16 KiB, an import of the
 * 509 MiB benchmark tree through a daemon took 4.5-4.9 s against 4.8-6.7 s
 * at 4 KiB (four interleaved pairs, wall time, the machine otherwise idle).
 * Nor does a share of them go to a Worker in one message per turn, as small
 * reads do: with half of them sent, a direct import of that tree into a
 * pack store on tmpfs took 2.31-2.70 s against 2.08-2.41 s and 0.2-0.5 s
 * more CPU; with a quarter, 2.44-2.73 s against 2.05-2.34 s (interleaved
 * pairs by hand; collecting them per turn and encoding all of them here
 * cost nothing).
 */
export const ENCODE_INLINE_LIMIT = 16 * 1024;

/**
 * Whether decoding a chunk of `size` bytes is best done inline. Without a
 * size (a chunk looked up by digest alone) the frame's length decides; its
 * output is still bounded by {@linkcode MAX_UNLISTED_CHUNK}.
 */
export function decodeInline(compressed: Uint8Array, size: number | undefined): boolean {
  return (size ?? compressed.length) <= INLINE_LIMIT;
}

/** A chunk ready to store: its digest and the bytes to store. */
export interface EncodedChunk {
  /** BLAKE3 of the uncompressed chunk. */
  digest: Digest;
  /** What to store: a zstd frame, or with `raw` the chunk itself. */
  stored: Uint8Array;
  /**
   * The chunk is stored uncompressed: zstd did not save a 32nd of it (only
   * when the caller allowed raw chunks; the object-store layout is zstd only).
   */
  raw: boolean;
}

/**
 * Whether a frame of `frameLength` bytes saves too little over `size`
 * raw bytes to be worth decompressing on every read: less than 1/32.
 * Random and already-compressed data (most of a store's large files) land
 * here, and reading them back then costs a copy instead of zstd.
 */
export function compressionPays(size: number, frameLength: number): boolean {
  return frameLength < size - (size >> 5);
}

const ZSTD_PARAMS = { params: { [zc.ZSTD_c_compressionLevel]: ZSTD_LEVEL } };
const SMALL_PARAMS = { params: { [zc.ZSTD_c_compressionLevel]: ZSTD_SMALL_LEVEL } };
/** The zstd level of {@linkcode looksIncompressible}'s samples. */
const SAMPLE_LEVEL = 1;
const SAMPLE_PARAMS = { params: { [zc.ZSTD_c_compressionLevel]: SAMPLE_LEVEL } };

/** Bytes of each sample {@linkcode looksIncompressible} compresses. */
export const SAMPLE_SIZE = 4096;

/**
 * Chunks at least this large are sampled before zstd sees all of them
 * (below it, compressing the whole chunk costs little more than samples).
 */
export const SAMPLE_FROM = 64 * 1024;

/**
 * Whether samples of `chunk` say zstd would not pay ({@linkcode
 * compressionPays}): its first, middle and last {@linkcode SAMPLE_SIZE}
 * bytes each fail to shrink at level 1. Level 3 spends about as long on a
 * random chunk as on a compressible one (measured: 650 MB/s against
 * 2,200 MB/s at level 1), and random or already compressed chunks are half
 * the bytes of the benchmark's and much of a real store's large files. The
 * first sample decides alone when it compresses, so compressible chunks
 * pay for one 4 KiB sample (under 2 % of their level-3 time).
 */
export function looksIncompressible(chunk: Uint8Array): boolean {
  if (chunk.length < SAMPLE_FROM) return false;
  const starts = [0, (chunk.length - SAMPLE_SIZE) >> 1, chunk.length - SAMPLE_SIZE];
  return starts.every((at) => {
    const sample = chunk.subarray(at, at + SAMPLE_SIZE);
    const frame = encodeFrame(sample, SAMPLE_LEVEL) ??
      zstdCompressSync(sample, compressOptions(SAMPLE_SIZE, SAMPLE_PARAMS));
    return !compressionPays(SAMPLE_SIZE, frame.length);
  });
}

/** node:zlib options for zstd at `level`. */
function paramsFor(level: number) {
  return level === ZSTD_LEVEL ? ZSTD_PARAMS : { params: { [zc.ZSTD_c_compressionLevel]: level } };
}

/**
 * zstd options for compressing `n` bytes: an output buffer that holds any
 * frame of them ({@linkcode frameBound}), so the frame
 * comes out in one piece instead of being gathered from 16 KiB pieces and
 * concatenated (each piece garbage at once).
 */
function compressOptions(n: number, params = ZSTD_PARAMS) {
  // The size up front lets zstd size its tables to the input: without it
  // every call set up (and cleared) tables for a large window, which was
  // most of the cost of compressing a small file.
  return { ...params, chunkSize: Math.max(64, frameBound(n)), pledgedSrcSize: n };
}

/**
 * Frees the buffer of a zstd frame no longer needed. node:zlib gives each
 * one-shot call an output buffer of its own, which nothing else uses; a
 * buffer no larger than Node's shared allocation pool may be that pool,
 * which other Buffers share, and is left to the collector. In a chunk
 * Worker nothing else prompts a collection, and these buffers (one per
 * chunk, as large as the chunk for data zstd cannot shrink) piled up.
 */
function dropFrame(frame: Uint8Array): void {
  const buf = frame.buffer;
  if (buf instanceof ArrayBuffer && buf.byteLength > Buffer.poolSize) release(buf);
}
const compressAsync = promisify(zstdCompress);
const decompressAsync = promisify(zstdDecompress);

/**
 * A plain Uint8Array over exactly its own ArrayBuffer, so it can be
 * transferred between threads. node:zlib may return a Buffer that is a
 * slice of a shared pool; that one is copied (transferring it would detach
 * the pool).
 */
export function owned(buf: Uint8Array): Uint8Array<ArrayBuffer> {
  if (
    buf.byteOffset === 0 && buf.buffer instanceof ArrayBuffer &&
    buf.byteLength === buf.buffer.byteLength
  ) {
    return new Uint8Array(buf.buffer);
  }
  return new Uint8Array(buf);
}

/** Detaches `buf`, releasing its memory at once instead of at a later GC. */
export function release(buf: ArrayBuffer): void {
  if (!buf.detached) buf.transfer(0);
}

/**
 * Releases the memory of `bytes` at once if they cover their whole
 * ArrayBuffer, which the caller owns and no longer uses; a view into a
 * larger (possibly shared) buffer is left alone. Uploads allocate a buffer
 * per file and per chunk; left to the collector, those piled up in the
 * allocator's heap faster than garbage collection handed them back.
 */
export function releaseWhole(bytes: Uint8Array): void {
  const buf = bytes.buffer;
  if (buf instanceof ArrayBuffer && bytes.byteOffset === 0 && bytes.byteLength === buf.byteLength) {
    release(buf);
  }
}

/** The encoding of `chunk` given its digest and zstd frame. */
function encoded(
  chunk: Uint8Array,
  digest: Digest,
  frame: Uint8Array,
  allowRaw: boolean,
): EncodedChunk {
  if (allowRaw && !compressionPays(chunk.length, frame.length)) {
    dropFrame(frame);
    return { digest, stored: owned(chunk), raw: true };
  }
  const stored = owned(frame);
  if (stored.buffer !== frame.buffer) dropFrame(frame);
  return { digest, stored, raw: false };
}

/**
 * Hashes and compresses a chunk on this thread, synchronously (for Workers).
 * With `allowRaw`, a chunk zstd does not shrink enough (or whose samples
 * say so, {@linkcode looksIncompressible}) is kept as it is. `level` is
 * that of chunks above {@linkcode ENCODE_INLINE_LIMIT}; smaller ones are
 * always compressed at {@linkcode ZSTD_SMALL_LEVEL}.
 */
export function encodeChunkSync(
  chunk: Uint8Array,
  allowRaw = false,
  level = ZSTD_LEVEL,
): EncodedChunk {
  if (allowRaw && looksIncompressible(chunk)) {
    return { digest: blake3(chunk), stored: owned(chunk), raw: true };
  }
  const small = chunk.length <= ENCODE_INLINE_LIMIT;
  return encoded(
    chunk,
    blake3(chunk),
    // Through this thread's reused context (zstd_small.ts).
    encodeFrame(chunk, small ? ZSTD_SMALL_LEVEL : level) ??
      zstdCompressSync(
        chunk,
        compressOptions(chunk.length, small ? SMALL_PARAMS : paramsFor(level)),
      ),
    allowRaw,
  );
}

/**
 * Hashes and compresses a chunk: on this thread where its reused zstd
 * contexts work ({@linkcode encodeChunkSync}, so a chunk Worker and this
 * give the same bytes), else on the libuv threadpool (small ones inline).
 */
export async function encodeChunk(
  chunk: Uint8Array,
  allowRaw = false,
  level = ZSTD_LEVEL,
): Promise<EncodedChunk> {
  if (chunk.length <= INLINE_LIMIT || frameEncoderAvailable()) {
    return encodeChunkSync(chunk, allowRaw, level);
  }
  const digest = blake3(chunk);
  if (allowRaw && looksIncompressible(chunk)) return { digest, stored: owned(chunk), raw: true };
  return encoded(
    chunk,
    digest,
    await compressAsync(chunk, compressOptions(chunk.length, paramsFor(level))),
    allowRaw,
  );
}

function decompressError(digest: Digest, err: unknown): CorruptionError {
  return new CorruptionError(
    `chunk ${b3Display(digest)} could not be decompressed: ${errorMessage(err)}`,
  );
}

/**
 * Checks `data` against its digest (and listed `size`, if known), in place:
 * {@linkcode CorruptionError} if it is not exactly the chunk.
 */
export function verifyChunk<T extends Uint8Array>(
  data: T,
  digest: Digest,
  size: number | undefined,
): T {
  if (size !== undefined && data.length !== size) {
    throw new CorruptionError(
      `chunk ${b3Display(digest)} has ${data.length} bytes, index says ${size}`,
    );
  }
  if (!bytesEqual(blake3(data), digest)) {
    throw new CorruptionError(`chunk contents invalid: ${b3Display(digest)}`);
  }
  return data;
}

/**
 * zstd output options: at most the listed size (or the unlisted bound);
 * with a known size, the output is produced in one buffer of that size
 * instead of being gathered from 16 KiB pieces (~10 % faster).
 */
function limit(size: number | undefined) {
  return size === undefined
    ? { maxOutputLength: MAX_UNLISTED_CHUNK }
    : { maxOutputLength: Math.max(1, size), chunkSize: Math.max(64, size) };
}

/**
 * Decompresses a chunk object (unless `raw`: stored as it is) and checks it
 * against its digest (and its listed size, if known), synchronously (for
 * Workers). Throws {@linkcode CorruptionError} for anything that is not
 * exactly the chunk.
 */
export function decodeChunkSync(
  compressed: Uint8Array,
  digest: Digest,
  size: number | undefined,
  raw = false,
): Uint8Array<ArrayBuffer> {
  if (raw) return verifyChunk(owned(compressed), digest, size);
  let data: Uint8Array<ArrayBuffer>;
  try {
    // Small chunks of known size reuse one zstd context (zstd_small.ts).
    data = (size === undefined ? undefined : decodeSmallFrame(compressed, size)) ??
      owned(zstdDecompressSync(compressed, limit(size)));
  } catch (err) {
    throw decompressError(digest, err);
  }
  // The frame is ours (see ChunkCodec.decode): free it now rather than at
  // a later GC; a read streams hundreds of these per second.
  releaseWhole(compressed);
  verifyChunk(data, digest, size);
  return data;
}

/** Like {@linkcode decodeChunkSync}, decompressing on the libuv threadpool (small ones inline). */
export async function decodeChunk(
  compressed: Uint8Array,
  digest: Digest,
  size: number | undefined,
  raw = false,
): Promise<Uint8Array<ArrayBuffer>> {
  if (raw || decodeInline(compressed, size)) return decodeChunkSync(compressed, digest, size, raw);
  let data: Uint8Array<ArrayBuffer>;
  try {
    data = owned(await decompressAsync(compressed, limit(size)));
  } catch (err) {
    throw decompressError(digest, err);
  }
  verifyChunk(data, digest, size);
  return data;
}
