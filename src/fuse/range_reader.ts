/**
 * Random access to byte ranges of blobs for FUSE reads, chunk by chunk.
 *
 * A read at an offset fetches only the chunks that cover it: the blob's
 * chunk list comes from `BlobService.chunks()` (gRPC `Stat(send_chunks)` or
 * the local object store) and each chunk is read by its own digest, so
 * reading the end of a large file does not stream its beginning. Fetched
 * chunks land in a cache shared by all Workers ({@linkcode SharedChunkCache},
 * so a chunk is fetched and verified once even though the kernel spreads a
 * reader's requests over all channels) and in a bounded LRU of decompressed
 * bytes per Worker. A read served from the shared cache borrows the bytes
 * in place and the reply is written from there (no copy). Sequential
 * readers trigger readahead of the following chunks, each Worker taking
 * every Nth chunk, so decompression and verification (what bounds a read
 * from the object store) run on all Workers at once; over a daemon it goes
 * out in bursts, which the gRPC client batches into few calls. Blobs
 * without a chunk list are read whole (small ones, then cached like a
 * chunk) or through `openRead(digest, offset)` streams that continue where
 * the previous read ended.
 *
 * Bytes come only from the blob service, whose backends verify what they
 * yield, or from the shared cache, which Workers fill only with what they
 * fetched from there. Every chunk's length is checked against the chunk
 * list and a failed fetch is never cached, so a read returns the right
 * bytes or throws (a `StorageError` for bad data, answered with `EIO` by
 * the filesystem).
 *
 * @module
 */
import { concatBytes, type Digest, digestKey } from "../castore/digest.ts";
import { StorageError } from "../errors.ts";
import type { BlobService } from "../castore/blob/service.ts";
import { owned, releaseWhole } from "../castore/blob/chunk_codec.ts";
import { LoadingCache } from "../loading_cache.ts";
import type { Borrowed, SharedChunkCache } from "./shared_chunks.ts";

/** Blobs without a chunk list up to this size are fetched whole and cached as one chunk. */
const WHOLE_BLOB_LIMIT = 16 << 20;
/** Chunk lists remembered per Worker. */
const CHUNK_LIST_ENTRIES = 8192;
/** Open fallback streams kept per Worker. */
const MAX_STREAMS = 32;
/**
 * Of those, streams kept per blob from a remote service, where each holds a
 * verified copy of the whole blob.
 */
const REMOTE_STREAMS_PER_BLOB = 2;

/** Tuning of a {@linkcode BlobRangeReader}. */
export interface BlobRangeReaderOptions {
  /** Bytes of decompressed chunks to keep (default 256 MiB). */
  cacheBytes?: number;
  /** Bytes to fetch ahead of a sequential reader (default 8 MiB; 0 disables). */
  readahead?: number;
  /** A cache shared with the other Workers, consulted before fetching a chunk. */
  shared?: SharedChunkCache;
  /**
   * How far past the previous read's end a read may start and still count
   * as sequential: the kernel spreads one reader's requests over all
   * channels, so each Worker sees only every Nth of them.
   */
  sequentialWindow?: number;
  /**
   * This Worker's index among `workers` sharing {@linkcode shared}: readahead
   * fetches only the chunks whose index is this one modulo `workers`, so the
   * Workers decompress and verify different chunks in parallel (the others
   * come through the shared cache).
   */
  workerId?: number;
  /** Number of Workers sharing the cache (default 1). */
  workers?: number;
}

/** Bytes read: `pieces` in order; `release` (if set) must be called once they were sent. */
export interface ReadResult {
  pieces: Uint8Array[];
  release?: () => void;
}

/** What this Worker knows about one blob's chunks, and how it has been reading them. */
interface ChunkList {
  /** The blob's digest. */
  digest: Digest;
  keys: string[];
  digests: Digest[];
  /** Start offset of each chunk, plus the total size at the end. */
  starts: number[];
  /**
   * Readahead has been issued for chunks before this index (this Worker's
   * share of them), so a sequential read only looks at chunks that newly
   * entered its window instead of rescanning the whole window.
   */
  prefetched: number;
  /**
   * Where this Worker's previous read of the blob ended, to tell a
   * sequential reader (worth reading ahead for) from a random one. Kept
   * with the list, so one bound covers both.
   */
  lastEnd: number | undefined;
}

