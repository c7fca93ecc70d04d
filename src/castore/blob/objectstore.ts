/**
 * BlobService on an object store (`objectstore+file://…`, `objectstore+memory://`),
 * in the reference layout (docs/compatibility.md#blobs-and-chunks):
 *
 * - `blobs/b3/<hex d[0..2]>/<hex d>`: the blob index, a protobuf
 *   `StatBlobResponse` listing the chunks in order (encoded as `BlobIndex`,
 *   the same message without the gRPC service around it);
 * - `chunks/b3/<hex c[0..2]>/<hex c>`: one chunk, zstd-compressed (level 3).
 *
 * Blobs are split with FastCDC (128/256/512 KiB) while streaming
 * (`chunked_writer.ts`); each chunk's BLAKE3 and compression run in the
 * shared chunk Worker pool (`chunk_pool.ts`; in-thread if Workers are
 * unavailable). The index is written last, after every chunk's `put` has completed, so a blob becomes
 * visible only once all of its chunks are (and durable with them at the
 * next commit point, see `objectstore/flush.ts`). Upstream's
 * quirk (docs/compatibility.md#q4-single-chunk-blobs-in-the-object-store) is
 * fixed: a blob of one chunk is stored as that chunk alone (no index; the
 * reference's later fix writes an empty index there, which reads the same),
 * and is read through the chunk object, whose digest is the blob digest.
 *
 * Every chunk read is decompressed and checked against its BLAKE3 digest (and
 * listed size), also in the pool: corrupted or truncated data is a
 * `StorageError`, never wrong bytes.
 *
 * @module
 */
import { decodeBlobIndex, encodeBlobIndex } from "./blob_index.ts";
import {
  b3Display,
  bytesEqual,
  checkDigestLength,
  type Digest,
  digestKey,
  EMPTY_DIGEST,
  toHex,
} from "../digest.ts";
import { CorruptionError, InvalidRequestError } from "../../errors.ts";
import { checkObjectStore, objectStoreFromUrl } from "../objectstore/from_url.ts";
import type { ObjectStore } from "../objectstore/store.ts";
import { tuningOf } from "../objectstore/tuning.ts";
import type { EncodedChunk } from "./chunk_codec.ts";
import { acquireChunkCodec, type ChunkCodec, type ChunkCodecLease } from "./chunk_pool.ts";
import {
  ChunkedBlobWriter,
  type ChunkSink,
  type InflightLimits,
  inflightLimits,
  LOCAL_INFLIGHT_LIMITS,
  SINGLE_CHUNK_MAX,
  writeSingleChunk,
} from "./chunked_writer.ts";
import { readChunksFrom } from "./chunk_reader.ts";
import {
  type BlobReader,
  type BlobService,
  type BlobWriter,
  type ChunkMeta,
  missingBlobError,
  writeThrough,
} from "./service.ts";
import { mapLimit } from "../../concurrency.ts";
import { isCollectable } from "../objectstore/store.ts";
import type { Sweepable } from "../sweep.ts";
import {
  MIN_GRACE_MS,
  presentAndTouched,
  sweepObjectStoreBlobs,
  TOUCH_AFTER_MS,
} from "./objectstore_sweep.ts";

/** Blobs {@linkcode ObjectStoreBlobService} remembers having finished (keys of ~100 bytes each). */
const MAX_FINISHED_NOTED = 1 << 18;

/**
 * How long a blob finished here is trusted at the commit point without a
 * lookup. gc removes only objects older than its grace period (at least
 * {@linkcode MIN_GRACE_MS}), and a reused object may be up to
 * {@linkcode TOUCH_AFTER_MS} old when a writer finds it: within the
 * difference, no gc (of any process) can have removed it.
 */
const TRUST_FINISHED_MS = MIN_GRACE_MS - TOUCH_AFTER_MS;

/**
 * Tuning knobs; the defaults suit a local store on a 2-core machine, and a
 * store's own hints (`objectstore/tuning.ts`, e.g. S3's) replace them.
 */
export interface ObjectStoreBlobServiceOptions {
  /** Chunks being hashed, compressed or uploaded at once per writer; `write()` waits beyond it. */
  maxInflightChunks?: number;
  /** Their uncompressed bytes at once per writer. */
  maxInflightBytes?: number;
  /** Chunks fetched and verified ahead of the one being yielded by a reader. */
  readAhead?: number;
  /**
   * Chunk Workers in the process-wide pool (default: see
   * `defaultChunkWorkers`); 0 runs the per-chunk work on this thread.
   */
  workers?: number;
  /** A codec to use instead of the shared one (tests); the service does not release it. */
  codec?: ChunkCodec;
}

function shardedPath(kind: "blobs" | "chunks", digest: Digest): string {
  const hex = toHex(digest);
  return `${kind}/b3/${hex.slice(0, 4)}/${hex}`;
}

