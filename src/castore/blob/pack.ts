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
 *   as a `StatBlobResponse`), `packs` (handing out pack ids, so processes
 *   sharing a store never append to the same file).
 *
 * Each service writes its own pack (a new one per process, and whenever
 * one reaches {@linkcode PACK_TARGET_SIZE}), one positioned `write` per
 * chunk, without flushing. A blob's chunks become visible to this process once its upload
 * closes; they are made durable and entered into the index at the commit
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
import { StatBlobResponse } from "../../proto/tvix/castore/protos/rpc_blobstore.ts";
import {
  B3_LEN,
  b3Display,
  bytesEqual,
  checkDigestLength,
  type Digest,
  digestKey,
  EMPTY_DIGEST,
} from "../digest.ts";
import { errorMessage, InvalidRequestError, StorageError } from "../../errors.ts";
import { inTransaction, openDatabase, storageCall } from "../sqlite_db.ts";
import { DataLossError, GroupFlush } from "../objectstore/flush.ts";
import type { EncodedChunk } from "./chunk_codec.ts";
import { acquireChunkCodec, type ChunkCodec, type ChunkCodecLease } from "./chunk_pool.ts";
import { ChunkedBlobWriter, type ChunkSink } from "./chunked_writer.ts";
import type { BlobReader, BlobService, BlobWriter, ChunkMeta } from "./service.ts";

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
/** Chunks up to this many stored bytes are read synchronously (page cache: microseconds). */
const SYNC_READ_LIMIT = 64 * 1024;

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
}

/** Options of {@linkcode PackBlobService}. */
export interface PackBlobServiceOptions {
  /** Chunks encoded or being written at once per upload. */
  maxInflightChunks?: number;
  /** Chunks fetched and verified ahead of the one a reader yields. */
  readAhead?: number;
  /** Chunk Workers (see `chunk_pool.ts`); 0 runs the codec on this thread. */
  workers?: number;
  /** Packs are closed beyond this size (tests use small ones). */
  packTargetSize?: number;
}

/** The pack being appended to. */
interface OpenPack {
  id: number;
  fd: number;
  size: number;
}

/** A blob's chunk list, as stored in the `blobs` table. */
function encodeChunkList(chunks: ChunkMeta[]): Uint8Array {
  return StatBlobResponse.encode({ chunks, bao: new Uint8Array(0) }).finish();
}

