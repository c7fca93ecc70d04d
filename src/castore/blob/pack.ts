/**
 * BlobService over pack files (`pack:///abs/dir`), the embedded store's
 * default (docs/storage.md#pack-store).
 *
 * Chunks are appended to pack files instead of becoming one file each, and
 * a SQLite index (`index.sqlite`) says where each one is. Creating an inode
 * and flushing it per chunk is what made the object-store layout slow for
 * the small files a Nix store is mostly made of; restic, kopia and borg
 * pack for the same reason.
 *
 * - `<dir>/<id>.pack`: `TVXPACK1`, then records of a 48-byte header
 *   (`TVXC`, a raw flag byte, 3 zero bytes, u32 LE size, u32 LE stored
 *   length, the 32-byte BLAKE3) and the stored bytes: a zstd frame, or the
 *   chunk itself where zstd saves less than 1/32. Every record carries its
 *   digest, so a pack can be checked or re-indexed on its own.
 * - `index.sqlite`: `chunks` (digest → pack, offset, length, size, raw),
 *   `blobs` (digest of a blob of several chunks → its chunk list, encoded
 *   as a `BlobIndex`, the bytes of a `StatBlobResponse`), `packs` (handing
 *   out pack ids, so processes sharing a store never append to the same
 *   file).
 *
 * Each service writes its own pack (a new one per process, and whenever
 * one reaches {@linkcode PACK_TARGET_SIZE}), appending the chunks of a turn
 * of the event loop in one or a few writes, without flushing. A chunk is
 * visible to this process once it is written, a blob once its upload
 * closes; both are made durable and entered into the index at the commit
 * point, {@linkcode PackBlobService.sync}: `fdatasync` of the packs written
 * since the last one, then one SQLite transaction (synchronous=FULL). An
 * index row therefore never points at bytes a crash could lose; bytes a
 * crash leaves without a row are unreachable (reclaimed by garbage
 * collection). A failed `fdatasync` may have dropped data, so every later
 * commit fails too (see `objectstore/flush.ts`).
 *
 * A write that fails (a full disk) fails only its own upload: the pack it
 * was appended to is retired, since its tail is now unknown, and the next
 * chunk starts a new one. What was stored before stays readable.
 *
 * @module
 */
import * as fs from "node:fs";
import { join } from "node:path";
import type { DatabaseSync, StatementSync } from "node:sqlite";
import { decodeBlobIndex, encodeBlobIndex } from "./blob_index.ts";
import {
  b3Display,
  bytesEqual,
  checkDigestLength,
  type Digest,
  digestKey,
  EMPTY_DIGEST,
} from "../digest.ts";
import { CorruptionError, errorMessage, InvalidRequestError, StorageError } from "../../errors.ts";
import { log } from "../../log.ts";
import { inTransaction, openDatabase, statementsByCount, storageCall } from "../sqlite_db.ts";
import { DataLossError, FileWriteback, GroupFlush, syncDirectory } from "../objectstore/flush.ts";
import {
  type EncodedChunk,
  MAX_ZSTD_LEVEL,
  MIN_ZSTD_LEVEL,
  releaseWhole,
  verifyChunk,
} from "./chunk_codec.ts";
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
import { readRuns } from "./read_runs.ts";
import type { BlobReader, BlobService, BlobWriter, ChunkMeta } from "./service.ts";
import { missingBlobError, writeThrough } from "./service.ts";
import type { SweepOptions, SweepReport } from "../sweep.ts";
import { TurnBatch } from "../../turn_batch.ts";

/** A pack is closed and a new one started once it has grown past this. */
export const PACK_TARGET_SIZE = 256 * 1024 * 1024;
/** The first bytes of every pack file. */
export const PACK_MAGIC = new TextEncoder().encode("TVXPACK1");
/** The first bytes of every record in a pack. */
export const RECORD_MAGIC = new TextEncoder().encode("TVXC");
/** Length of a record header. */
export const RECORD_HEADER = 48;
/** Open pack files kept for reading. */
const READ_HANDLES = 64;
/**
 * A blob a client found with `has()` (and may now refer to without
 * uploading it) is marked as used in the index unless that happened less
 * than this long ago: such clients need a garbage collection grace period
 * longer than this (docs/gc.md).
 */
export const TOUCH_INTERVAL_MS = 60 * 1000;
/**
 * Garbage collection rewrites a pack once less than this share of it is
 * live; below it, copying the live rest costs less than the space it frees.
 */
export const COMPACT_BELOW = 0.5;
/** Chunks up to this many stored bytes are read synchronously (page cache: microseconds). */
const SYNC_READ_LIMIT = 64 * 1024;
/** Digests looked up by one query when many blobs are opened at once (see #readSingles). */
const LOOKUP_BATCH = 64;
/**
 * Records of small chunks at most this many bytes apart in a pack are read
 * with one `pread` (what lies between is read and dropped).
 */
const READ_GAP = 4 * 1024;
/** The longest such read. */
const READ_RUN = 1024 * 1024;

/** Where a chunk's stored bytes are. */
export interface ChunkLocation {
  digest: Digest;
  pack: number;
  /** Offset of the stored bytes (after the record header). */
  offset: number;
  /** Stored length. */
  length: number;
  /** Chunk size, uncompressed. */
  size: number;
  raw: boolean;
  /** When the index last saw it written or reused (ms); absent while only published. */
  touched?: number;
}

/** Options of {@linkcode PackBlobService}. */
export interface PackBlobServiceOptions {
  /** Chunks encoded or being written at once per upload (default 64). */
  maxInflightChunks?: number;
  /** Their uncompressed bytes at once per upload (default 8 MiB). */
  maxInflightBytes?: number;
  /** Chunks fetched and verified ahead of the one a reader yields. */
  readAhead?: number;
  /** Chunk Workers (see `chunk_pool.ts`); 0 runs the codec on this thread. */
  workers?: number;
  /** Packs are closed beyond this size (tests use small ones). */
  packTargetSize?: number;
  /** Pack files kept open for reading (default 64; tests use few). */
  readHandles?: number;
  /**
   * Awaited by garbage collection after it counted the live bytes of every
   * pack and before it decides on pack `id`: tests let another writer
   * commit there.
   */
  beforeCompacting?: (id: number) => void | Promise<void>;
  /**
   * zstd level of new chunks above 16 KiB (`compression-level` in the URL;
   * default 3): lower writes faster and stores more. What is stored keeps
   * its level, and every level reads the same way.
   */
  compressionLevel?: number;
}

/** The pack being appended to. */
interface OpenPack {
  id: number;
  /**
   * The pack, open for writing through Deno's file API: its flushes and
   * writes above {@linkcode SYNC_WRITE_LIMIT} run on Deno's blocking
   * threads. `node:fs` `write` and `fdatasync` make the system call on the
   * JavaScript thread in Deno 2.9.6 (seen with `strace -f`), so copying an
   * import's bytes into the page cache, and every flush, held up everything
   * else the process did. Smaller writes are made on this thread, where
   * they cost less than the round trip.
   */
  file: Deno.FsFile;
  /** Where the file's offset stands once every write started has run. */
  filePos: number;
  /** The last write started: writes run one after the other, in order. */
  tail: Promise<unknown>;
  size: number;
  /**
   * Writes started and not yet settled. A commit waits for them before it
   * flushes the pack (and before it closes a retired pack's descriptor).
   */
  writes: Set<Promise<unknown>>;
  /** Records appended and not yet handed to a write ({@linkcode StagedWrite}). */
  staged?: StagedWrite;
  /** Starts writing the pack's bytes to disk as they come (none without FFI). */
  writeback?: FileWriteback;
}

