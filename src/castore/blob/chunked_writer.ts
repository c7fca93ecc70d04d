/**
 * The write side shared by the chunking blob backends (object store, pack
 * store): the stream is hashed whole and cut with FastCDC as it arrives;
 * each chunk is encoded (hashed and compressed, see `chunk_pool.ts`) and
 * handed to the backend's {@linkcode ChunkSink} in the background, within
 * {@linkcode InflightLimits} (`write()` waits for room). Once every chunk is
 * stored, the sink records the blob; only then does `close()` resolve.
 *
 * The first chunk is held back, encoded, until a second one exists: a blob
 * of one chunk is stored as that chunk, under the blob's own digest, so it
 * must not be stored before `close()` knows the blob has ended.
 *
 * A blob no longer than the smallest chunk is one chunk, whose digest the
 * codec computes anyway; the whole-blob hash starts only once more than
 * that has been written (most files of a store are this small). Until
 * then the chunker holds every byte written (it cuts nothing shorter than
 * the smallest chunk), so nothing else keeps a copy.
 *
 * @module
 */
import {
  type Blake3Hasher,
  type Digest,
  digestKey,
  EMPTY_DIGEST,
  newBlake3Hasher,
} from "../digest.ts";
import { errorMessage, InvalidRequestError, StorageError } from "../../errors.ts";
import { JobSet } from "../../concurrency.ts";
import { metrics } from "../../metrics.ts";
import type { EncodedChunk } from "./chunk_codec.ts";
import type { ChunkCodec } from "./chunk_pool.ts";
import { FastCdcChunker, OBJECTSTORE_CHUNKING } from "./fastcdc.ts";
import type { BlobWriter, ChunkMeta } from "./service.ts";

/** How much of one upload may be encoded or stored at once; `write()` waits beyond it. */
export interface InflightLimits {
  /** Chunks at once. */
  chunks: number;
  /** Their uncompressed bytes at once (a single larger chunk still goes, alone). */
  bytes: number;
}

/**
 * The limits for stores on a local disk. Bounded by bytes more than by
 * count: the writer's thread must be able to run ahead of a chunk Worker
 * that is busy compressing, into data that costs it little (chunks stored
 * raw), or the Worker idles once the writer catches up again. Eight chunks
 * (2 MiB on average) left the Worker idle a quarter of the time on data
 * alternating between compressible and random runs of 8 MiB; with 8 MiB
 * of chunks in flight, a 512 MiB write of it ran at 423–484 MB/s instead of
 * 342–420 (six interleaved pairs, by hand).
 */
export const LOCAL_INFLIGHT_LIMITS: InflightLimits = { chunks: 64, bytes: 8 * 1024 * 1024 };

/**
 * The limits a store was configured with (`maxInflightChunks`,
 * `maxInflightBytes`, each optional), the rest from `defaults`.
 */
export function inflightLimits(
  options: { maxInflightChunks?: number; maxInflightBytes?: number },
  defaults: InflightLimits,
): InflightLimits {
  return {
    chunks: Math.max(1, options.maxInflightChunks ?? defaults.chunks),
    bytes: Math.max(1, options.maxInflightBytes ?? defaults.bytes),
  };
}

/** Where a {@linkcode ChunkedBlobWriter} puts what it produces; one per upload. */
export interface ChunkSink {
  /** Whether chunks zstd does not shrink may be stored uncompressed. */
  readonly allowRaw: boolean;
  /** zstd level of chunks above 16 KiB, if not the codec's default. */
  readonly level?: number;
  /**
   * Stores one encoded chunk of `size` bytes (a chunk it already has may be
   * skipped). `chunk.stored` is the sink's from then on: the writer never
   * uses it again, so a sink that does not keep it may free it.
   */
  storeChunk(chunk: EncodedChunk, size: number): Promise<void>;
  /**
   * Records the blob once all its chunks are stored: `chunks` lists them in
   * order; a single entry means the blob is that chunk, none the empty blob.
   */
  finishBlob(digest: Digest, chunks: ChunkMeta[]): Promise<void>;
  /** The upload was abandoned: nothing of it may become visible. */
  abortBlob?(): void;
}

