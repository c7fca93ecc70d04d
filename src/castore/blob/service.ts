/**
 * The BlobService interface: blobs stored by the BLAKE3 of their contents.
 *
 * Backends live beside this file, one per file, and are built from a URL by
 * `from_url.ts`.
 *
 * @module
 */
import { b3Display, type Digest } from "../digest.ts";
import { InvalidRequestError } from "../../errors.ts";

/** One chunk of a blob, as `Stat(send_chunks)` lists it. */
export interface ChunkMeta {
  /** BLAKE3 of the chunk. */
  digest: Digest;
  /** Length of the chunk in bytes. */
  size: bigint;
}

/**
 * A blob's bytes, in pieces of any size. Breaking out of a `for await`
 * loop releases the reader. Backends that can verify data do so while
 * streaming and throw a `StorageError` instead of yielding wrong bytes.
 */
export type BlobReader = AsyncIterable<Uint8Array>;

/** An upload in progress. */
export interface BlobWriter {
  /**
   * Appends bytes. Resolves when the writer can take more (backpressure);
   * from then on the caller may reuse `data`'s buffer.
   */
  write(data: Uint8Array): Promise<void>;
  /**
   * Finishes the upload and returns the digest of all bytes written. Calling
   * it again returns the same digest; writing after it fails.
   */
  close(): Promise<Digest>;
  /** Drops the upload; nothing of it becomes visible. */
  abort(): Promise<void>;
}

/** A content-addressed blob store. */
export interface BlobService {
  /** Whether the blob (or a chunk known to the backend) exists. */
  has(digest: Digest): Promise<boolean>;

  /**
   * The blob's chunk list: `undefined` if the blob is unknown, empty if the
   * backend has no finer granularity, else chunks whose concatenation is the
   * blob. Every listed chunk can be read by its own digest.
   */
  chunks(digest: Digest): Promise<ChunkMeta[] | undefined>;

  /**
   * Opens a blob (or a chunk) for reading, starting at byte `offset`;
   * `undefined` if it is unknown. The yielded pieces belong to the reader:
   * no backend keeps or reuses them (the FUSE reader frees their memory
   * as soon as it has copied them into its cache). `size` is the blob's
   * size where the caller knows it (a file node's): only a hint, which lets
   * a remote backend fetch a small blob in one round trip; a blob of
   * another size is still read whole and correctly.
   */
  openRead(digest: Digest, offset?: number, size?: number): Promise<BlobReader | undefined>;

  /**
   * The blob whole and verified, if the backend reads it in one piece: a
   * single chunk of the pack store (every small file), a blob of at most
   * 1 MiB from a daemon when `size` (a file node's) says it is one.
   * `undefined` if it is unknown or not read that way; `openRead` then
   * streams it. The NAR renderer and the small-blob `Read` take small files
   * this way: a reader's steps cost more than the read itself for files of a
   * few KiB. The pack store and the gRPC client have it.
   */
  readWhole?(digest: Digest, size?: number): Promise<Uint8Array | undefined>;

  /**
   * Reads one chunk of `target.length` bytes (listed by `chunks()`)
   * straight into `target` and verifies it there; resolves only once
   * `target` holds exactly the chunk, else rejects with a `StorageError`
   * (then `target` holds garbage and must not be used). Lets the FUSE reader
   * fill its shared cache without an intermediate buffer per chunk. The
   * pack store and the gRPC client have it.
   */
  readChunkInto?(digest: Digest, target: Uint8Array): Promise<void>;

  /** Starts an upload. */
  openWrite(): BlobWriter;

  /**
   * Stores `data` as one blob and returns its digest: what `openWrite`, one
   * `write` and `close` do, for a blob already whole in memory (a small
   * file, a `SmallBlobService` upload), with less machinery where the
   * backend can. `data` must not change until the promise settles. Where
   * it spans its whole buffer, the backend may take that buffer (hand it
   * to another thread, which detaches it here), but keeps none once the
   * promise settles: the caller may then release it. Callers go through
   * {@linkcode writeWholeBlob}. The pack and object stores have it, and
   * the near cache passes it on.
   */
  writeWhole?(data: Uint8Array): Promise<Digest>;

  /**
   * Makes everything stored so far durable: the commit point before
   * anything that references it is written. `refs` are the blobs that
   * something about to be stored refers to: a backend that can tell one of
   * them was lost to garbage collection before its upload was committed
   * rejects, so the referrer is not stored. Absent where stores are
   * durable when they resolve, never durable (memory), or committed by the
   * other end (a remote daemon).
   */
  sync?(refs?: readonly Digest[]): Promise<void>;

  /** True when every call is a network round trip (a remote daemon, S3). */
  readonly remote?: boolean;

  /**
   * True when reads of small blobs asked for in the same turn go out
   * together, as one call (the gRPC client against our daemon): callers
   * that know it ask for many at once (the FUSE readahead).
   */
  readonly batchesReads?: boolean;

  /** Releases resources (connections, file handles). */
  close(): Promise<void>;
}

/**
 * Stores `data` as one blob: with {@linkcode BlobService.writeWhole} where
 * the backend has it, else through a writer ({@linkcode writeThrough}).
 */
export function writeWholeBlob(blob: BlobService, data: Uint8Array): Promise<Digest> {
  return blob.writeWhole ? blob.writeWhole(data) : writeThrough(blob.openWrite(), data);
}

/** Writes `data` with `writer` and closes it; aborts the upload if that fails. */
export async function writeThrough(writer: BlobWriter, data: Uint8Array): Promise<Digest> {
  try {
    if (data.length > 0) await writer.write(data);
    return await writer.close();
  } catch (err) {
    await writer.abort().catch(() => {});
    throw err;
  }
}

/**
 * The refusal of a commit point ({@linkcode BlobService.sync}) whose
 * referrer names a blob this store does not hold.
 */
export function missingBlobError(digest: Digest): InvalidRequestError {
  return new InvalidRequestError(
    `blob ${b3Display(digest)} is not in the store: upload blobs before the directories that ` +
      "name them (and again if the daemon restarted since)",
  );
}