/**
 * Records appended to a pack in the same turn of the event loop, written
 * together: consecutive small records as one buffer, each large one on its
 * own. An import through the daemon appends thousands of small files, and
 * two writes per record (each an asynchronous call with its own bookkeeping
 * on the JavaScript thread) were the largest cost of storing them.
 */
interface StagedWrite {
  /** Pack offset of the first record. */
  readonly position: number;
  /** Headers and stored bytes, in pack order. */
  readonly parts: Uint8Array[];
  length: number;
  /** Each record's byte range and its upload's continuation. */
  readonly records: StagedRecord[];
  /**
   * Settles (never rejects) once every write of the batch has: what a
   * commit and a descriptor's close wait for.
   */
  readonly settled: Promise<void>;
  readonly settle: () => void;
}

/** One record of a {@linkcode StagedWrite}. */
interface StagedRecord {
  readonly start: number;
  readonly end: number;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
}

/**
 * Bytes appended to a pack between starts of their write-back to disk
 * ({@linkcode FileWriteback}): large enough that each start is one batch
 * of disk writes, small enough that the commit finds little left.
 */
const WRITEBACK_STEP = 8 * 1024 * 1024;

/**
 * Writes up to this size are made synchronously. Into the page cache one
 * takes microseconds, while an asynchronous write costs a round trip
 * through the threadpool, two thread wake-ups: importing 20,000 small
 * files through a daemon, whose staged writes are mostly smaller, took
 * 4.0-4.4 s against 4.2-4.9 s with 5 % less of the daemon's CPU
 * (interleaved pairs by hand). Larger ones (incompressible chunks written
 * from their own buffer) stay asynchronous, so a write the kernel holds up
 * (write-back throttling) does not stall the event loop for long.
 */
const SYNC_WRITE_LIMIT = 256 * 1024;

/** Staged bytes that start a write at once instead of at the end of the turn. */
const STAGE_FLUSH_AT = 1024 * 1024;
/** Parts at least this large are written from their own buffer, not copied together. */
const STAGE_COPY_BELOW = 64 * 1024;

/** A blob opened as a single chunk, waiting for its lookup and read (see #readSingles). */
interface SingleRead {
  digest: Digest;
  resolve: (data: Uint8Array | undefined) => void;
  reject: (err: unknown) => void;
}

/** A chunk an upload is about to store, waiting for its lookup (see #answerLookups). */
interface PendingLookup {
  digest: Digest;
  resolve: (at: ChunkLocation | undefined) => void;
  reject: (err: unknown) => void;
}

/** A chunk location from an index row. */
function rowLocation(digest: Digest, row: Record<string, unknown>): ChunkLocation {
  return {
    digest,
    pack: Number(row.pack),
    offset: Number(row.offset),
    length: Number(row.length),
    size: Number(row.size),
    raw: Number(row.raw) === 1,
    touched: Number(row.touched),
  };
}

/**
 * Writes `data` at `position` of the pack, after the writes started before
 * it; resolves with the bytes written. Staged batches are written in the
 * order of their positions, so the file's offset is already there and no
 * seek is needed, except after a write that failed or came up short.
 */
function writeAt(pack: OpenPack, data: Uint8Array, position: number): Promise<number> {
  const run = pack.tail.then(async () => {
    if (pack.filePos !== position) {
      pack.filePos = -1; // unknown until the seek is done
      await pack.file.seek(position, Deno.SeekMode.Start);
      pack.filePos = position;
    }
    let done = 0;
    try {
      while (done < data.length) {
        const rest = data.subarray(done);
        const n = rest.length <= SYNC_WRITE_LIMIT
          ? pack.file.writeSync(rest)
          : await pack.file.write(rest);
        if (n <= 0) break;
        done += n;
      }
    } finally {
      pack.filePos = done === data.length ? position + done : -1;
    }
    if (done === data.length) pack.writeback?.written(position + done);
    return done;
  });
  pack.tail = run.catch(() => {});
  return run;
}

/**
 * Closes a pack's write handle (one already closed is left alone); resolves
 * once its write-back descriptor is closed too.
 */
function closePackFile(pack: OpenPack): Promise<void> {
  const writeback = pack.writeback?.close() ?? Promise.resolve();
  try {
    pack.file.close();
  } catch (err) {
    if (!(err instanceof Deno.errors.BadResource)) throw err;
  }
  return writeback;
}

function recordHeader(c: EncodedChunk, size: number): Uint8Array {
  const h = new Uint8Array(RECORD_HEADER);
  const v = new DataView(h.buffer);
  h.set(RECORD_MAGIC, 0);
  h[4] = c.raw ? 1 : 0;
  v.setUint32(8, size, true);
  v.setUint32(12, c.stored.length, true);
  h.set(c.digest, 16);
  return h;
}