/** An `openRead` stream positioned at `pos`, for blobs without a chunk list. */
interface Stream {
  pos: number;
  iter: AsyncIterator<Uint8Array>;
  /** Bytes received but not handed out yet (they start at `pos`). */
  pending: Uint8Array;
}

/** Reads byte ranges of blobs, fetching only the chunks they cover. One per Worker. */
export class BlobRangeReader {
  readonly #blob: BlobService;
  /**
   * Decompressed chunks (and small blobs without a chunk list) by digest,
   * bounded by bytes; concurrent reads of one chunk share its fetch.
   */
  readonly #chunks: LoadingCache<string, Uint8Array>;
  /**
   * Chunk lists by blob digest; concurrent reads of a new blob share one
   * `chunks()` call. Absence and failures are not cached: the blob may
   * appear later.
   */
  readonly #lists = new LoadingCache<string, ChunkList>(CHUNK_LIST_ENTRIES);
  /**
   * Open fallback streams by `<blob>@<position reached>`. Not a
   * {@linkcode LoadingCache}: a stream serves one read at a time, so a read
   * takes it out and puts it back under the position where it ended (its
   * key changes with every use), and a stream dropped to make room must be
   * closed, while a cache drops values silently and keeps their key.
   */
  readonly #streams = new Map<string, Stream>();
  readonly #readahead: number;
  /**
   * From a service that batches reads, readahead waits until this much of
   * its window is used and then tops it up at once, so the chunks of a
   * burst go out together: the gRPC client batches the chunks asked for in
   * one turn into one `SmallBlobService.Read` call. Topped up on every
   * read, a sequential reader made a call per chunk or two (53 calls for 79
   * chunks in the daemon case of tests/fuse/range_reader_test.ts, 11 with
   * bursts), and calls, not bytes, were what a mount over a daemon spent
   * its time on. Elsewhere (local stores, S3) there is nothing to batch,
   * and the Workers fetch and decode chunks as the reader comes. Half the
   * window: readahead still runs at least that far ahead of the reader.
   */
  readonly #burst: number;
  readonly #window: number;
  readonly #shared?: SharedChunkCache;
  readonly #workerId: number;
  readonly #workers: number;

  /** A reader over `blob`. */
  constructor(blob: BlobService, opts: BlobRangeReaderOptions = {}) {
    this.#blob = blob;
    this.#chunks = new LoadingCache(opts.cacheBytes ?? 256 << 20, (bytes) => bytes.length);
    this.#readahead = opts.readahead ?? 8 << 20;
    this.#burst = blob.batchesReads ? Math.floor(this.#readahead / 2) : 0;
    this.#window = opts.sequentialWindow ?? 8 << 20;
    this.#shared = opts.shared;
    this.#workers = opts.shared ? Math.max(1, opts.workers ?? 1) : 1;
    this.#workerId = (opts.workerId ?? 0) % this.#workers;
  }

  /** Chunk loads in progress (including readahead). */
  get loading(): number {
    return this.#chunks.loading;
  }

  /**
   * Checks that the blob exists (and learns its chunk list). Throws a
   * `StorageError` if it does not or its chunks do not add up to `size`.
   */
  async check(digest: Digest, size: number): Promise<void> {
    if (size === 0) return;
    const key = digestKey(digest);
    const list = await this.#chunkList(digest, key, size);
    if (!list) throw new StorageError(`blob ${key} not found`);
  }