/** A {@linkcode BlobWriter} that chunks, encodes and hands chunks to a sink. */
export class ChunkedBlobWriter implements BlobWriter {
  readonly #sink: ChunkSink;
  readonly #codec: ChunkCodec;
  /**
   * Chunks being encoded or stored; the first failure, as a StorageError,
   * is thrown by the next `write` or `close`.
   */
  readonly #jobs: JobSet;
  /**
   * The whole-blob hasher, made once more than the smallest chunk has been
   * written: most uploads are small files that never need it, and making
   * one per blob cost a daemon ~75 ms of its main thread per 16,000 small
   * files.
   */
  #hasher: Promise<Blake3Hasher> | undefined;
  readonly #chunker = new FastCdcChunker(OBJECTSTORE_CHUNKING);
  /** Each chunk's digest once encoded, in stream order. */
  readonly #digests: Promise<Digest>[] = [];
  readonly #sizes: number[] = [];
  readonly #scheduled = new Set<string>();
  /** Whether the whole-blob hash has started (the blob is longer than one chunk). */
  #hashing = false;
  #written = 0;
  /** The first chunk, encoded, until it is known whether the blob has more. */
  #held: Promise<EncodedChunk> | undefined;
  #state: "open" | "closed" | "aborted" = "open";
  /** Serialises writes so chunks are listed in stream order. */
  #queue: Promise<void> = Promise.resolve();
  #closing: Promise<Digest> | undefined;