/** Object path of a blob index: `blobs/b3/<4 hex>/<64 hex>`. */
export function blobIndexPath(digest: Digest): string {
  return shardedPath("blobs", digest);
}

/** Object path of a chunk: `chunks/b3/<4 hex>/<64 hex>`. */
export function chunkPath(digest: Digest): string {
  return shardedPath("chunks", digest);
}

/** A BlobService storing chunked, compressed blobs in an {@linkcode ObjectStore}. */
export class ObjectStoreBlobService implements BlobService {
  readonly #store: ObjectStore;
  readonly #inflight: InflightLimits;
  readonly #readAhead: number;
  readonly #codec: ChunkCodec;
  readonly #lease: ChunkCodecLease | undefined;
  /**
   * Garbage collection, where the store can list with modification times
   * and delete in batches (S3; docs/gc.md#objects-on-s3); absent elsewhere.
   */
  readonly sweep?: Sweepable["sweep"];
  /** Whether the store is across the network (S3), from its tuning hints. */
  readonly remote: boolean;
  /** Keys of blobs finished here, with when (bounded; see {@linkcode sync}). */
  readonly #finished = new Map<string, number>();

  constructor(store: ObjectStore, options: ObjectStoreBlobServiceOptions = {}) {
    this.#store = store;
    if (isCollectable(store)) {
      this.sweep = async (isLive, opts) => {
        try {
          return await sweepObjectStoreBlobs(store, isLive, opts);
        } finally {
          // What it removed must be looked up again at the next commit.
          this.#finished.clear();
        }
      };
    }
    const hints = tuningOf(store);
    this.remote = hints.remote ?? false;
    this.#inflight = inflightLimits(options, inflightLimits(hints, LOCAL_INFLIGHT_LIMITS));
    // Enough to keep the pool busy while the consumer takes the current
    // chunk; more (8) gained ~5 % only with two Workers, for 2 MiB more per reader.
    this.#readAhead = Math.max(1, options.readAhead ?? hints.readAhead ?? 4);
    if (options.codec) {
      this.#codec = options.codec;
    } else {
      this.#lease = acquireChunkCodec(options.workers);
      this.#codec = this.#lease.codec;
    }
  }

  /**
   * Makes every blob stored so far durable (the object store's group
   * commit), and refuses if one of `refs` is not in the store. A blob this
   * service finished writing within the last {@linkcode TRUST_FINISHED_MS}
   * is taken as there: the commit makes it durable, and no gc can have
   * removed it yet. Any other is looked up first (a `stat`, which also
   * queues its directory for the commit without FFI, or a HEAD on S3).
   * Without the check, a daemon restarted between acknowledging an upload
   * and committing it, or a client naming blobs it never uploaded here,
   * would make directories and paths valid over data that is gone.
   */
  async sync(refs?: readonly Digest[]): Promise<void> {
    let missing: Digest | undefined;
    if (refs) {
      const now = Date.now();
      const unknown = new Map<string, Digest>();
      for (const d of refs) {
        const key = digestKey(d);
        const noted = this.#finished.get(key);
        const trusted = noted !== undefined && now - noted < TRUST_FINISHED_MS;
        if (!trusted && !bytesEqual(d, EMPTY_DIGEST)) unknown.set(key, d);
      }
      const digests = [...unknown.values()];
      const present = await mapLimit(digests, this.#inflight.chunks, (d) => this.has(d));
      missing = digests[present.indexOf(false)];
    }
    await this.#store.sync?.();
    if (missing) throw missingBlobError(missing);
  }

  /** Notes a blob this service finished writing (see {@linkcode sync}). */
  #noteFinished(digest: Digest): void {
    // Bounded: one forgotten only costs a lookup at the commit point.
    if (this.#finished.size >= MAX_FINISHED_NOTED) this.#finished.clear();
    this.#finished.set(digestKey(digest), Date.now());
  }

  /** The underlying object store (for tools and tests). */
  get store(): ObjectStore {
    return this.#store;
  }

  /**
   * True if a blob index or a chunk object with this digest exists. An
   * empty one is what a power loss before its commit leaves, not an object
   * (a chunk is a zstd frame; only the empty blob has an empty index).
   */
  async has(digest: Digest): Promise<boolean> {
    checkDigestLength(digest);
    const index = await this.#store.size(blobIndexPath(digest));
    if (index !== undefined && (index > 0 || bytesEqual(digest, EMPTY_DIGEST))) return true;
    return (await this.#store.size(chunkPath(digest)) ?? 0) > 0;
  }

  /**
   * The index's chunk list (empty for blobs of fewer than two chunks), `[]`
   * for a bare chunk, `undefined` if neither exists.
   */
  async chunks(digest: Digest): Promise<ChunkMeta[] | undefined> {
    checkDigestLength(digest);
    const list = await this.#readIndex(digest);
    if (list) {
      // An index written by the reference (before its fix of
      // docs/compatibility.md#q4-single-chunk-blobs-in-the-object-store) lists
      // a single chunk that is the blob itself; report it as "no finer chunking".
      if (list.length === 1 && bytesEqual(list[0].digest, digest)) return [];
      return list;
    }
    return await this.#store.size(chunkPath(digest)) !== undefined ? [] : undefined;
  }

  /**
   * Reads a blob or a chunk from `offset`. Only the chunks covering
   * `[offset, end)` are fetched; each is verified before it is yielded. The
   * empty blob reads as empty without any I/O.
   */
  async openRead(digest: Digest, offset = 0): Promise<BlobReader | undefined> {
    checkDigestLength(digest);
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new InvalidRequestError(`invalid read offset ${offset}`);
    }
    if (bytesEqual(digest, EMPTY_DIGEST)) return (async function* () {})();

    const single = await this.#readChunk(digest);
    if (single) {
      return (async function* () {
        if (offset < single.length) yield single.subarray(offset);
      })();
    }

    const list = await this.#readIndex(digest);
    if (!list) return undefined;
    if (list.length === 0) {
      throw new CorruptionError(`blob ${b3Display(digest)} is indexed but its chunk is missing`);
    }
    return readChunksFrom(list, offset, this.#readAhead, async ({ digest, size }) => {
      const data = await this.#readChunk(digest, Number(size));
      if (!data) throw new CorruptionError(`chunk ${b3Display(digest)} is missing`);
      return data;
    });
  }