  /**
   * Up to `length` bytes of the blob (of `size` bytes) from `offset`, as
   * pieces to be sent in order. Fewer bytes only at the end of the blob.
   * Pieces may be borrowed from the shared cache: call `release` once they
   * were written out (they stay valid until then). Synchronous when the
   * chunk list and every chunk needed are in memory (a warm read), so the
   * reply goes out without a trip through the event loop.
   */
  read(
    digest: Digest,
    size: number,
    offset: number,
    length: number,
  ): ReadResult | Promise<ReadResult> {
    const end = Math.min(size, offset + length);
    if (offset >= end) return { pieces: [] };
    const key = digestKey(digest);
    const known = this.#lists.get(key);
    if (known) return this.#readListed(known, offset, end);
    return this.#chunkList(digest, key, size).then((list) => {
      if (!list) throw new StorageError(`blob ${key} not found`);
      return this.#readListed(list, offset, end);
    });
  }

  #readListed(list: ChunkList, offset: number, end: number): ReadResult | Promise<ReadResult> {
    if (list.keys.length === 0) {
      const size = list.starts[0];
      return this.#readStream(list.digest, size, offset, end).then((b) => ({ pieces: [b] }));
    }
    const last = list.lastEnd;
    const sequential = offset === 0 || (last !== undefined && offset >= last &&
      offset - last <= this.#window);
    list.lastEnd = end;

    const first = chunkIndex(list.starts, offset);
    const chunks: (Uint8Array | Promise<Uint8Array>)[] = [];
    const borrowed: Borrowed[] = [];
    let pending = false;
    let i = first;
    for (; i < list.keys.length && list.starts[i] < end; i++) {
      const c = this.#get(list, i, borrowed);
      if (c instanceof Promise) pending = true;
      chunks.push(c);
    }
    const release = () => borrowed.forEach((b) => b.release());
    if (sequential && this.#readahead > 0) this.#prefetch(list, i, end + this.#readahead);
    const assemble = (ready: Uint8Array[]): ReadResult => {
      const pieces: Uint8Array[] = [];
      for (let j = 0; j < ready.length; j++) {
        const start = list.starts[first + j];
        const from = Math.max(offset, start) - start;
        const to = Math.min(end, start + ready[j].length) - start;
        pieces.push(ready[j].subarray(from, to));
      }
      return borrowed.length ? { pieces, release } : { pieces };
    };
    if (!pending) return assemble(chunks as Uint8Array[]);
    // Settle all before releasing anything: a late borrow must be released too.
    return Promise.allSettled(chunks).then((settled) => {
      const ready: Uint8Array[] = [];
      for (const r of settled) {
        if (r.status === "rejected") {
          release();
          throw r.reason;
        }
        ready.push(r.value);
      }
      return assemble(ready);
    });
  }

  /**
   * Chunk `i` from memory if possible (ours, or borrowed in place from the
   * shared cache: no copy), after another Worker's fill if one is under
   * way, else fetched by this Worker.
   */
  #get(
    list: ChunkList,
    i: number,
    borrowed: Borrowed[],
    waited = false,
  ): Uint8Array | Promise<Uint8Array> {
    const mine = this.#chunks.get(list.keys[i]);
    if (mine) return mine;
    const b = this.#shared?.borrow(list.digests[i]);
    if (b instanceof Promise && !waited) return b.then(() => this.#get(list, i, borrowed, true));
    if (b && !(b instanceof Promise)) {
      if (b.bytes.length === list.starts[i + 1] - list.starts[i]) {
        borrowed.push(b);
        return b.bytes;
      }
      b.release();
    }
    return this.#chunk(list, i).then((bytes) => bytes ?? this.#borrowFilled(list, i, borrowed));
  }

  /**
   * Chunk `i` right after this Worker put it into the shared cache: borrowed
   * from there, or (evicted meanwhile by a full cache) read again for this
   * reply alone.
   */
  #borrowFilled(
    list: ChunkList,
    i: number,
    borrowed: Borrowed[],
  ): Uint8Array | Promise<Uint8Array> {
    const size = list.starts[i + 1] - list.starts[i];
    const b = this.#shared!.borrow(list.digests[i]);
    if (b && !(b instanceof Promise)) {
      if (b.bytes.length === size) {
        borrowed.push(b);
        return b.bytes;
      }
      b.release();
    }
    return this.#readWhole(list.digests[i], size);
  }

  /** Starts fetching this Worker's share of the chunks from index `from` up to byte `until`. */
  #prefetch(list: ChunkList, from: number, until: number): void {
    // Continue where the last readahead stopped, unless the reader jumped
    // back (a new pass over the file) or ahead of it. Once readahead has
    // reached the end, every read counts as a new pass: a blob shorter than
    // two windows could otherwise never be read ahead again once its chunks
    // were evicted (the chunks still cached are skipped below).
    let i = list.prefetched;
    if (i < from || i >= list.keys.length || list.starts[i] >= until + this.#readahead) i = from;
    else if (this.#burst > 0 && list.starts[i] > until - this.#burst) return;
    for (; i < list.keys.length && list.starts[i] < until; i++) {
      if (i % this.#workers !== this.#workerId) continue;
      if (this.#chunks.has(list.keys[i]) || this.#shared?.has(list.digests[i])) continue;
      // A failed readahead is forgotten: the read that needs the chunk fetches it again.
      this.#chunk(list, i).catch(() => {});
    }
    list.prefetched = i;
  }

  /** Chunk `i`, or `undefined` once it is in the shared cache (see {@linkcode #load}). */
  #chunk(list: ChunkList, i: number): Promise<Uint8Array | undefined> {
    const expected = list.starts[i + 1] - list.starts[i];
    return this.#chunks.fetch(list.keys[i], () => this.#load(list.digests[i], expected));
  }

  /**
   * Fetches a chunk through the shared cache: another Worker may have it or
   * be fetching it. Resolves to `undefined` once this Worker put it into
   * the shared cache: its own copy is freed at once (a streaming read
   * decodes hundreds of chunks per second, and leaving each to the garbage
   * collector cost a tenth of the CPU).
   */
  async #load(digest: Digest, size: number): Promise<Uint8Array | undefined> {
    const shared = this.#shared;
    if (!shared) return await this.#readWhole(digest, size);
    for (let attempt = 0; attempt < 3; attempt++) {
      const found = shared.lookup(digest);
      if (found instanceof Uint8Array) {
        if (found.length === size) return found;
        break;
      }
      if (!found) break;
      await found;
    }
    const claim = shared.claim(digest, size);
    if (claim && this.#blob.readChunkInto) {
      // Straight into the slot, verified there before anyone sees it: no
      // buffer of our own to allocate, copy from and free per chunk.
      try {
        await this.#blob.readChunkInto(digest, claim.slot);
      } catch (err) {
        claim.abandon();
        throw err;
      }
      claim.commit();
      return undefined;
    }
    let bytes;
    try {
      bytes = await this.#readWhole(digest, size);
    } catch (err) {
      claim?.abandon();
      throw err;
    }
    if (!claim) return bytes;
    claim.fill(bytes);
    // Read pieces belong to the reader (BlobService.openRead), so this is ours to free.
    releaseWhole(bytes);
    return undefined;
  }

  /**
   * Reads a whole blob or chunk of known size, as one array of its own: not
   * copied if it arrives whole in a buffer of its own, copied if it is a
   * view into something larger (a batched gRPC read's message), so that the
   * Worker's cache holds only the bytes it counts.
   */
  async #readWhole(digest: Digest, size: number): Promise<Uint8Array> {
    // The size lets a remote service read a small blob with one call,
    // without asking for its chunk list again.
    const reader = await this.#blob.openRead(digest, 0, size);
    if (!reader) throw new StorageError(`chunk ${digestKey(digest)} not found`);
    const pieces: Uint8Array[] = [];
    let pos = 0;
    for await (const piece of reader) {
      if (pos + piece.length > size) {
        pos += piece.length;
        break;
      }
      pieces.push(piece);
      pos += piece.length;
    }
    if (pos !== size) {
      throw new StorageError(`chunk ${digestKey(digest)}: expected ${size} bytes, got ${pos}+`);
    }
    return pieces.length === 1 ? owned(pieces[0]) : concatBytes(pieces);
  }

  #chunkList(digest: Digest, key: string, size: number): Promise<ChunkList | undefined> {
    // The loader starts before `fetch` returns, so the copy (kept in the
    // list) is taken while `digest`, possibly a view of shared memory, is valid.
    return this.#lists.fetch(key, () => this.#loadChunkList(key, digest.slice(), size));
  }

  async #loadChunkList(key: string, digest: Digest, size: number): Promise<ChunkList | undefined> {
    const metas = await this.#blob.chunks(digest);
    if (!metas) return undefined;
    const list = (keys: string[], digests: Digest[], starts: number[]): ChunkList => ({
      digest,
      keys,
      digests,
      starts,
      prefetched: 0,
      lastEnd: undefined,
    });
    if (metas.length === 0) {
      // No finer granularity: small blobs become one cached "chunk".
      return size <= WHOLE_BLOB_LIMIT ? list([key], [digest], [0, size]) : list([], [], [size]);
    }
    const starts = [0];
    let total = 0;
    for (const m of metas) {
      total += Number(m.size);
      starts.push(total);
    }
    if (total !== size) {
      throw new StorageError(`blob ${key}: chunks add up to ${total} bytes, node says ${size}`);
    }
    return list(metas.map((m) => digestKey(m.digest)), metas.map((m) => m.digest), starts);
  }

  /**
   * Reads `[offset, end)` of a blob of `size` bytes from a fallback stream,
   * reusing the one that ended where this read starts.
   */
  async #readStream(
    digest: Digest,
    size: number,
    offset: number,
    end: number,
  ): Promise<Uint8Array> {
    const length = end - offset;
    const blob = digestKey(digest);
    let s = this.#streams.get(`${blob}@${offset}`);
    if (s) this.#streams.delete(`${blob}@${offset}`);
    else {
      const reader = await this.#blob.openRead(digest, offset);
      if (!reader) throw new StorageError(`blob ${blob} not found`);
      s = { pos: offset, iter: reader[Symbol.asyncIterator](), pending: new Uint8Array(0) };
    }
    const out = new Uint8Array(length);
    let got = 0;
    try {
      while (got < length) {
        if (s.pending.length === 0) {
          const r = await s.iter.next();
          if (r.done) break;
          s.pending = r.value;
          continue;
        }
        const n = Math.min(length - got, s.pending.length);
        out.set(s.pending.subarray(0, n), got);
        s.pending = s.pending.subarray(n);
        got += n;
      }
    } catch (err) {
      closeStream(s);
      throw err;
    }
    s.pos = offset + got;
    if (got < length) {
      // `end` is within `size`: a blob that ends sooner is not the file the
      // node describes, and a short answer would read as its end.
      closeStream(s);
      throw new StorageError(`blob ${blob} ended at byte ${s.pos}, node says ${size}`);
    }
    // A stream at the end has nothing left to serve (reads from there are empty).
    if (s.pos < size) this.#keepStream(`${blob}@${s.pos}`, s);
    else closeStream(s);
    return out;
  }

  /** Keeps `s` for the read that continues at its position, closing the oldest beyond the bound. */
  #keepStream(key: string, s: Stream): void {
    // Two reads of one range at once leave two streams at the same position: keep one.
    const twin = this.#streams.get(key);
    if (twin) {
      this.#streams.delete(key);
      closeStream(twin);
    }
    if (this.#blob.remote) {
      // From a remote service each stream holds a verified copy of the whole
      // blob (in a temporary file, when large): a few per blob (two readers
      // taking turns keep theirs), not one per place a reader stopped.
      const blob = key.slice(0, key.lastIndexOf("@") + 1);
      const same = [...this.#streams.keys()].filter((other) => other.startsWith(blob));
      for (const other of same.slice(0, Math.max(0, same.length - (REMOTE_STREAMS_PER_BLOB - 1)))) {
        closeStream(this.#streams.get(other)!);
        this.#streams.delete(other);
      }
    }
    this.#streams.set(key, s);
    if (this.#streams.size > MAX_STREAMS) {
      const [oldKey, old] = this.#streams.entries().next().value!;
      this.#streams.delete(oldKey);
      closeStream(old);
    }
  }
}

/** Ends a fallback stream, releasing what the blob service holds for it. */
function closeStream(s: Stream): void {
  s.iter.return?.().catch(() => {});
}

/** Index of the chunk containing `offset` (binary search over start offsets). */
function chunkIndex(starts: number[], offset: number): number {
  let lo = 0, hi = starts.length - 2;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (starts[mid] <= offset) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
