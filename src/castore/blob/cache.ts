/**
 * A BlobService combinator for a store far away (S3, a remote daemon) with
 * a cache close by (`cache://?near=URL&far=URL`, docs/storage.md#near-cache):
 * reads try the near store first, fall back to the far one, and put what
 * they fetched into the near store, so the next read (and every read while
 * the far store is out of reach) is served locally. Writes go to the far
 * store only.
 *
 * What reaches the near store has been verified twice: the far store
 * checks every chunk against its digest as it reads it, and the near
 * store's writer hashes what it is given; the near copy is kept under the
 * digest the near store computed, so it can never hold wrong bytes under a
 * digest. A near store that fails (full disk, damaged data) only costs the
 * cache: the read goes on from the far store.
 *
 * @module
 */
import { bytesEqual, concatBytes, type Digest } from "../digest.ts";
import { errorMessage, InvalidRequestError, StorageError } from "../../errors.ts";
import { log } from "../../log.ts";
import { closeAll } from "../../concurrency.ts";
import { readChunksFrom } from "./chunk_reader.ts";
import {
  type BlobReader,
  type BlobService,
  type BlobWriter,
  type ChunkMeta,
  writeWholeBlob,
} from "./service.ts";

/** Chunks fetched ahead when a read from an offset goes chunk by chunk. */
const READ_AHEAD = 4;
/** How long fills may gather before the near store is committed (a pack's `sync`). */
const NEAR_SYNC_DELAY_MS = 1000;

/** Blobs read from `near` where it has them, else from `far`, filling `near`. */
export class CacheBlobService implements BlobService {
  readonly #near: BlobService;
  readonly #far: BlobService;
  #syncTimer: ReturnType<typeof setTimeout> | undefined;
  #syncing: Promise<void> = Promise.resolve();

  /** Composes the two; `close` closes both. */
  constructor(near: BlobService, far: BlobService) {
    this.#near = near;
    this.#far = far;
  }

  /** As the far store: whether calls may cost a round trip. */
  get remote(): boolean | undefined {
    return this.#far.remote;
  }

  /** As the far store, where the reads that miss the near one go. */
  get batchesReads(): boolean | undefined {
    return this.#far.batchesReads;
  }

  /** Whether either store has the blob (the near one is asked first). */
  async has(digest: Digest): Promise<boolean> {
    return await this.#nearOr(() => this.#near.has(digest), false) ||
      await this.#far.has(digest);
  }

  /** The near store's chunk list, else the far store's. */
  async chunks(digest: Digest): Promise<ChunkMeta[] | undefined> {
    return await this.#nearOr(() => this.#near.chunks(digest), undefined) ??
      await this.#far.chunks(digest);
  }

  /**
   * From the near store if it has the blob; else from the far store. A
   * read from the start copies the blob into the near store as it streams;
   * a read from an offset into a blob of several chunks fetches (and
   * caches) only the chunks it needs, each by its own digest.
   */
  async openRead(digest: Digest, offset = 0, size?: number): Promise<BlobReader | undefined> {
    const near = await this.#nearOr(() => this.#near.openRead(digest, offset, size), undefined);
    if (near) return this.#withFallback(near, digest, offset);
    if (offset === 0) {
      const far = await this.#far.openRead(digest, 0, size);
      return far && this.#filling(far, digest);
    }
    const list = await this.#far.chunks(digest);
    if (list === undefined) return undefined;
    if (list.length > 1) {
      return readChunksFrom(list, offset, READ_AHEAD, (c) => this.#readChunk(c.digest));
    }
    // A single chunk, or a far store without finer chunking: cache it whole.
    const far = await this.#far.openRead(digest, 0, size);
    return far && skipBytes(this.#filling(far, digest), offset);
  }

  /** Uploads go to the far store, the store of record (see docs/storage.md#near-cache). */
  openWrite(): BlobWriter {
    return this.#far.openWrite();
  }

  writeWhole(data: Uint8Array): Promise<Digest> {
    return writeWholeBlob(this.#far, data);
  }

  /** The far store's commit point; the near store is only a cache. */
  async sync(refs?: readonly Digest[]): Promise<void> {
    await this.#far.sync?.(refs);
  }

  /** Commits what was cached and closes both stores. */
  async close(): Promise<void> {
    clearTimeout(this.#syncTimer);
    await this.#syncing;
    await closeAll([this.#far, this.#near]);
  }

  /** One whole chunk, through the cache. */
  async #readChunk(digest: Digest): Promise<Uint8Array> {
    const reader = await this.openRead(digest);
    if (!reader) throw new StorageError("a listed chunk is in neither store");
    const pieces: Uint8Array[] = [];
    for await (const piece of reader) pieces.push(piece);
    return concatBytes(pieces);
  }

  /** `fn()` on the near store; its failure is logged and read as `fallback`. */
  async #nearOr<T>(fn: () => Promise<T>, fallback: T): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof InvalidRequestError) throw err;
      log.warn("near cache failed, using the far store", { error: errorMessage(err) });
      return fallback;
    }
  }

  /** `near`'s bytes; if it fails part-way, the rest from the far store. */
  async *#withFallback(near: BlobReader, digest: Digest, offset: number): BlobReader {
    let done = offset;
    try {
      for await (const piece of near) {
        done += piece.length;
        yield piece;
      }
      return;
    } catch (err) {
      log.warn("near cache failed while reading, going on from the far store", {
        error: errorMessage(err),
      });
    }
    const far = await this.#far.openRead(digest, done);
    if (!far) throw new StorageError("blob vanished from the far store");
    yield* far;
  }

  /**
   * `far`'s bytes, written to the near store as they pass. The copy is
   * committed only if the reader got to the end and the near store agrees
   * on the digest; a reader that stops early aborts it.
   */
  async *#filling(far: BlobReader, digest: Digest): BlobReader {
    let writer: BlobWriter | undefined = this.#near.openWrite();
    const drop = (err: unknown) => {
      log.warn("near cache fill failed", { error: errorMessage(err) });
      writer?.abort().catch(() => {});
      writer = undefined;
    };
    let complete = false;
    try {
      for await (const piece of far) {
        if (writer) {
          // The near writer may keep the buffer until its write resolves: copy.
          await writer.write(piece.slice()).catch(drop);
        }
        yield piece;
      }
      complete = true;
    } finally {
      if (writer && !complete) await writer.abort().catch(() => {});
    }
    if (!writer) return;
    try {
      const got = await writer.close();
      if (!bytesEqual(got, digest)) throw new Error("near store computed another digest");
      this.#syncNearSoon();
    } catch (err) {
      drop(err);
    }
  }

  /**
   * Commits the near store a moment after a fill, once for all fills of
   * that moment: its copies survive a restart without a flush per blob.
   */
  #syncNearSoon(): void {
    if (this.#syncTimer !== undefined || !this.#near.sync) return;
    const timer = setTimeout(() => {
      this.#syncTimer = undefined;
      this.#syncing = this.#syncing.then(() => this.#near.sync?.()).catch((err) =>
        log.warn("near cache commit failed", { error: errorMessage(err) })
      );
    }, NEAR_SYNC_DELAY_MS);
    Deno.unrefTimer(timer);
    this.#syncTimer = timer;
  }
}

/** `reader`'s bytes after the first `count`. */
async function* skipBytes(reader: BlobReader, count: number): BlobReader {
  let skip = count;
  for await (const piece of reader) {
    if (skip >= piece.length) {
      skip -= piece.length;
      continue;
    }
    yield skip > 0 ? piece.subarray(skip) : piece;
    skip = 0;
  }
}