function decodeChunkList(digest: Digest, raw: Uint8Array): ChunkMeta[] {
  let index: StatBlobResponse;
  try {
    index = StatBlobResponse.decode(raw);
  } catch (err) {
    throw new StorageError(`blob index ${b3Display(digest)} is corrupt: ${errorMessage(err)}`);
  }
  for (const c of index.chunks) {
    if (c.digest.length !== B3_LEN) {
      throw new StorageError(`blob index ${b3Display(digest)} lists an invalid chunk digest`);
    }
  }
  return index.chunks.map((c) => ({ digest: c.digest, size: c.size }));
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
  readonly #maxInflight: number;
  readonly #readAhead: number;
  readonly #packTarget: number;
  readonly #stmt: Record<
    "chunk" | "blob" | "putChunk" | "putBlob" | "newPack",
    StatementSync
  >;
  /** Published chunks (their upload closed) not yet in the index. */
  readonly #pendingChunks = new Map<string, ChunkLocation>();
  /** Published blobs of several chunks (encoded chunk lists) not yet in the index. */
  readonly #pendingBlobs = new Map<string, { digest: Digest; chunks: Uint8Array }>();
  /** Packs appended to since the last commit: they need an fdatasync. */
  readonly #dirty = new Map<number, number>();
  readonly #readFds = new Map<number, number>();
  readonly #commit = new GroupFlush(() => this.#commitRound());
  #current: OpenPack | undefined;
  #closed = false;

  /** Opens (creating if needed) the pack store in `dir`. */
  constructor(dir: string, options: PackBlobServiceOptions = {}) {
    this.#dir = dir;
    this.#maxInflight = Math.max(1, options.maxInflightChunks ?? 8);
    this.#readAhead = Math.max(1, options.readAhead ?? 4);
    this.#packTarget = options.packTargetSize ?? PACK_TARGET_SIZE;
    this.#db = openDatabase(join(dir, "index.sqlite"));
    try {
      // The index must never be behind what it refers to after a crash
      // (NORMAL may lose the last commits), and commits are one per import.
      this.#db.exec("PRAGMA synchronous = FULL");
      this.#db.exec(`
        CREATE TABLE IF NOT EXISTS packs (
          id INTEGER PRIMARY KEY AUTOINCREMENT, created INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS chunks (
          digest BLOB PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL,
          length INTEGER NOT NULL, size INTEGER NOT NULL, raw INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS blobs (
          digest BLOB PRIMARY KEY, chunks BLOB NOT NULL) WITHOUT ROWID;`);
      this.#stmt = {
        chunk: this.#db.prepare(
          "SELECT pack, offset, length, size, raw FROM chunks WHERE digest = ?",
        ),
        blob: this.#db.prepare("SELECT chunks FROM blobs WHERE digest = ?"),
        putChunk: this.#db.prepare(
          "INSERT OR IGNORE INTO chunks (digest, pack, offset, length, size, raw) " +
            "VALUES (?, ?, ?, ?, ?, ?)",
        ),
        putBlob: this.#db.prepare("INSERT OR IGNORE INTO blobs (digest, chunks) VALUES (?, ?)"),
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

  /** Where a chunk (or single-chunk blob) is stored, published or committed. */
  locate(digest: Digest): ChunkLocation | undefined {
    const pending = this.#pendingChunks.get(digestKey(digest));
    if (pending) return pending;
    const row = storageCall("chunk lookup", () => this.#stmt.chunk.get(digest));
    if (!row) return undefined;
    return {
      digest,
      pack: Number(row.pack),
      offset: Number(row.offset),
      length: Number(row.length),
      size: Number(row.size),
      raw: Number(row.raw) === 1,
    };
  }

  /** The chunk list of a blob of several chunks (or the empty blob), if stored. */
  #blobChunks(digest: Digest): ChunkMeta[] | undefined {
    const pending = this.#pendingBlobs.get(digestKey(digest));
    const raw = pending?.chunks ??
      storageCall("blob lookup", () => this.#stmt.blob.get(digest))?.chunks as
        | Uint8Array
        | undefined;
    return raw && decodeChunkList(digest, raw);
  }

  has(digest: Digest): Promise<boolean> {
    try {
      checkDigestLength(digest);
      return Promise.resolve(
        this.locate(digest) !== undefined || this.#blobChunks(digest) !== undefined,
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
    const single = this.locate(digest);
    if (single) {
      const data = await this.#readChunk(single);
      return (async function* () {
        if (offset < data.length) yield data.subarray(offset);
      })();
    }
    const list = this.#blobChunks(digest);
    if (!list) return undefined;
    let start = 0;
    let startOffset = 0;
    while (start < list.length && startOffset + Number(list[start].size) <= offset) {
      startOffset += Number(list[start].size);
      start++;
    }
    return this.#readChunks(list, start, offset - startOffset);
  }

  async *#readChunks(list: ChunkMeta[], start: number, skip: number): AsyncGenerator<Uint8Array> {
    const pending: Promise<Uint8Array>[] = [];
    let next = start;
    const fill = () => {
      while (pending.length < this.#readAhead && next < list.length) {
        const { digest, size } = list[next++];
        const fetch = Promise.resolve().then(() => {
          const at = this.locate(digest);
          if (!at) throw new StorageError(`chunk ${b3Display(digest)} is missing`);
          if (at.size !== Number(size)) {
            throw new StorageError(
              `chunk ${b3Display(digest)} has ${at.size} bytes, index says ${size}`,
            );
          }
          return this.#readChunk(at);
        });
        // Rejections surface when awaited below; a reader dropped early
        // must not leave them unhandled.
        fetch.catch(() => {});
        pending.push(fetch);
      }
    };
    for (fill(); pending.length > 0; fill()) {
      const data = await pending.shift()!;
      fill();
      yield skip > 0 ? data.subarray(skip) : data;
      skip = 0;
    }
  }

  /** Reads, decompresses and verifies one chunk. */
  async #readChunk(at: ChunkLocation): Promise<Uint8Array> {
    const fd = this.#readFd(at.pack);
    const stored = new Uint8Array(at.length);
    let n: number;
    try {
      n = at.length <= SYNC_READ_LIMIT
        ? fs.readSync(fd, stored, 0, at.length, at.offset)
        : await new Promise<number>((resolve, reject) =>
          fs.read(fd, stored, 0, at.length, at.offset, (err, got) =>
            err ? reject(err) : resolve(got))
        );
    } catch (err) {
      throw new StorageError(`reading pack ${at.pack}: ${errorMessage(err)}`);
    }
    if (n !== at.length) {
      throw new StorageError(`chunk ${b3Display(at.digest)} is truncated in pack ${at.pack}`);
    }
    return await this.#codec.decode(stored, at.digest, at.size, at.raw);
  }

  /** A file descriptor for reading pack `id` (kept open, a bounded number of them). */
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
      throw new StorageError(`opening pack ${id}: ${errorMessage(err)}`);
    }
    if (this.#readFds.size >= READ_HANDLES) {
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
   * The space is reserved at once, so appends never overlap; the write runs
   * on the threadpool (copying into the page cache is a good part of an
   * import's work). A failure retires the pack: its tail is now unknown.
   */
  async append(chunk: EncodedChunk, size: number): Promise<ChunkLocation> {
    if (this.#closed) throw new StorageError("pack store is closed");
    const pack = this.#current ?? this.#openPack();
    const header = recordHeader(chunk, size);
    const position = pack.size;
    const length = RECORD_HEADER + chunk.stored.length;
    pack.size += length;
    // Flushed (and its descriptor closed) at the next commit even if this
    // write fails: chunks appended before it are still published.
    this.#dirty.set(pack.id, pack.fd);
    if (pack.size >= this.#packTarget) this.#retire(pack);
    try {
      const n = await new Promise<number>((resolve, reject) =>
        fs.writev(
          pack.fd,
          [header, chunk.stored],
          position,
          (err, written) => err ? reject(err) : resolve(written),
        )
      );
      if (n !== length) throw new Error(`short write (${n} of ${length} bytes)`);
    } catch (err) {
      this.#retire(pack);
      throw new StorageError(`writing pack ${pack.id}: ${errorMessage(err)}`);
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
   * Creates a pack under a fresh id. An id whose file exists (its row was
   * lost: a full disk or a crash rolled the insert back after the file was
   * made) is skipped, and a file that could not be set up is removed.
   */
  #openPack(): OpenPack {
    Deno.mkdirSync(this.#dir, { recursive: true });
    for (let attempt = 0;; attempt++) {
      const id = storageCall("new pack", () => Number(this.#stmt.newPack.get(Date.now())!.id));
      const path = this.#packPath(id);
      let fd: number;
      try {
        fd = fs.openSync(path, "wx");
      } catch (err) {
        if ((err as { code?: string }).code === "EEXIST" && attempt < 100) continue;
        throw new StorageError(`creating pack ${id}: ${errorMessage(err)}`);
      }
      try {
        fs.writeSync(fd, PACK_MAGIC, 0, PACK_MAGIC.length, 0);
      } catch (err) {
        fs.closeSync(fd);
        fs.rmSync(path, { force: true });
        throw new StorageError(`creating pack ${id}: ${errorMessage(err)}`);
      }
      this.#current = { id, fd, size: PACK_MAGIC.length };
      this.#dirty.set(id, fd);
      return this.#current;
    }
  }

  /**
   * Stops appending to `pack`. Its descriptor stays open until the next
   * commit has flushed it (it is in `#dirty`).
   */
  #retire(pack: OpenPack): void {
    if (this.#current === pack) this.#current = undefined;
  }

  /** Makes a closed upload's chunks and blob visible (committed at the next sync). */
  publish(chunks: ChunkLocation[], blob?: { digest: Digest; chunks: ChunkMeta[] }): void {
    for (const c of chunks) this.#pendingChunks.set(digestKey(c.digest), c);
    if (blob) {
      this.#pendingBlobs.set(digestKey(blob.digest), {
        digest: blob.digest,
        chunks: encodeChunkList(blob.chunks),
      });
    }
  }

  /** Starts an upload (see `chunked_writer.ts`). */
  openWrite(): BlobWriter {
    return new ChunkedBlobWriter(new PackChunkSink(this), this.#codec, this.#maxInflight);
  }

  /**
   * The commit point: makes every blob whose upload has closed durable and
   * enters it into the index.
   */
  sync(): Promise<void> {
    return this.#commit.flush();
  }

  async #commitRound(): Promise<void> {
    const chunks = [...this.#pendingChunks.values()];
    const blobs = [...this.#pendingBlobs.values()];
    const dirty = [...this.#dirty];
    this.#dirty.clear();
    const current = this.#current?.fd;
    await Promise.all(
      dirty.map(([id, fd]) =>
        new Promise<void>((resolve, reject) =>
          fs.fdatasync(fd, (err) => {
            if (fd !== current) fs.close(fd, () => {});
            if (!err) return resolve();
            reject(
              new DataLossError(
                `flushing pack ${id} to disk failed (${err.message}): blobs written since the ` +
                  "last commit may be lost; restart to write them again",
              ),
            );
          })
        )
      ),
    );
    if (chunks.length === 0 && blobs.length === 0) return;
    storageCall("commit", () =>
      inTransaction(this.#db, () => {
        for (const c of chunks) {
          this.#stmt.putChunk.run(c.digest, c.pack, c.offset, c.length, c.size, c.raw ? 1 : 0);
        }
        for (const b of blobs) this.#stmt.putBlob.run(b.digest, b.chunks);
      }));
    // Published again meanwhile (same digest, same bytes) is harmless to drop.
    for (const c of chunks) this.#pendingChunks.delete(digestKey(c.digest));
    for (const b of blobs) this.#pendingBlobs.delete(digestKey(b.digest));
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
    if (this.#current) fs.closeSync(this.#current.fd);
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
  readonly #written: ChunkLocation[] = [];

  constructor(service: PackBlobService) {
    this.#service = service;
  }

  async storeChunk(chunk: EncodedChunk, size: number): Promise<void> {
    if (!this.#service.locate(chunk.digest)) {
      this.#written.push(await this.#service.append(chunk, size));
    }
  }

  finishBlob(digest: Digest, chunks: ChunkMeta[]): Promise<void> {
    this.#service.publish(this.#written, chunks.length === 1 ? undefined : { digest, chunks });
    return Promise.resolve();
  }
}

/** Builds the service from a `pack:///abs/dir` URL. */
export function packBlobServiceFromUrl(url: URL): PackBlobService {
  if (url.host !== "") throw new StorageError("no host allowed");
  const path = decodeURIComponent(url.pathname);
  if (path === "" || path === "/") throw new StorageError(`invalid pack store path: ${url.href}`);
  return new PackBlobService(path);
}