  constructor(sink: ChunkSink, codec: ChunkCodec, limits: InflightLimits) {
    this.#sink = sink;
    this.#codec = codec;
    this.#jobs = new JobSet({
      maxJobs: limits.chunks,
      maxWeight: limits.bytes,
      mapError: (err) =>
        err instanceof StorageError
          ? err
          : new StorageError(`storing a chunk: ${errorMessage(err)}`),
    });
  }

  write(data: Uint8Array): Promise<void> {
    if (this.#state !== "open") {
      return Promise.reject(new InvalidRequestError(`blob writer already ${this.#state}`));
    }
    const run = this.#queue.then(async () => {
      this.#written += data.length;
      if (this.#hashing || this.#written > OBJECTSTORE_CHUNKING.minSize) {
        const hasher = await (this.#hasher ??= newBlake3Hasher());
        // What came before is still in the chunker, all of it, uncut.
        if (!this.#hashing) hasher.update(this.#chunker.buffered());
        this.#hashing = true;
        hasher.update(data);
      }
      for (const chunk of this.#chunker.push(data)) await this.#accept(chunk);
    });
    this.#queue = run;
    return run;
  }

  close(): Promise<Digest> {
    if (this.#state === "aborted") {
      return Promise.reject(new InvalidRequestError("blob writer already aborted"));
    }
    this.#state = "closed";
    this.#closing ??= this.#finish();
    return this.#closing;
  }

  async abort(): Promise<void> {
    if (this.#state !== "open") return;
    this.#state = "aborted";
    await this.#queue.catch(() => {});
    // Waits for every chunk job; their failure no longer matters.
    await this.#jobs.drain().catch(() => {});
    this.#held = undefined;
    this.#sink.abortBlob?.();
  }

  async #finish(): Promise<Digest> {
    await this.#queue;
    for (const chunk of this.#chunker.finish()) await this.#accept(chunk);
    await this.#releaseHeld();
    await this.#jobs.drain();
    const digests = await Promise.all(this.#digests);
    const digest = this.#hashing ? (await this.#hasher!).digest() : (digests[0] ?? EMPTY_DIGEST);
    const chunks = digests.map((d, i) => ({ digest: d, size: BigInt(this.#sizes[i]) }));
    await this.#sink.finishBlob(digest, chunks);
    return digest;
  }

  async #accept(chunk: Uint8Array): Promise<void> {
    // An aborted upload stops scheduling work for data still being chunked.
    if (this.#state === "aborted") return;
    this.#jobs.check();
    this.#sizes.push(chunk.length);
    const size = chunk.length;
    const allowRaw = this.#sink.allowRaw;
    if (this.#digests.length === 0) {
      // Encoded now (in a slot, like any chunk) but stored only later. The
      // set calls the job before `add` resolves, so `encoded` is assigned.
      let encoded!: Promise<EncodedChunk>;
      await this.#jobs.add(
        () => (encoded = this.#codec.encode(chunk, allowRaw, this.#sink.level)),
        size,
      );
      this.#held = encoded;
      this.#digests.push(digestOf(encoded));
      return;
    }
    await this.#releaseHeld();
    let encoded!: Promise<EncodedChunk>;
    await this.#jobs.add(
      () =>
        (encoded = this.#codec.encode(chunk, allowRaw, this.#sink.level)).then((e) =>
          this.#store(e, size)
        ),
      size,
    );
    this.#digests.push(digestOf(encoded));
  }

  /** Schedules storing the held first chunk. */
  async #releaseHeld(): Promise<void> {
    const held = this.#held;
    if (!held) return;
    this.#held = undefined;
    const size = this.#sizes[0];
    await this.#jobs.add(() => held.then((e) => this.#store(e, size)), size);
  }

  /** Stores an encoded chunk unless this writer already did. */
  async #store(chunk: EncodedChunk, size: number): Promise<void> {
    const key = digestKey(chunk.digest);
    if (this.#scheduled.has(key)) return;
    this.#scheduled.add(key);
    await this.#sink.storeChunk(chunk, size);
    CHUNKS_WRITTEN.inc();
    CHUNK_BYTES_WRITTEN.inc(size);
  }
}

/**
 * Stores `data`, a whole blob of at most one chunk
 * (`OBJECTSTORE_CHUNKING.minSize`, {@linkcode SINGLE_CHUNK_MAX}), through
 * `sink`, as a {@linkcode ChunkedBlobWriter} given it in one `write` would:
 * encoded once and stored as that chunk, or recorded as the empty blob.
 * Without the writer's queue, job set and chunker, whose promises and
 * objects were a fixed cost per small file. Takes ownership of `data` like
 * the codec's `encode`.
 */
export async function writeSingleChunk(
  sink: ChunkSink,
  codec: ChunkCodec,
  data: Uint8Array,
): Promise<Digest> {
  if (data.length > SINGLE_CHUNK_MAX) {
    throw new InvalidRequestError(`${data.length} bytes are more than one chunk`);
  }
  if (data.length === 0) {
    await sink.finishBlob(EMPTY_DIGEST, []);
    return EMPTY_DIGEST;
  }
  const size = data.length;
  let encoded: EncodedChunk;
  try {
    encoded = await codec.encode(data, sink.allowRaw, sink.level);
    await sink.storeChunk(encoded, size);
  } catch (err) {
    sink.abortBlob?.();
    throw err instanceof StorageError
      ? err
      : new StorageError(`storing a chunk: ${errorMessage(err)}`);
  }
  CHUNKS_WRITTEN.inc();
  CHUNK_BYTES_WRITTEN.inc(size);
  await sink.finishBlob(encoded.digest, [{ digest: encoded.digest, size: BigInt(size) }]);
  return encoded.digest;
}

/** The largest blob that is always a single chunk: FastCDC cuts nothing shorter. */
export const SINGLE_CHUNK_MAX = OBJECTSTORE_CHUNKING.minSize;

const CHUNKS_WRITTEN = metrics.counter(
  "tvix_castore_chunks_written_total",
  "chunks blob uploads handed to the chunk store (one it already holds is not stored twice)",
).labels();
const CHUNK_BYTES_WRITTEN = metrics.counter(
  "tvix_castore_chunk_bytes_written_total",
  "uncompressed bytes of the chunks counted by tvix_castore_chunks_written_total",
).labels();

/**
 * The digest of an encoded chunk. A failed encoding is recorded (and thrown)
 * by the writer; this promise is awaited only on success, so its rejection
 * is marked handled.
 */
function digestOf(encoded: Promise<EncodedChunk>): Promise<Digest> {
  encoded.catch(() => {});
  const digest = encoded.then((e) => e.digest);
  digest.catch(() => {});
  return digest;
}