  /** Fetches, decompresses and verifies one chunk; `undefined` if absent. */
  async #readChunk(digest: Digest, size?: number): Promise<Uint8Array | undefined> {
    const compressed = await this.#store.get(chunkPath(digest));
    if (!compressed) return undefined;
    return await this.#codec.decode(compressed, digest, size);
  }

  /** The index's chunk list, `undefined` if there is no index. */
  async #readIndex(digest: Digest): Promise<ChunkMeta[] | undefined> {
    const raw = await this.#store.get(blobIndexPath(digest));
    if (!raw) return undefined;
    return decodeBlobIndex(digest, raw);
  }

  /** Starts an upload (see `chunked_writer.ts`). */
  openWrite(): BlobWriter {
    return new ChunkedBlobWriter(
      new ObjectStoreChunkSink(this.#store, (digest) => this.#noteFinished(digest)),
      this.#codec,
      this.#inflight,
    );
  }

  writeWhole(data: Uint8Array): Promise<Digest> {
    if (data.length > SINGLE_CHUNK_MAX) return writeThrough(this.openWrite(), data);
    const sink = new ObjectStoreChunkSink(this.#store, (digest) => this.#noteFinished(digest));
    return writeSingleChunk(sink, this.#codec, data);
  }

  /** Closes the object store and releases this service's use of the chunk Worker pool. */
  async close(): Promise<void> {
    await this.#lease?.release();
    await this.#store.close();
  }
}

/**
 * Stores a writer's chunks as chunk objects and, for a blob of several
 * chunks, its index last. A blob of exactly one chunk is that chunk: has(),
 * chunks() and openRead() all find it through its chunk object, so an index
 * would only cost another file (creating inodes dominates small-file
 * writes). The empty blob has no chunk and keeps its (empty) index.
 */
class ObjectStoreChunkSink implements ChunkSink {
  readonly allowRaw = false;
  constructor(
    private readonly store: ObjectStore,
    private readonly finished: (digest: Digest) => void,
  ) {}

  async storeChunk({ digest, stored }: EncodedChunk): Promise<void> {
    const path = chunkPath(digest);
    // One of another size is not this one: what a power loss before the
    // flush leaves (empty or short), or another encoder's frame. Rewrite it.
    // One of this size is reused, and marked so for gc.
    if (await presentAndTouched(this.store, path, stored.length)) return;
    await this.store.put(path, stored);
  }

  async finishBlob(digest: Digest, chunks: ChunkMeta[]): Promise<void> {
    if (chunks.length !== 1) {
      const indexPath = blobIndexPath(digest);
      const index = encodeBlobIndex(chunks);
      // An index of another length is not this one: empty after a power loss
      // before it was flushed. Rewrite it.
      if (!await presentAndTouched(this.store, indexPath, index.length)) {
        await this.store.put(indexPath, index);
      }
    }
    this.finished(digest);
  }
}

/**
 * Builds the service from an `objectstore+file:///…`, `objectstore+memory://`
 * or `objectstore+s3://…` URL; other object stores are rejected as
 * unsupported by this build. A bad URL throws at once; the promise checks a
 * remote store first (`checkObjectStore`).
 */
export function objectStoreBlobServiceFromUrl(url: URL): Promise<ObjectStoreBlobService> {
  return checkObjectStore(objectStoreFromUrl(url)).then((store) =>
    new ObjectStoreBlobService(store)
  );
}