/** A BlobService storing chunks in pack files with a SQLite index. */
export class PackBlobService implements BlobService {
  readonly #dir: string;
  readonly #db: DatabaseSync;
  readonly #codec: ChunkCodec;
  readonly #lease: ChunkCodecLease;
  readonly #inflight: InflightLimits;
  readonly #readAhead: number;
  readonly #packTarget: number;
  readonly #readHandles: number;
  readonly #beforeCompacting?: (id: number) => void | Promise<void>;
  readonly #level: number | undefined;
  readonly #stmt: Record<
    | "chunk"
    | "blob"
    | "putChunk"
    | "putBlob"
    | "touchChunk"
    | "touchBlob"
    | "newPack"
    | "anyInPack",
    StatementSync
  >;
  /** Chunks being written, by digest key. */
  readonly #writing = new Map<string, Promise<ChunkLocation>>();
  /** Written chunks not yet in the index. */
  readonly #pendingChunks = new Map<string, ChunkLocation>();
  /**
   * Committed chunks that published uploads reused instead of writing:
   * marked as used at the next commit (unless collected meanwhile; see
   * {@linkcode #lost}).
   */
  readonly #pendingReused = new Map<string, Digest>();
  /** Published blobs of several chunks (encoded chunk lists) not yet in the index. */
  readonly #pendingBlobs = new Map<string, { digest: Digest; chunks: Uint8Array }>();
  /**
   * Digest keys of blobs and chunks that uploads published, or reused, but
   * that a commit could not enter into the index because garbage
   * collection took what they need first. {@linkcode sync} refuses
   * references to them, so nothing stored refers to missing data; one is
   * forgotten once a commit enters it after all (an upload wrote it again).
   */
  readonly #lost = new Set<string>();
  /** Packs a commit found removed by garbage collection: never written to or flushed again. */
  readonly #removedPacks = new Set<number>();
  /** Packs appended to since the last commit: they need an fdatasync. */
  readonly #dirty = new Map<number, OpenPack>();
  /** Packs were created since the directory was last flushed. */
  #unsyncedEntries = false;
  readonly #readFds = new Map<number, number>();
  /** Blobs opened since the last microtask checkpoint, read together then. */
  readonly #singles = new TurnBatch<SingleRead>((batch) => this.#readSingles(batch));
  /** Chunks uploads are about to store, looked up together (see {@linkcode locateSoon}). */
  readonly #lookups = new TurnBatch<PendingLookup>(
    (batch) => this.#answerLookups(batch),
    setImmediate,
  );
  /**
   * The statement looking up `n` digests: joined from a list of
   * (position, digest) pairs, so each row says which digest it answers
   * without comparing digests, and returned as arrays (cheaper than
   * objects).
   */
  readonly #lookupStatement: (n: number) => StatementSync;
  readonly #commit = new GroupFlush(() => this.#commitRound());
  #current: OpenPack | undefined;
  #closed = false;

  /** Opens (creating if needed) the pack store in `dir`. */
  constructor(dir: string, options: PackBlobServiceOptions = {}) {
    this.#dir = dir;
    this.#inflight = inflightLimits(options, LOCAL_INFLIGHT_LIMITS);
    this.#readAhead = Math.max(1, options.readAhead ?? 4);
    this.#packTarget = options.packTargetSize ?? PACK_TARGET_SIZE;
    this.#readHandles = Math.max(1, options.readHandles ?? READ_HANDLES);
    this.#beforeCompacting = options.beforeCompacting;
    this.#level = options.compressionLevel;
    if (
      this.#level !== undefined &&
      !(Number.isInteger(this.#level) && this.#level >= MIN_ZSTD_LEVEL &&
        this.#level <= MAX_ZSTD_LEVEL)
    ) {
      throw compressionLevelError(this.#level);
    }
    this.#db = openDatabase(join(dir, "index.sqlite"));
    this.#lookupStatement = statementsByCount(
      this.#db,
      (n) =>
        `WITH asked (i, digest) AS (VALUES ${
          Array.from({ length: n }, (_, i) => `(${i}, ?)`).join(", ")
        }) SELECT asked.i, c.pack, c.offset, c.length, c.size, c.raw, c.touched ` +
        "FROM asked JOIN chunks c ON c.digest = asked.digest",
      (stmt) => stmt.setReturnArrays(true),
    );
    try {
      // The index must never be behind what it refers to after a crash
      // (NORMAL may lose the last commits), and commits are one per import.
      this.#db.exec("PRAGMA synchronous = FULL");
      this.#db.exec(`
        CREATE TABLE IF NOT EXISTS packs (
          id INTEGER PRIMARY KEY AUTOINCREMENT, created INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS chunks (
          digest BLOB PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL,
          length INTEGER NOT NULL, size INTEGER NOT NULL, raw INTEGER NOT NULL,
          touched INTEGER NOT NULL) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS chunks_by_pack ON chunks (pack);
        CREATE TABLE IF NOT EXISTS blobs (
          digest BLOB PRIMARY KEY, chunks BLOB NOT NULL, touched INTEGER NOT NULL) WITHOUT ROWID;`);
      // Packs written before garbage collection existed lack the marks.
      for (const table of ["chunks", "blobs"]) {
        const columns = this.#db.prepare(`PRAGMA table_info(${table})`).all().map((c) => c.name);
        if (!columns.includes("touched")) {
          this.#db.exec(`ALTER TABLE ${table} ADD COLUMN touched INTEGER NOT NULL DEFAULT 0`);
        }
      }
      this.#stmt = {
        chunk: this.#db.prepare(
          "SELECT pack, offset, length, size, raw, touched FROM chunks WHERE digest = ?",
        ),
        blob: this.#db.prepare("SELECT chunks, touched FROM blobs WHERE digest = ?"),
        // A chunk or blob stored again keeps its place and is marked as used
        // now (see #touch).
        putChunk: this.#db.prepare(
          "INSERT INTO chunks (digest, pack, offset, length, size, raw, touched) " +
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET touched = " +
            "max(touched, excluded.touched)",
        ),
        putBlob: this.#db.prepare(
          "INSERT INTO blobs (digest, chunks, touched) VALUES (?, ?, ?) ON CONFLICT (digest) " +
            "DO UPDATE SET touched = max(touched, excluded.touched)",
        ),
        touchChunk: this.#db.prepare("UPDATE chunks SET touched = ? WHERE digest = ?"),
        touchBlob: this.#db.prepare("UPDATE blobs SET touched = ? WHERE digest = ?"),
        anyInPack: this.#db.prepare("SELECT 1 FROM chunks WHERE pack = ? LIMIT 1"),
        newPack: this.#db.prepare("INSERT INTO packs (created) VALUES (?) RETURNING id"),
      };
    } catch (err) {
      this.#db.close();
      throw new StorageError(`opening pack store ${dir}: ${errorMessage(err)}`);
    }
    this.#lease = acquireChunkCodec(options.workers);
    this.#codec = this.#lease.codec;
  }

  /** The directory holding the packs and the index. */
  get dir(): string {
    return this.#dir;
  }

  /**
   * Where a chunk written here and not yet committed is; no key is made
   * when there are none (a store only read from).
   */
  #pendingAt(digest: Digest): ChunkLocation | undefined {
    return this.#pendingChunks.size > 0 ? this.#pendingChunks.get(digestKey(digest)) : undefined;
  }

  /** Where a chunk (or single-chunk blob) is stored, published or committed. */
  locate(digest: Digest): ChunkLocation | undefined {
    const pending = this.#pendingAt(digest);
    if (pending) return pending;
    const row = storageCall("chunk lookup", () => this.#stmt.chunk.get(digest));
    return row ? rowLocation(digest, row) : undefined;
  }

  /**
   * {@linkcode locate}, answered at the end of the turn together with the
   * other lookups asked for in it, by {@linkcode locateMany}. Uploads look
   * up every chunk before storing it; by itself a lookup is a statement run
   * and a WAL read lock taken and released (two `fcntl` calls): 45,000
   * `fcntl` calls for 20,000 small files. A chunk written meanwhile is
   * found all the same: `append` shares a write in progress.
   */
  locateSoon(digest: Digest): Promise<ChunkLocation | undefined> {
    const pending = this.#pendingAt(digest);
    if (pending) return Promise.resolve(pending);
    return new Promise((resolve, reject) => this.#lookups.add({ digest, resolve, reject }));
  }

  #answerLookups(batch: PendingLookup[]): void {
    let found: (ChunkLocation | undefined)[];
    try {
      found = this.locateMany(batch.map((b) => b.digest));
    } catch (err) {
      for (const b of batch) b.reject(err);
      return;
    }
    for (const [i, b] of batch.entries()) b.resolve(found[i]);
  }

  /**
   * {@linkcode locate} for many digests, by one query per
   * {@linkcode LOOKUP_BATCH} of them: a lookup by itself costs 5-10 µs,
   * most of it per statement run, a row of a batch 1-2 µs.
   */
  locateMany(digests: Digest[]): (ChunkLocation | undefined)[] {
    const out: (ChunkLocation | undefined)[] = new Array(digests.length);
    const ask: number[] = [];
    for (let i = 0; i < digests.length; i++) {
      const pending = this.#pendingAt(digests[i]);
      if (pending) out[i] = pending;
      else ask.push(i);
    }
    const found = this.#indexRows(ask.map((i) => digests[i]));
    found.forEach((at, j) => out[ask[j]] = at);
    return out;
  }

  /**
   * The index rows of `digests` (pending chunks not consulted), by one
   * query per {@linkcode LOOKUP_BATCH} of them.
   */
  #indexRows(digests: Digest[]): (ChunkLocation | undefined)[] {
    const out: (ChunkLocation | undefined)[] = new Array(digests.length);
    for (let from = 0; from < digests.length; from += LOOKUP_BATCH) {
      const part = digests.slice(from, from + LOOKUP_BATCH);
      const rows = storageCall(
        "chunk lookup",
        () => this.#lookupStatement(part.length).all(...part),
      );
      // Rows are arrays (see #lookupStatement); the first column is the position in `part`.
      for (const row of rows as unknown as number[][]) {
        const i = from + row[0];
        out[i] = {
          digest: digests[i],
          pack: row[1],
          offset: row[2],
          length: row[3],
          size: row[4],
          raw: row[5] === 1,
          touched: row[6],
        };
      }
    }
    return out;
  }

  /**
   * Marks a committed chunk as used now (for `has()`), so a garbage
   * collection keeps it (docs/gc.md). Only updates rows not touched within
   * {@linkcode TOUCH_INTERVAL_MS}. False if the row is gone.
   */
  #touch(digest: Digest, touched: number | undefined): boolean {
    if (touched === undefined) return true; // published here, not yet committed
    const now = Date.now();
    if (touched >= now - TOUCH_INTERVAL_MS) return true;
    return storageCall("touch", () => Number(this.#stmt.touchChunk.run(now, digest).changes) === 1);
  }

  /** {@linkcode touch} for a blob of several chunks: the blob row and every chunk. */
  #touchBlob(digest: Digest, row: { touched: number; chunks: ChunkMeta[] }): boolean {
    const now = Date.now();
    if (row.touched >= now - TOUCH_INTERVAL_MS) return true;
    return storageCall("touch", () =>
      inTransaction(this.#db, () => {
        if (Number(this.#stmt.touchBlob.run(now, digest).changes) !== 1) return false;
        for (const c of row.chunks) this.#stmt.touchChunk.run(now, c.digest);
        return true;
      }));
  }

  /** The chunk list of a blob of several chunks (or the empty blob), if stored. */
  #blobChunks(digest: Digest): ChunkMeta[] | undefined {
    return this.#blobRow(digest)?.chunks;
  }

  #blobRow(digest: Digest): { chunks: ChunkMeta[]; touched?: number } | undefined {
    const pending = this.#pendingBlobs.get(digestKey(digest));
    if (pending) return { chunks: decodeBlobIndex(digest, pending.chunks) };
    const row = storageCall("blob lookup", () => this.#stmt.blob.get(digest));
    if (!row) return undefined;
    return {
      chunks: decodeBlobIndex(digest, row.chunks as Uint8Array),
      touched: Number(row.touched),
    };
  }

  /**
   * Whether the blob is stored. A client that finds it may skip uploading
   * it and refer to it, so it counts as reused (see {@linkcode touch}).
   */
  has(digest: Digest): Promise<boolean> {
    try {
      checkDigestLength(digest);
      const chunk = this.locate(digest);
      if (chunk && this.#touch(digest, chunk.touched)) return Promise.resolve(true);
      const blob = this.#blobRow(digest);
      if (!blob) return Promise.resolve(false);
      return Promise.resolve(
        blob.touched === undefined ||
          this.#touchBlob(digest, { touched: blob.touched, chunks: blob.chunks }),
      );
    } catch (err) {
      return Promise.reject(err);
    }
  }

  chunks(digest: Digest): Promise<ChunkMeta[] | undefined> {
    try {
      checkDigestLength(digest);
      const list = this.#blobChunks(digest);
      if (list) return Promise.resolve(list);
      return Promise.resolve(this.locate(digest) ? [] : undefined);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  async openRead(digest: Digest, offset = 0): Promise<BlobReader | undefined> {
    checkDigestLength(digest);
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new InvalidRequestError(`invalid read offset ${offset}`);
    }
    if (bytesEqual(digest, EMPTY_DIGEST)) return (async function* () {})();
    const data = await this.#readSingle(digest);
    if (data) {
      return (async function* () {
        if (offset < data.length) yield data.subarray(offset);
      })();
    }
    const list = this.#blobChunks(digest);
    if (!list) return undefined;
    return readChunksFrom(list, offset, this.#readAhead, async ({ digest, size }) => {
      const at = this.locate(digest);
      if (!at) throw new CorruptionError(`chunk ${b3Display(digest)} is missing`);
      if (at.size !== Number(size)) {
        throw new CorruptionError(
          `chunk ${b3Display(digest)} has ${at.size} bytes, index says ${size}`,
        );
      }
      return await this.#readChunk(at);
    });
  }

  readWhole(digest: Digest): Promise<Uint8Array | undefined> {
    try {
      checkDigestLength(digest);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#readSingle(digest);
  }

  /**
   * The blob `digest` if it is a single chunk (read and verified), else
   * `undefined`. Blobs opened together (a NAR renderer reading ahead over
   * a directory's small files) are looked up and read together at the next
   * microtask checkpoint: see {@linkcode #readSingles}.
   */
  #readSingle(digest: Digest): Promise<Uint8Array | undefined> {
    return new Promise((resolve, reject) => this.#singles.add({ digest, resolve, reject }));
  }

  /**
   * Answers the blobs opened since the last checkpoint: one index query per
   * {@linkcode LOOKUP_BATCH}, one `pread` per run of neighbouring small
   * records (`read_runs.ts`), then each chunk decoded and verified on its
   * own, so a bad one fails only its own read. A run that cannot be read
   * (its pack was rewritten meanwhile, an I/O error) is read chunk by
   * chunk instead, which relocates or reports each.
   */
  #readSingles(batch: SingleRead[]): void {
    let found: (ChunkLocation | undefined)[];
    try {
      found = batch.length === 1 ? [this.locate(batch[0].digest)] : this.locateMany(
        batch.map((b) => b.digest),
      );
    } catch (err) {
      for (const b of batch) b.reject(err);
      return;
    }
    const spans: (ChunkLocation & { read: SingleRead })[] = [];
    for (const [i, read] of batch.entries()) {
      const at = found[i];
      if (!at) read.resolve(undefined);
      else if (at.length > SYNC_READ_LIMIT) this.#readChunk(at).then(read.resolve, read.reject);
      else spans.push({ ...at, read });
    }
    for (const run of readRuns(spans, READ_GAP, READ_RUN)) {
      let stored: Uint8Array | undefined;
      if (run.members.length > 1) {
        try {
          stored = new Uint8Array(run.length);
          if (fs.readSync(this.#readFd(run.pack), stored, 0, run.length, run.offset) < run.length) {
            stored = undefined;
          }
        } catch {
          stored = undefined;
        }
      }
      for (const m of run.members) {
        if (!stored) {
          this.#readChunk(m).then(m.read.resolve, m.read.reject);
          continue;
        }
        let frame = stored.subarray(m.offset - run.offset, m.offset - run.offset + m.length);
        // The codec takes a frame that spans its whole buffer as its own (a
        // raw one becomes the result, which the reader may free): that is
        // the one record asked for twice, which gets a copy. Otherwise small
        // files are decoded here and now from views into the run.
        if (frame.length === stored.length) frame = frame.slice();
        let data: Uint8Array | undefined;
        try {
          data = this.#codec.decodeHere(frame, m.digest, m.size, m.raw);
        } catch (err) {
          m.read.reject(err);
          continue;
        }
        if (data) {
          m.read.resolve(data);
          continue;
        }
        // The codec owns what `decode` is given and may detach it
        // (node:zlib's asynchronous calls do): a copy of its own.
        const decoded = this.#codec.decode(
          frame.buffer === stored.buffer ? frame.slice() : frame,
          m.digest,
          m.size,
          m.raw,
        );
        decoded.then(m.read.resolve, m.read.reject);
      }
    }
  }

  /**
   * Reads one chunk into `target` and verifies it there: a raw chunk (what
   * incompressible data is stored as) goes from the pack into `target`
   * with one `pread` and is hashed in place, so a streaming read through
   * FUSE allocates and copies nothing per chunk; a compressed one is
   * decoded as in {@linkcode openRead} and copied in.
   */
  async readChunkInto(digest: Digest, target: Uint8Array): Promise<void> {
    checkDigestLength(digest);
    const at = this.locate(digest);
    if (!at) throw new CorruptionError(`chunk ${b3Display(digest)} is missing`);
    if (at.size !== target.length) {
      throw new CorruptionError(
        `chunk ${b3Display(digest)} has ${at.size} bytes, ${target.length} expected`,
      );
    }
    const where = this.#where(at);
    if (!where.at.raw) {
      const decoded = await this.#decodeStored(where);
      target.set(decoded);
      releaseWhole(decoded);
      return;
    }
    await this.#readStored(where, target);
    verifyChunk(target, digest, at.size);
  }

  /**
   * A descriptor to read `at` from. A pack that is gone was rewritten by
   * garbage collection after the chunk was located: the chunk is located
   * again and read from where it is now, whose length and encoding may
   * differ (a chunk swept and uploaded again is encoded afresh).
   */
  #where(at: ChunkLocation): { fd: number; at: ChunkLocation } {
    try {
      return { fd: this.#readFd(at.pack), at };
    } catch (err) {
      const now = this.locate(at.digest);
      if (!now || now.pack === at.pack || now.size !== at.size) throw err;
      return { fd: this.#readFd(now.pack), at: now };
    }
  }

  /** Reads the stored bytes of `where.at` into `into` (of `at.length` bytes). */
  async #readStored(where: { fd: number; at: ChunkLocation }, into: Uint8Array): Promise<void> {
    const { fd, at } = where;
    let n: number;
    try {
      n = at.length <= SYNC_READ_LIMIT
        ? fs.readSync(fd, into, 0, at.length, at.offset)
        : await new Promise<number>((resolve, reject) =>
          fs.read(fd, into, 0, at.length, at.offset, (err, got) => err ? reject(err) : resolve(got))
        );
    } catch (err) {
      throw new StorageError(`reading pack ${at.pack}: ${errorMessage(err)}`);
    }
    if (n !== at.length) {
      throw new CorruptionError(`chunk ${b3Display(at.digest)} is truncated in pack ${at.pack}`);
    }
  }

  /** Reads, decompresses and verifies the chunk at `where`. */
  async #decodeStored(where: { fd: number; at: ChunkLocation }): Promise<Uint8Array> {
    const { at } = where;
    const stored = new Uint8Array(at.length);
    await this.#readStored(where, stored);
    return await this.#codec.decode(stored, at.digest, at.size, at.raw);
  }

  /** Reads, decompresses and verifies one chunk (see {@linkcode #where}). */
  #readChunk(at: ChunkLocation): Promise<Uint8Array> {
    try {
      return this.#decodeStored(this.#where(at));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * A file descriptor for reading pack `id` (kept open, a bounded number of
   * them). Evicting one closes it even while an asynchronous read on it
   * runs: Deno's `fs.read` takes its own reference to the open file when
   * it is called, so the number is not reused under that read (the test
   * "descriptor is not closed under a read" fails if a runtime ever
   * resolves the number later).
   */
  #readFd(id: number): number {
    const cached = this.#readFds.get(id);
    if (cached !== undefined) {
      // Most recently used last.
      this.#readFds.delete(id);
      this.#readFds.set(id, cached);
      return cached;
    }
    let fd: number;
    try {
      fd = fs.openSync(this.#packPath(id), "r");
    } catch (err) {
      // A pack the index points into is gone: damage, unless garbage
      // collection moved the chunk meanwhile (#where looks again).
      const missing = (err as { code?: string }).code === "ENOENT";
      throw new (missing ? CorruptionError : StorageError)(
        `opening pack ${id}: ${errorMessage(err)}`,
      );
    }
    if (this.#readFds.size >= this.#readHandles) {
      const [oldest, oldFd] = this.#readFds.entries().next().value!;
      this.#readFds.delete(oldest);
      fs.closeSync(oldFd);
    }
    this.#readFds.set(id, fd);
    return fd;
  }

  #packPath(id: number): string {
    return join(this.#dir, `${id}.pack`);
  }

  /**
   * Appends one encoded chunk to the current pack and returns where it is.
   * The space is reserved at once, so appends never overlap; the record is
   * written with the others staged in the same turn (see `writeAt`). A
   * failure retires the pack: its tail is now unknown.
   */
  append(chunk: EncodedChunk, size: number): Promise<ChunkLocation> {
    // Two uploads of the same data at once write it once.
    const key = digestKey(chunk.digest);
    const writing = this.#writing.get(key);
    if (writing) return writing;
    const write = this.#write(chunk, size).then((at) => {
      // Its pack was removed while the write ran: the bytes are gone.
      if (this.#removedPacks.has(at.pack)) throw removedPackError(at.pack);
      // Visible (for reads and deduplication) once its bytes are written,
      // committed at the next sync even if its upload is abandoned: it is
      // whole, and garbage collection reclaims it if nothing refers to it.
      this.#pendingChunks.set(key, at);
      return at;
    }).finally(() => this.#writing.delete(key));
    this.#writing.set(key, write);
    return write;
  }

  async #write(chunk: EncodedChunk, size: number): Promise<ChunkLocation> {
    if (this.#closed) throw new StorageError("pack store is closed");
    const pack = this.#current ?? this.#openPack();
    const header = recordHeader(chunk, size);
    const position = pack.size;
    const length = RECORD_HEADER + chunk.stored.length;
    pack.size += length;
    if (pack.size >= this.#packTarget) this.#retire(pack);
    const written = this.#stage(pack, position, header, chunk.stored);
    this.#dirty.set(pack.id, pack);
    try {
      await written;
    } catch (err) {
      this.#retire(pack);
      throw new StorageError(`writing pack ${pack.id}: ${errorMessage(err)}`);
    } finally {
      // Flushed (and, retired, closed) by the next commit, even if this
      // write failed, since chunks appended before it are published; and
      // again if a commit flushed the pack while this write was running.
      // Not a removed pack: the commit that found it closes its descriptor.
      if (!this.#removedPacks.has(pack.id)) this.#dirty.set(pack.id, pack);
    }
    return {
      digest: chunk.digest,
      pack: pack.id,
      offset: position + RECORD_HEADER,
      length: chunk.stored.length,
      size,
      raw: chunk.raw,
    };
  }

  /**
   * Adds a record at `position` (the pack's reserved end) to the pack's
   * staged write; resolves once its bytes are written, rejects if a write
   * covering any of them failed.
   */
  #stage(pack: OpenPack, position: number, header: Uint8Array, stored: Uint8Array): Promise<void> {
    let batch = pack.staged;
    if (!batch) {
      const { promise: settled, resolve: settle } = Promise.withResolvers<void>();
      batch = pack.staged = { position, parts: [], length: 0, records: [], settled, settle };
      pack.writes.add(settled);
      void settled.then(() => pack.writes.delete(settled));
      const staged = batch;
      setImmediate(() => this.#flushStaged(pack, staged));
    }
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    const start = position;
    const end = position + header.length + stored.length;
    batch.records.push({ start, end, resolve, reject });
    batch.parts.push(header, stored);
    batch.length += end - start;
    if (batch.length >= STAGE_FLUSH_AT) this.#flushStaged(pack, batch);
    return promise;
  }

  /**
   * Writes a staged batch: runs of small parts copied into one buffer,
   * large parts as they are (see {@linkcode writeAt}). All of them
   * settle before any record's outcome is known, so none is left running
   * on a descriptor; a record fails only if a write covering its bytes did.
   */
  #flushStaged(pack: OpenPack, batch: StagedWrite): void {
    if (pack.staged !== batch) return; // already written
    pack.staged = undefined;
    const writes: { start: number; end: number; written: Promise<number> }[] = [];
    let at = batch.position;
    let run: Uint8Array[] = [];
    let runLength = 0;
    const write = (buf: Uint8Array) => {
      writes.push({ start: at, end: at + buf.length, written: writeAt(pack, buf, at) });
      at += buf.length;
    };
    const writeRun = () => {
      if (runLength === 0) return;
      const buf = run.length === 1 ? run[0] : new Uint8Array(runLength);
      if (run.length > 1) {
        let o = 0;
        for (const part of run) {
          buf.set(part, o);
          o += part.length;
        }
      }
      write(buf);
      run = [];
      runLength = 0;
    };
    for (const part of batch.parts) {
      if (part.length >= STAGE_COPY_BELOW) {
        writeRun();
        write(part);
      } else {
        run.push(part);
        runLength += part.length;
      }
    }
    writeRun();
    void Promise.allSettled(writes.map((w) => w.written)).then((outcome) => {
      const failures = writes.flatMap((w, i) => {
        const r = outcome[i];
        if (r.status === "rejected") return [{ ...w, reason: r.reason }];
        const expected = w.end - w.start;
        return r.value === expected
          ? []
          : [{ ...w, reason: new Error(`short write (${r.value} of ${expected} bytes)`) }];
      });
      for (const record of batch.records) {
        const failed = failures.find((f) => f.start < record.end && record.start < f.end);
        if (failed) record.reject(failed.reason);
        else record.resolve();
      }
      batch.settle();
    });
  }

  /**
   * Creates a pack under a fresh id. An id whose file exists (its row was
   * lost: a full disk or a crash rolled the insert back after the file was
   * made) is skipped, and a file that could not be set up is removed.
   */
  #openPack(): OpenPack {
    Deno.mkdirSync(this.#dir, { recursive: true });
    // Its directory entry reaches the disk with the next commit.
    this.#unsyncedEntries = true;
    for (let attempt = 0;; attempt++) {
      const id = storageCall("new pack", () => Number(this.#stmt.newPack.get(Date.now())!.id));
      const path = this.#packPath(id);
      let file: Deno.FsFile;
      try {
        file = Deno.openSync(path, { write: true, createNew: true });
      } catch (err) {
        if (err instanceof Deno.errors.AlreadyExists && attempt < 100) continue;
        throw new StorageError(`creating pack ${id}: ${errorMessage(err)}`);
      }
      try {
        for (let at = 0; at < PACK_MAGIC.length;) {
          at += file.writeSync(PACK_MAGIC.subarray(at));
        }
      } catch (err) {
        file.close();
        fs.rmSync(path, { force: true });
        throw new StorageError(`creating pack ${id}: ${errorMessage(err)}`);
      }
      const size = PACK_MAGIC.length;
      this.#current = {
        id,
        file,
        filePos: size,
        tail: Promise.resolve(),
        size,
        writes: new Set(),
        writeback: FileWriteback.open(path, size, WRITEBACK_STEP),
      };
      this.#dirty.set(id, this.#current);
      return this.#current;
    }
  }

  /** Closes a pack's descriptor once its running writes have settled. */
  async #closeWhenIdle(pack: OpenPack): Promise<void> {
    await Promise.all(pack.writes);
    await closePackFile(pack);
  }

  /**
   * Stops appending to `pack`. Its descriptor stays open until the next
   * commit has flushed it (it is in `#dirty`).
   */
  #retire(pack: OpenPack): void {
    if (this.#current === pack) this.#current = undefined;
  }

  /**
   * Makes a closed upload's blob visible (committed at the next sync);
   * `reused` are committed chunks it relies on without writing them.
   */
  publish(blob?: { digest: Digest; chunks: ChunkMeta[] }, reused: Digest[] = []): void {
    for (const d of reused) this.#pendingReused.set(digestKey(d), d);
    if (blob) {
      this.#pendingBlobs.set(digestKey(blob.digest), {
        digest: blob.digest,
        chunks: encodeBlobIndex(blob.chunks),
      });
    }
  }

  /** Starts an upload (see `chunked_writer.ts`). */
  openWrite(): BlobWriter {
    return new ChunkedBlobWriter(
      new PackChunkSink(this, this.#level),
      this.#codec,
      this.#inflight,
    );
  }

  writeWhole(data: Uint8Array): Promise<Digest> {
    return data.length > SINGLE_CHUNK_MAX
      ? writeThrough(this.openWrite(), data)
      : writeSingleChunk(new PackChunkSink(this, this.#level), this.#codec, data);
  }

  /**
   * The commit point: makes every blob whose upload has closed durable and
   * enters it into the index. Rejects if one of `refs` (the blobs a
   * directory or PathInfo about to be stored refers to) could not be
   * entered because garbage collection removed a chunk it needs first: its
   * upload must run again (docs/gc.md#why-uploads-in-flight-are-safe); or
   * if one is not in the index at all (see {@linkcode #checkCommitted}).
   */
  async sync(refs?: readonly Digest[]): Promise<void> {
    await this.#commit.flush();
    if (!refs) return;
    this.#checkLost(refs);
    this.#checkCommitted(refs);
  }

  /**
   * Throws unless every blob of `refs` is in the index. Only a blob
   * committed there survives a crash, and a blob the client uploaded is
   * not always: a daemon acknowledges an upload before its commit point, so
   * if it is restarted in between, a client going on to store the
   * directories and PathInfo would make a path valid over blobs that are
   * gone. So would directories naming blobs never uploaded here, or
   * uploaded to another process sharing this store that has not committed
   * them yet.
   */
  #checkCommitted(refs: readonly Digest[]): void {
    const distinct = new Map<string, Digest>();
    for (const d of refs) if (!bytesEqual(d, EMPTY_DIGEST)) distinct.set(digestKey(d), d);
    const digests = [...distinct.values()];
    const rows = this.#indexRows(digests);
    digests.forEach((d, i) => {
      if (rows[i] || storageCall("blob lookup", () => this.#stmt.blob.get(d))) return;
      throw missingBlobError(d);
    });
  }

  /** Throws if garbage collection took one of `refs` before its upload was committed. */
  #checkLost(refs: readonly Digest[]): void {
    if (this.#lost.size === 0) return;
    for (const d of refs) {
      const key = digestKey(d);
      if (!this.#lost.has(key)) continue;
      // In the index after all (entered again by another process, or
      // never gone: a compaction's copies): reused, and marked so now.
      if (this.#touchWhole(d)) {
        this.#lost.delete(key);
        continue;
      }
      throw new StorageError(
        `blob ${b3Display(d)} was garbage collected before its upload was committed; ` +
          "upload it again",
      );
    }
  }

  /**
   * Marks a committed blob (its row and every chunk, or its one chunk) as
   * used now, unthrottled; false unless all of it is in the index.
   */
  #touchWhole(digest: Digest): boolean {
    return storageCall("touch", () =>
      inTransaction(this.#db, () => {
        const now = Date.now();
        const row = this.#stmt.blob.get(digest);
        if (!row) return Number(this.#stmt.touchChunk.run(now, digest).changes) === 1;
        this.#stmt.touchBlob.run(now, digest);
        return decodeBlobIndex(digest, row.chunks as Uint8Array).every((c) =>
          Number(this.#stmt.touchChunk.run(now, c.digest).changes) === 1
        );
      }));
  }

  async #commitRound(): Promise<void> {
    let chunks = [...this.#pendingChunks.values()];
    const blobs = [...this.#pendingBlobs.values()];
    const reused = [...this.#pendingReused.values()];
    let dirty = [...this.#dirty];
    this.#dirty.clear();
    // A pack garbage collection deleted (its writer went quiet for longer
    // than the grace period) must not get rows: they would point at
    // nothing. Its chunks are lost, and so is every blob that needs one.
    const removed = dirty.filter(([, p]) => p.file.statSync().nlink === 0).map(([id]) => id);
    if (removed.length > 0) {
      // Never append to it again: the next upload starts a new pack.
      for (const id of removed) this.#removedPacks.add(id);
      if (this.#current && removed.includes(this.#current.id)) this.#current = undefined;
      for (const [id, pack] of dirty) if (removed.includes(id)) void this.#closeWhenIdle(pack);
      dirty = dirty.filter(([id]) => !removed.includes(id));
      for (const c of chunks) {
        if (!removed.includes(c.pack)) continue;
        this.#pendingChunks.delete(digestKey(c.digest));
        this.#lost.add(digestKey(c.digest));
      }
      chunks = chunks.filter((c) => !removed.includes(c.pack));
      log.warn("pack removed by garbage collection before its chunks were committed", {
        packs: removed.join(","),
      });
    }
    await Promise.all(dirty.map(async ([id, pack]) => {
      // The chunks of this round were written before it began; writes still
      // running are waited for, so none lands after the flush unflushed.
      await Promise.all(pack.writes);
      try {
        await pack.file.syncData();
      } catch (err) {
        throw new DataLossError(
          `flushing pack ${id} to disk failed (${errorMessage(err)}): blobs written since the ` +
            "last commit may be lost; restart to write them again",
        );
      } finally {
        // A retired pack gets no new writes; one with writes started while
        // this commit waited is dirty again, and a later commit closes it.
        if (pack !== this.#current && !this.#dirty.has(id)) await closePackFile(pack);
      }
    }));
    if (this.#unsyncedEntries) await this.#syncDirectory();
    if (chunks.length === 0 && blobs.length === 0 && reused.length === 0) return;
    const lost: string[] = [];
    const entered = new Set<string>();
    storageCall("commit", () =>
      inTransaction(this.#db, () => {
        const now = Date.now();
        // A reused chunk collected since it was found is lost; the rest
        // are marked as used, so a collection from now on keeps them.
        for (const d of reused) {
          const key = digestKey(d);
          if (Number(this.#stmt.touchChunk.run(now, d).changes) === 1) entered.add(key);
          else lost.push(key);
        }
        // Checked again under the write lock, which garbage collection holds
        // while it deletes a pack (#deletePackUnlessUsed): a pack removed
        // since the check above, while this round flushed, gets no rows.
        const gone = this.#missingPacks(chunks.map((c) => c.pack));
        for (const c of chunks) {
          if (gone.has(c.pack)) {
            lost.push(digestKey(c.digest));
            continue;
          }
          this.#stmt.putChunk.run(
            c.digest,
            c.pack,
            c.offset,
            c.length,
            c.size,
            c.raw ? 1 : 0,
            now,
          );
          entered.add(digestKey(c.digest));
        }
        // A blob enters only with every chunk it needs in the index. One
        // can be missing only if something was lost, here or before.
        const check = lost.length > 0 || this.#lost.size > 0;
        for (const b of blobs) {
          if (
            check && !this.#indexHolds(decodeBlobIndex(b.digest, b.chunks).map((c) => c.digest))
          ) {
            lost.push(digestKey(b.digest));
            continue;
          }
          this.#stmt.putBlob.run(b.digest, b.chunks, now);
          entered.add(digestKey(b.digest));
        }
      }));
    // A chunk both lost (reused) and written afresh in this round is in.
    for (const key of lost) if (!entered.has(key)) this.#lost.add(key);
    if (this.#lost.size > 0) { for (const key of entered) this.#lost.delete(key); }
    if (lost.length > 0) {
      log.warn("garbage collection removed chunks uploads reused before they were committed", {
        lost: lost.length,
      });
    }
    // Published again meanwhile (same digest, same bytes) is harmless to
    // drop: entered, or lost, in which case its upload is refused and retried.
    for (const c of chunks) this.#pendingChunks.delete(digestKey(c.digest));
    for (const b of blobs) this.#pendingBlobs.delete(digestKey(b.digest));
    for (const d of reused) this.#pendingReused.delete(digestKey(d));
  }

  /**
   * Flushes the directory holding the packs: a new pack's own flush makes
   * its bytes durable but not, on every filesystem, its name, and rows
   * entered into the index must not outlive the file they point into.
   */
  async #syncDirectory(): Promise<void> {
    this.#unsyncedEntries = false;
    try {
      await syncDirectory(this.#dir, "blobs");
    } catch (err) {
      // Not opened: nothing flushed, nothing lost, and the next commit tries
      // again. A failed flush is a DataLossError, which the commit's flush
      // keeps, as for a failed fdatasync of a pack: every later commit
      // fails until a restart writes the data again.
      if (!(err instanceof DataLossError)) this.#unsyncedEntries = true;
      throw err;
    }
  }

  /** Which of `ids` are no longer on disk (garbage collection may have removed them). */
  #missingPacks(ids: readonly number[]): Set<number> {
    const missing = new Set<number>();
    for (const id of new Set(ids)) if (!this.#packExists(id)) missing.add(id);
    return missing;
  }

  /** Whether pack `id` is still on disk (garbage collection may have removed it). */
  #packExists(id: number): boolean {
    try {
      Deno.statSync(this.#packPath(id));
      return true;
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return false;
      throw err;
    }
  }

  /**
   * Deletes pack `id` unless a row points into it, in one transaction: a
   * writer enters rows under the same lock, after checking that the pack
   * is still there (#commitRound), so either its rows come first and the
   * pack stays, or the pack goes first and the writer's chunks count as
   * lost. False if the pack stays.
   */
  #deletePackUnlessUsed(id: number): boolean {
    return storageCall("compact", () =>
      inTransaction(this.#db, () => {
        if (this.#stmt.anyInPack.get(id)) return false;
        this.#forgetReadFd(id);
        Deno.removeSync(this.#packPath(id));
        return true;
      }));
  }

  /** Whether the index holds every one of `digests` as a chunk. */
  #indexHolds(digests: Digest[]): boolean {
    const rows = this.#indexRows(digests);
    for (let i = 0; i < rows.length; i++) if (!rows[i]) return false;
    return true;
  }

  /**
   * Garbage collection's sweep (docs/gc.md): drops the index rows of blobs
   * and chunks that are neither live nor used since `cutoff`, then gives
   * the space back: packs with nothing live are deleted, packs whose live
   * share fell below {@linkcode COMPACT_BELOW} are rewritten. Only packs
   * untouched since `cutoff` are deleted or rewritten, so packs other
   * processes are still appending to are left alone.
   */
  async sweep(isLive: (digest: Digest) => boolean, options: SweepOptions): Promise<SweepReport> {
    const { cutoff, dryRun } = options;
    // What this service published goes into the index first.
    await this.sync();
    const liveChunks = new Set<string>();
    const deadBlobs: Digest[] = [];
    let kept = 0;
    for (const row of this.#db.prepare("SELECT digest, chunks, touched FROM blobs").iterate()) {
      const digest = row.digest as Uint8Array;
      if (isLive(digest) || Number(row.touched) >= cutoff) {
        kept++;
        for (const c of decodeBlobIndex(digest, row.chunks as Uint8Array)) {
          liveChunks.add(digestKey(c.digest));
        }
      } else {
        deadBlobs.push(digest);
      }
    }
    const deadChunks: Digest[] = [];
    let removedBytes = 0;
    for (
      const row of this.#db.prepare("SELECT digest, length, touched FROM chunks").iterate()
    ) {
      const digest = row.digest as Uint8Array;
      if (isLive(digest) || liveChunks.has(digestKey(digest)) || Number(row.touched) >= cutoff) {
        kept++;
      } else {
        deadChunks.push(digest);
        removedBytes += RECORD_HEADER + Number(row.length);
      }
    }
    const removed = deadBlobs.length + deadChunks.length;
    if (dryRun) return { removed, removedBytes, kept, reclaimedBytes: 0 };
    // The touched check runs again inside the transaction: a writer that
    // reused a row since it was read above keeps it.
    storageCall("sweep", () =>
      inTransaction(this.#db, () => {
        const dropBlob = this.#db.prepare("DELETE FROM blobs WHERE digest = ? AND touched < ?");
        const dropChunk = this.#db.prepare("DELETE FROM chunks WHERE digest = ? AND touched < ?");
        for (const d of deadBlobs) dropBlob.run(d, cutoff);
        for (const d of deadChunks) dropChunk.run(d, cutoff);
      }));
    return { removed, removedBytes, kept, reclaimedBytes: await this.#compact(cutoff) };
  }

  /** Deletes or rewrites packs that are mostly garbage; returns the bytes freed. */
  async #compact(cutoff: number): Promise<number> {
    const live = new Map<number, number>();
    const rows = this.#db.prepare(
      `SELECT pack, sum(length) + count(*) * ${RECORD_HEADER} AS bytes FROM chunks GROUP BY pack`,
    ).all();
    for (const row of rows) live.set(Number(row.pack), Number(row.bytes));
    let reclaimed = 0;
    for (const entry of Deno.readDirSync(this.#dir)) {
      const m = /^(\d+)\.pack$/.exec(entry.name);
      if (!m) continue;
      const id = Number(m[1]);
      if (id === this.#current?.id || this.#dirty.has(id)) continue;
      await this.#beforeCompacting?.(id);
      const path = this.#packPath(id);
      const stat = Deno.statSync(path);
      // Still being appended to (here or by another process), or too new.
      if ((stat.mtime?.getTime() ?? Date.now()) >= cutoff) continue;
      const liveBytes = live.get(id) ?? 0;
      if (liveBytes === 0) {
        if (this.#deletePackUnlessUsed(id)) reclaimed += stat.size;
      } else if (liveBytes < (stat.size - PACK_MAGIC.length) * COMPACT_BELOW) {
        reclaimed += await this.#rewrite(id, stat.size);
      }
    }
    return reclaimed;
  }

  /**
   * Copies the live records of pack `id` into this service's current pack,
   * verifying each, points the index at the copies, then deletes the pack.
   * Returns the bytes freed (old size minus what was copied).
   */
  async #rewrite(id: number, oldSize: number): Promise<number> {
    const rows = this.#db.prepare(
      "SELECT digest, offset, length, size, raw FROM chunks WHERE pack = ?",
    ).all(id);
    const moved: ChunkLocation[] = [];
    let copied = 0;
    for (const row of rows) {
      const at: ChunkLocation = {
        digest: row.digest as Uint8Array,
        pack: id,
        offset: Number(row.offset),
        length: Number(row.length),
        size: Number(row.size),
        raw: Number(row.raw) === 1,
      };
      const stored = new Uint8Array(at.length);
      fs.readSync(this.#readFd(id), stored, 0, at.length, at.offset);
      // A damaged record is not copied (verify reports it); the pack stays.
      await this.#codec.decode(stored.slice(), at.digest, at.size, at.raw);
      moved.push(await this.append({ digest: at.digest, stored, raw: at.raw }, at.size));
      copied += RECORD_HEADER + at.length;
    }
    // The copies are durable before the index points at them, and none was
    // lost (another process's gc may have removed the pack they went to).
    await this.sync();
    const copiesGone = (to: number) =>
      new StorageError(
        `pack ${id}: its live records were copied to pack ${to}, which another ` +
          "garbage collection removed meanwhile; the pack stays, run gc again",
      );
    const lost = moved.find((m) => this.#lost.has(digestKey(m.digest)));
    if (lost) throw copiesGone(lost.pack);
    storageCall("compact", () =>
      inTransaction(this.#db, () => {
        // Under the write lock, as a writer's commit checks its packs: no
        // row points into the copies yet, so another process's gc may have
        // deleted the pack they went to since they were committed.
        const [gone] = this.#missingPacks(moved.map((m) => m.pack));
        if (gone !== undefined) throw copiesGone(gone);
        const move = this.#db.prepare(
          "UPDATE chunks SET pack = ?, offset = ? WHERE digest = ? AND pack = ?",
        );
        for (const m of moved) move.run(m.pack, m.offset, m.digest, id);
      }));
    // Rows its writer entered since they were read keep the pack (the
    // copies cost space until the next collection).
    if (!this.#deletePackUnlessUsed(id)) return 0;
    return oldSize - copied;
  }

  #forgetReadFd(id: number): void {
    const fd = this.#readFds.get(id);
    if (fd === undefined) return;
    this.#readFds.delete(id);
    fs.closeSync(fd);
  }

  /** Commits what is published, then closes the packs and the index. */
  async close(): Promise<void> {
    if (this.#closed) return;
    let failure: unknown;
    try {
      await this.sync();
    } catch (err) {
      failure = err;
    }
    this.#closed = true;
    if (this.#current) await this.#closeWhenIdle(this.#current);
    this.#current = undefined;
    for (const fd of this.#readFds.values()) fs.closeSync(fd);
    this.#readFds.clear();
    this.#db.close();
    await this.#lease.release();
    if (failure) throw failure;
  }
}

/** One upload's chunks: appended as they come, published when it closes. */
class PackChunkSink implements ChunkSink {
  readonly allowRaw = true;
  readonly #service: PackBlobService;
  readonly #reused: Digest[] = [];

  constructor(service: PackBlobService, readonly level: number | undefined) {
    this.#service = service;
  }

  async storeChunk(chunk: EncodedChunk, size: number): Promise<void> {
    const stored = await this.#service.locateSoon(chunk.digest);
    if (!stored) {
      try {
        await this.#service.append(chunk, size);
      } finally {
        // Written (or failed): the bytes are in the page cache or lost, and
        // nothing reads this buffer again. Freed now, not at a collection.
        releaseWhole(chunk.stored);
      }
    } else if (stored.touched !== undefined) {
      // Committed: reused, and marked as used at the commit (docs/gc.md).
      this.#reused.push(chunk.digest);
    }
  }

  finishBlob(digest: Digest, chunks: ChunkMeta[]): Promise<void> {
    this.#service.publish(chunks.length === 1 ? undefined : { digest, chunks }, this.#reused);
    return Promise.resolve();
  }
}

/** Builds the service from a `pack:///abs/dir` URL. */
export function packBlobServiceFromUrl(url: URL): PackBlobService {
  if (url.host !== "") throw new StorageError("no host allowed");
  const path = decodeURIComponent(url.pathname);
  if (path === "" || path === "/") throw new StorageError(`invalid pack store path: ${url.href}`);
  const options: PackBlobServiceOptions = {};
  for (const [name, value] of url.searchParams) {
    if (name !== "compression-level") {
      throw new StorageError(`unknown pack store option ${name} (known: compression-level)`);
    }
    if (!/^\d+$/.test(value)) throw compressionLevelError(value);
    options.compressionLevel = Number(value);
  }
  return new PackBlobService(path, options);
}

/** A `compression-level` (as given) that is not a zstd level a store may use. */
function compressionLevelError(level: number | string): StorageError {
  return new StorageError(
    `compression level ${level}: not an integer from ${MIN_ZSTD_LEVEL} to ${MAX_ZSTD_LEVEL}`,
  );
}

/** A write into a pack that garbage collection removed meanwhile. */
function removedPackError(pack: number): StorageError {
  return new StorageError(
    `pack ${pack} was removed by garbage collection while a chunk was written to it ` +
      "(an upload took longer than the grace period); upload again",
  );
}
