/**
 * The FUSE range reader (`src/fuse/range_reader.ts`) on its own, without a
 * mount or root: reads at any offset of chunked blobs, readahead (also
 * striped over two Workers' readers sharing a chunk cache), its caches,
 * blobs without a chunk list, and damaged chunks. Every case runs on the
 * memory blob service (whose chunk lists a wrapper supplies, as it has
 * none itself) and on the chunking object store (`objectstore+memory://`),
 * both behind a wrapper that counts what the reader asks for. One more
 * case runs over a daemon process, as a mount does: readahead from there
 * goes out in bursts, which the daemon's own call count shows.
 */
import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { putBlob } from "../conformance/blob_suite.ts";
import { pseudoRandom } from "../fixtures.ts";
import { sampleValue, scrape } from "../prometheus.ts";
import { startDaemon } from "../grpc/daemon_harness.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { chunkPath, ObjectStoreBlobService } from "../../src/castore/blob/objectstore.ts";
import { encodeChunkSync } from "../../src/castore/blob/chunk_codec.ts";
import { GrpcBlobService } from "../../src/castore/blob/grpc.ts";
import { PackBlobService } from "../../src/castore/blob/pack.ts";
import type {
  BlobReader,
  BlobService,
  BlobWriter,
  ChunkMeta,
} from "../../src/castore/blob/service.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import { bytesEqual, type Digest, digestKey, EMPTY_DIGEST } from "../../src/castore/digest.ts";
import { StorageError } from "../../src/errors.ts";
import { MemoryPathInfoService } from "../../src/store/pathinfo/memory.ts";
import { Errno } from "../../src/fuse/ffi.ts";
import { FsError, StoreFs } from "../../src/fuse/filesystem.ts";
import { InodeTable } from "../../src/fuse/inodes.ts";
import { BlobRangeReader, type ReadResult } from "../../src/fuse/range_reader.ts";
import { SharedChunkCache } from "../../src/fuse/shared_chunks.ts";

/**
 * Passes every call on to `inner` and records the reader's: `openRead` by
 * digest (with the offsets asked for), `chunks` calls, and readers still
 * open. `listed` overrides `inner`'s chunk lists (an empty list hides one),
 * `damaged` replaces what `openRead` yields for a digest.
 */
class Observed implements BlobService {
  readonly opened = new Map<string, number[]>();
  chunkCalls = 0;
  /** Readers started and not yet finished or released. */
  live = 0;
  readonly listed = new Map<string, ChunkMeta[]>();
  readonly damaged = new Map<string, Uint8Array>();

  /** Present when `inner` has it, recorded as an open at offset 0. */
  readonly readChunkInto?: (digest: Digest, target: Uint8Array) => Promise<void>;

  constructor(readonly inner: BlobService) {
    const into = inner.readChunkInto?.bind(inner);
    if (into) {
      this.readChunkInto = (digest, target) => {
        const key = digestKey(digest);
        this.opened.set(key, [...this.opened.get(key) ?? [], 0]);
        return into(digest, target);
      };
    }
  }

  /** How often `digest` was opened for reading. */
  opens(digest: Digest): number {
    return this.opened.get(digestKey(digest))?.length ?? 0;
  }

  has(digest: Digest): Promise<boolean> {
    return this.inner.has(digest);
  }

  chunks(digest: Digest): Promise<ChunkMeta[] | undefined> {
    this.chunkCalls++;
    const listed = this.listed.get(digestKey(digest));
    return listed ? Promise.resolve(listed) : this.inner.chunks(digest);
  }

  async openRead(digest: Digest, offset = 0): Promise<BlobReader | undefined> {
    const key = digestKey(digest);
    this.opened.set(key, [...this.opened.get(key) ?? [], offset]);
    const bad = this.damaged.get(key);
    const reader = bad
      ? (async function* () {
        yield bad.slice(offset);
      })()
      : await this.inner.openRead(digest, offset);
    return reader && this.#counted(reader);
  }

  async *#counted(reader: BlobReader): AsyncGenerator<Uint8Array> {
    this.live++;
    try {
      yield* reader;
    } finally {
      this.live--;
    }
  }

  openWrite(): BlobWriter {
    return this.inner.openWrite();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** A blob service under test. */
interface Backend {
  service: Observed;
  /** Stores `data` in chunks; returns its digest and chunk list (empty for one chunk). */
  put(data: Uint8Array): Promise<{ digest: Digest; chunks: ChunkMeta[] }>;
  /** Makes the service hand out wrong bytes for `chunk`, as a damaged store would. */
  damage(chunk: ChunkMeta, original: Uint8Array): Promise<void>;
  /** Removes what the backend left on disk, after the service was closed. */
  cleanup?(): Promise<void>;
}

/** Stores `data` in a chunking service; its digest and chunk list. */
async function putWithChunks(inner: BlobService, data: Uint8Array) {
  const digest = await putBlob(inner, data);
  return { digest, chunks: (await inner.chunks(digest))! };
}

/** Chunk sizes the memory backend cuts blobs into, cycled (a 1-byte chunk included). */
const MEMORY_CHUNKS = [65536, 40000, 100001, 1, 70000, 65535];

const BACKENDS: { name: string; open(): Promise<Backend> }[] = [
  {
    name: "memory",
    open() {
      const service = new Observed(new MemoryBlobService());
      return Promise.resolve({
        service,
        async put(data: Uint8Array) {
          // Each chunk is a blob of its own, as every backend's chunks are.
          const chunks: ChunkMeta[] = [];
          for (let pos = 0, i = 0; pos < data.length; i++) {
            const chunk = data.subarray(pos, pos + MEMORY_CHUNKS[i % MEMORY_CHUNKS.length]);
            chunks.push({
              digest: await putBlob(service.inner, chunk),
              size: BigInt(chunk.length),
            });
            pos += chunk.length;
          }
          const digest = await putBlob(service.inner, data);
          if (chunks.length < 2) return { digest, chunks: [] };
          service.listed.set(digestKey(digest), chunks);
          return { digest, chunks };
        },
        // The memory service keeps what it was given and does not verify
        // it (by contract, backends that can verify do): the reader itself
        // only checks lengths, so the damage is one byte missing.
        damage(chunk: ChunkMeta, original: Uint8Array) {
          service.damaged.set(digestKey(chunk.digest), original.subarray(0, original.length - 1));
          return Promise.resolve();
        },
      });
    },
  },
  {
    name: "objectstore+memory",
    async open() {
      const inner = await blobServiceFromUrl("objectstore+memory://");
      assert(inner instanceof ObjectStoreBlobService);
      const service = new Observed(inner);
      return {
        service,
        put: (data: Uint8Array) => putWithChunks(inner, data),
        // A well-formed chunk object of the right size, holding other bytes:
        // only verification against the digest can tell.
        async damage(chunk: ChunkMeta, original: Uint8Array) {
          const other = original.slice();
          other[other.length >> 1] ^= 0x20;
          await inner.store.put(chunkPath(chunk.digest), encodeChunkSync(other).stored);
        },
      };
    },
  },
  {
    // Reads chunks straight into the shared cache (`readChunkInto`).
    name: "pack",
    async open() {
      const dir = await Deno.makeTempDir({ prefix: "range-pack-" });
      const inner = new PackBlobService(dir);
      const service = new Observed(inner);
      return {
        service,
        put: (data: Uint8Array) => putWithChunks(inner, data),
        // One byte flipped in the middle of the chunk's record in its pack
        // (random data: stored raw, so only verification can tell).
        async damage(chunk: ChunkMeta) {
          const at = inner.locate(chunk.digest)!;
          const f = await Deno.open(join(dir, `${at.pack}.pack`), { read: true, write: true });
          try {
            const pos = at.offset + (at.length >> 1);
            const b = new Uint8Array(1);
            await f.seek(pos, Deno.SeekMode.Start);
            await f.read(b);
            b[0] ^= 0x20;
            await f.seek(pos, Deno.SeekMode.Start);
            await f.write(b);
          } finally {
            f.close();
          }
        },
        cleanup: () => Deno.remove(dir, { recursive: true }),
      };
    },
  },
];

/** About 2.5 MiB: tens of chunks in memory, about ten in the object store. */
const BLOB = pseudoRandom((5 << 20) / 2 + 12345, 4242);

/** Start offset of each chunk, plus the blob's size at the end. */
function startsOf(chunks: ChunkMeta[]): number[] {
  const starts = [0];
  for (const c of chunks) starts.push(starts[starts.length - 1] + Number(c.size));
  return starts;
}

/** The bytes of a read, copied out before any borrowed pieces are released. */
async function bytesOf(r: ReadResult | Promise<ReadResult>): Promise<Uint8Array> {
  const { pieces, release } = await r;
  try {
    const out = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of pieces) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  } finally {
    release?.();
  }
}

/**
 * A blob larger than what is read whole, put into `b` with its chunk list
 * hidden (as from a backend that lists none).
 */
async function putUnlisted(
  b: Backend,
  seed: number,
): Promise<{ data: Uint8Array; digest: Digest }> {
  const data = pseudoRandom((16 << 20) + 300_000, seed);
  const { digest } = await b.put(data);
  b.service.listed.set(digestKey(digest), []);
  return { data, digest };
}

/** Asserts that reading `length` bytes at `offset` gives exactly `data`'s bytes there. */
async function expectRead(
  reader: BlobRangeReader,
  digest: Digest,
  data: Uint8Array,
  offset: number,
  length: number,
): Promise<void> {
  const got = await bytesOf(reader.read(digest, data.length, offset, length));
  const want = data.subarray(Math.min(offset, data.length), Math.min(data.length, offset + length));
  assert(
    bytesEqual(got, want),
    `read ${offset}+${length}: ${got.length} bytes, wanted ${want.length}` +
      (got.length === want.length ? " (contents differ)" : ""),
  );
}

/** Waits for the reader's background fetches (readahead) to finish. */
async function settle(reader: BlobRangeReader): Promise<void> {
  for (let waited = 0; reader.loading > 0; waited++) {
    assert(waited < 5000, "readahead did not finish");
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/** A shared chunk cache with room for every chunk of {@linkcode BLOB} in either backend. */
function sharedCache(): SharedChunkCache {
  return SharedChunkCache.create(32 << 20, 512 << 10, 64 << 10);
}

for (const backend of BACKENDS) {
  /** Runs `body` on a fresh service of this backend holding {@linkcode BLOB}. */
  const withBlob = (
    name: string,
    body: (b: Backend, digest: Digest, chunks: ChunkMeta[]) => Promise<void>,
  ) =>
    Deno.test(`range reader (${backend.name}): ${name}`, async () => {
      const b = await backend.open();
      try {
        const { digest, chunks } = await b.put(BLOB);
        assert(chunks.length >= 6, `the blob spans several chunks (${chunks.length})`);
        // The cases below read within the first chunk, and sizes follow from that.
        assert(Number(chunks[0].size) > 8192);
        await body(b, digest, chunks);
      } finally {
        await b.service.close();
        await b.cleanup?.();
      }
    });

  withBlob("reads across chunk boundaries, at the end and past it", async (b, digest, chunks) => {
    const reader = new BlobRangeReader(b.service, { readahead: 0 });
    const size = BLOB.length;
    const starts = startsOf(chunks);
    const cases: [number, number][] = [
      [0, 1],
      [0, size],
      [size - 1, 1],
      [size - 1, 4096],
      [size - 100_000, 1 << 20],
    ];
    for (const s of starts.slice(1, -1)) {
      cases.push([s - 1, 2], [s, 1], [s - 3, 300_000], [s + 1, 4096]);
    }
    for (const [offset, length] of cases) await expectRead(reader, digest, BLOB, offset, length);
    // At the end, past it and of no length: nothing, at once.
    for (const [offset, length] of [[size, 10], [size + 5, 10], [100, 0]]) {
      const r = reader.read(digest, size, offset, length);
      assert(!(r instanceof Promise), `read ${offset}+${length} answers synchronously`);
      assertEquals(r.pieces.length, 0);
    }
    // Every chunk was fetched once: boundaries never make a read fetch a neighbour again.
    for (const c of chunks) assertEquals(b.service.opens(c.digest), 1);
    assertEquals(b.service.chunkCalls, 1);
    assertEquals(b.service.live, 0, "every chunk's reader was released");
  });

  withBlob("size mismatches and unknown blobs are StorageErrors", async (b, digest) => {
    const reader = new BlobRangeReader(b.service);
    await assertRejects(() => reader.check(digest, BLOB.length + 1), StorageError, "add up");
    await assertRejects(
      () => bytesOf(reader.read(digest, BLOB.length - 1, 0, 10)),
      StorageError,
      "add up",
    );
    // A failed chunk list is not remembered: the right size finds the blob.
    await reader.check(digest, BLOB.length);
    await expectRead(reader, digest, BLOB, 0, 10);
    assertEquals(b.service.chunkCalls, 3);
    const unknown = new Uint8Array(32).fill(7);
    await assertRejects(() => reader.check(unknown, 10), StorageError, "not found");
    await assertRejects(() => bytesOf(reader.read(unknown, 10, 0, 10)), StorageError);
    // Absence is not remembered either: the blob may still arrive.
    await assertRejects(() => bytesOf(reader.read(unknown, 10, 0, 10)), StorageError);
    assertEquals(b.service.chunkCalls, 6);
    assertEquals(b.service.opens(unknown), 0);
  });

  Deno.test(`range reader (${backend.name}): an empty blob reads as empty`, async () => {
    const b = await backend.open();
    try {
      assert(bytesEqual(await putBlob(b.service.inner, new Uint8Array(0)), EMPTY_DIGEST));
      const reader = new BlobRangeReader(b.service);
      await reader.check(EMPTY_DIGEST, 0);
      for (const offset of [0, 1, 4096]) {
        const r = reader.read(EMPTY_DIGEST, 0, offset, 4096);
        assert(!(r instanceof Promise));
        assertEquals(r.pieces.length, 0);
      }
      // Answered without asking the service anything.
      assertEquals(b.service.chunkCalls, 0);
      assertEquals(b.service.opened.size, 0);
    } finally {
      await b.service.close();
      await b.cleanup?.();
    }
  });

  withBlob(
    "a sequential reader triggers readahead, a random one does not",
    async (b, d, chunks) => {
      const starts = startsOf(chunks);
      const readahead = starts[3];
      const reader = new BlobRangeReader(b.service, { readahead });
      await expectRead(reader, d, BLOB, 0, 4096);
      await settle(reader);
      // Chunks starting before the read's end plus the readahead were fetched, once; no others.
      const ahead = chunks.filter((_, k) => starts[k] < 4096 + readahead).length;
      assert(ahead > 1 && ahead < chunks.length, `readahead covers ${ahead} chunks`);
      chunks.forEach((c, k) => assertEquals(b.service.opens(c.digest), k < ahead ? 1 : 0, `#${k}`));
      // The next read is served from what readahead fetched, synchronously.
      const next = reader.read(d, BLOB.length, 4096, 128 << 10);
      assert(!(next instanceof Promise), "a read within the readahead is synchronous");
      await expectRead(reader, d, BLOB, 4096, 128 << 10);
      // Reading on to the end, each chunk is still fetched only once.
      for (let offset = 4096 + (128 << 10); offset < BLOB.length; offset += 128 << 10) {
        await expectRead(reader, d, BLOB, offset, 128 << 10);
      }
      await settle(reader);
      for (const c of chunks) assertEquals(b.service.opens(c.digest), 1);

      // A fresh reader starting in the middle reads only what it was asked for.
      b.service.opened.clear();
      const random = new BlobRangeReader(b.service, { readahead });
      await expectRead(random, d, BLOB, starts[2] + 10, 100);
      await settle(random);
      chunks.forEach((c, k) => assertEquals(b.service.opens(c.digest), k === 2 ? 1 : 0, `#${k}`));
      // So does a read jumping further than the sequential window.
      const jumpy = new BlobRangeReader(b.service, { readahead, sequentialWindow: 1 });
      await expectRead(jumpy, d, BLOB, starts[2] + 10, 100);
      await expectRead(jumpy, d, BLOB, starts[4] + 10, 100);
      await settle(jumpy);
      chunks.forEach((c, k) => {
        assertEquals(b.service.opens(c.digest), k === 2 ? 2 : k === 4 ? 1 : 0, `#${k}`);
      });
    },
  );

  withBlob("a second pass reads ahead again once the chunks were evicted", async (b, d, chunks) => {
    // A window of most of the blob, and no room to keep any chunk.
    const readahead = BLOB.length - 1000;
    const reader = new BlobRangeReader(b.service, { readahead, cacheBytes: 0 });
    for (let offset = 0; offset < BLOB.length; offset += 128 << 10) {
      await expectRead(reader, d, BLOB, offset, 128 << 10);
    }
    await settle(reader);
    b.service.opened.clear();
    // Back at the start: the first chunk for the read, and the rest ahead of it.
    await expectRead(reader, d, BLOB, 0, 4096);
    await settle(reader);
    const starts = startsOf(chunks);
    chunks.forEach((c, k) => {
      if (starts[k] < 4096 + readahead) assert(b.service.opens(c.digest) >= 1, `#${k} read ahead`);
    });
  });

  withBlob("readahead is striped over Workers sharing a cache", async (b, digest, chunks) => {
    const shared = sharedCache();
    const readers = [0, 1].map((workerId) =>
      new BlobRangeReader(b.service, { shared, workerId, workers: 2, readahead: 64 << 20 })
    );
    await expectRead(readers[0], digest, BLOB, 0, 4096);
    await settle(readers[0]);
    // The first reader fetched the chunks of its stripe (the even ones) and no others.
    chunks.forEach((c, k) => assertEquals(b.service.opens(c.digest), k % 2 === 0 ? 1 : 0, `#${k}`));
    await expectRead(readers[1], digest, BLOB, 0, 4096);
    await settle(readers[1]);
    // The second one took chunk 0 from the shared cache and fetched the odd ones.
    for (const c of chunks) assertEquals(b.service.opens(c.digest), 1);
    // Now both read the whole blob from the shared cache, fetching nothing.
    for (const r of readers) await expectRead(r, digest, BLOB, 0, BLOB.length);
    for (const c of chunks) assertEquals(b.service.opens(c.digest), 1);
  });

  withBlob("a small byte budget evicts the least recently used chunk", async (b, d, chunks) => {
    const [s0, s1, s2] = chunks.map((c) => Number(c.size));
    const starts = startsOf(chunks);
    // Room for chunk 0 and the larger of chunks 1 and 2, not for all three.
    const reader = new BlobRangeReader(b.service, {
      cacheBytes: s0 + Math.max(s1, s2) + 1,
      readahead: 0,
    });
    const readChunk = (k: number) => expectRead(reader, d, BLOB, starts[k] + (k === 0 ? 5 : 0), 1);
    const opens = () => chunks.slice(0, 3).map((c) => b.service.opens(c.digest));
    await readChunk(0);
    await readChunk(1);
    await readChunk(0);
    assertEquals(opens(), [1, 1, 0]);
    await readChunk(2); // evicts chunk 1, the least recently used
    await readChunk(0);
    await readChunk(2);
    assertEquals(opens(), [1, 1, 1]);
    await readChunk(1);
    assertEquals(opens(), [1, 2, 1]);
  });

  withBlob("concurrent reads of one chunk share one fetch", async (b, digest, chunks) => {
    const starts = startsOf(chunks);
    const offsets = [starts[2], starts[2] + 10, starts[3] - 5, starts[2] + 1];
    const reader = new BlobRangeReader(b.service, { readahead: 0 });
    await Promise.all(offsets.map((o) => expectRead(reader, digest, BLOB, o, 3)));
    assertEquals(b.service.opens(chunks[2].digest), 1);
    assertEquals(b.service.chunkCalls, 1, "one chunk list fetch too");
    // Two Workers' readers sharing a cache: one fetches, the other waits for it.
    const shared = sharedCache();
    const readers = [0, 1].map((workerId) =>
      new BlobRangeReader(b.service, { shared, workerId, workers: 2, readahead: 0 })
    );
    await Promise.all(readers.map((r, i) => expectRead(r, digest, BLOB, starts[4] + i, 7)));
    assertEquals(b.service.opens(chunks[4].digest), 1);
  });

  withBlob("a damaged chunk is an error, never wrong bytes", async (b, digest, chunks) => {
    const starts = startsOf(chunks);
    await b.damage(chunks[1], BLOB.subarray(starts[1], starts[2]));
    const shared = sharedCache();
    const reader = new BlobRangeReader(b.service, { shared, readahead: 8 << 20 });
    // This read's readahead fetches the damaged chunk and fails quietly...
    await expectRead(reader, digest, BLOB, 0, 4096);
    await settle(reader);
    assert(b.service.opens(chunks[1].digest) >= 1);
    // ...and every read that needs it fails, each trying again.
    for (const [offset, length] of [[starts[1] - 10, 20], [starts[1], 1], [0, BLOB.length]]) {
      const before = b.service.opens(chunks[1].digest);
      await assertRejects(
        () => bytesOf(reader.read(digest, BLOB.length, offset, length)),
        StorageError,
      );
      assertEquals(b.service.opens(chunks[1].digest), before + 1, "failures are not cached");
    }
    assert(!shared.has(chunks[1].digest), "nothing of it entered the shared cache");
    // The chunks around it still read right.
    await expectRead(reader, digest, BLOB, starts[1] - 100, 100);
    await expectRead(reader, digest, BLOB, starts[2], 100);
    // Without a shared cache it is the same.
    const plain = new BlobRangeReader(b.service, { readahead: 0 });
    await assertRejects(
      () => bytesOf(plain.read(digest, BLOB.length, starts[2] - 1, 1)),
      StorageError,
    );

    // The filesystem answers EIO, for the damaged chunk only.
    const inodes = InodeTable.create({ maxInodes: 16, arenaBytes: 64 });
    const name = new TextEncoder().encode("f");
    const file = (d: Digest, size: number) =>
      inodes.intern({
        $case: "file",
        value: { name, digest: d, size: BigInt(size), executable: false },
      });
    const fs = new StoreFs(
      {
        blob: b.service,
        directory: new MemoryDirectoryService(),
        pathInfo: new MemoryPathInfoService(),
      },
      inodes,
      { listRoot: false, showXattr: false, read: { readahead: 0 } },
    );
    const ino = file(digest, BLOB.length);
    await fs.open(ino, 0);
    assert(bytesEqual(await bytesOf(fs.read(ino, 0, 100)), BLOB.subarray(0, 100)));
    const err = await assertRejects(() => bytesOf(fs.read(ino, starts[1], 100)), FsError);
    assertEquals(err.errno, Errno.EIO);
    const missing = file(new Uint8Array(32).fill(9), 10);
    assertEquals((await assertRejects(() => fs.open(missing, 0), FsError)).errno, Errno.EIO);
  });

  Deno.test(`range reader (${backend.name}): a blob without a chunk list is read whole, once`, async () => {
    const b = await backend.open();
    try {
      // Under the object store's smallest chunk, so stored as one chunk.
      const data = pseudoRandom(100_000, 77);
      const digest = await putBlob(b.service.inner, data);
      assertEquals(await b.service.inner.chunks(digest), []);
      const reader = new BlobRangeReader(b.service);
      for (
        const [offset, length] of [[50_000, 10], [0, 1], [99_990, 100], [0, 200_000], [100_000, 1]]
      ) {
        await expectRead(reader, digest, data, offset, length);
      }
      assertEquals(b.service.opened.get(digestKey(digest)), [0]);
      // It is cached like a chunk: a warm read is synchronous.
      assert(!(reader.read(digest, data.length, 123, 456) instanceof Promise));
    } finally {
      await b.service.close();
      await b.cleanup?.();
    }
  });

  withBlob(
    "a large blob without a chunk list streams from where the last read ended",
    async (b) => {
      const { data, digest } = await putUnlisted(b, 31);
      const key = digestKey(digest);
      const reader = new BlobRangeReader(b.service);
      const step = 1 << 20;
      for (let offset = 0; offset < 3 * step; offset += step) {
        await expectRead(reader, digest, data, offset, step);
      }
      assertEquals(b.service.opened.get(key), [0], "one stream for consecutive reads");
      // A jump opens a stream there, which the next read continues.
      const at = 10 * step + 12345;
      await expectRead(reader, digest, data, at, 4096);
      await expectRead(reader, digest, data, at + 4096, step);
      assertEquals(b.service.opened.get(key), [0, at]);
      // The first stream is still there for the reader that left it.
      await expectRead(reader, digest, data, 3 * step, 100);
      assertEquals(b.service.opened.get(key), [0, at]);
      // Two reads of one range at once: each gets its own stream, both right.
      const twin = 5 * step;
      await Promise.all([0, 1].map(() => expectRead(reader, digest, data, twin, 5000)));
      assertEquals(b.service.opened.get(key), [0, at, twin, twin]);
      await expectRead(reader, digest, data, twin + 5000, 10);
      assertEquals(b.service.opened.get(key)!.length, 4);
      // The end: a short read, then nothing.
      await expectRead(reader, digest, data, data.length - 10, 4096);
      await expectRead(reader, digest, data, data.length, 4096);
      // Open are only the streams kept where a read ended (at 3 MiB + 100,
      // after the jump, after the twins): the twin left over and the one
      // that reached the end of the blob were closed.
      assertEquals(b.service.live, 3);
    },
  );

  withBlob(
    "a blob without a chunk list that ends before its node's size is a StorageError, not a short read",
    async (b) => {
      const { data, digest } = await putUnlisted(b, 32);
      const reader = new BlobRangeReader(b.service);
      // The node claims 100 bytes more than the blob has.
      const claimed = data.length + 100;
      const failed = await Promise.resolve(reader.read(digest, claimed, data.length - 10, 4096))
        .then(() => undefined, (err) => err);
      assert(failed instanceof StorageError, `got ${failed}`);
      assert(/ended at byte/.test(failed.message), failed.message);
    },
  );
}

Deno.test({
  name: "range reader over a daemon: a sequential read fetches its readahead in bursts of chunks",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const MIB = 1024 * 1024;
  // Dozens of chunks of 128-512 KiB (79 as FastCDC cuts this one), read
  // 128 KiB at a time (what the kernel asks a mount for).
  const size = 24 * MIB;
  const step = 128 * 1024;
  const home = await Deno.makeTempDir({ prefix: "tvix-remote-read-" });
  const daemon = await startDaemon({ home, args: ["--metrics-listen-address=127.0.0.1:0"] });
  try {
    const data = pseudoRandom(size, 7);
    const uploader = await GrpcBlobService.fromUrl(`grpc+http://${daemon.address}`);
    const digest = await putBlob(uploader, data).finally(() => uploader.close());
    const metrics = /serving metrics address=(\S+)/.exec(daemon.log())?.[1];
    assert(metrics, "the daemon serves metrics");
    const readCalls = async () =>
      sampleValue(await scrape(metrics), "tvix_grpc_server_handled_total", {
        grpc_method: "/tvix_ts.castore.v1.SmallBlobService/Read",
        grpc_code: "OK",
      });

    const service = await GrpcBlobService.fromUrl(`grpc+http://${daemon.address}`);
    try {
      assert(service.batchesReads, "the gRPC client batches reads");
      const chunks = (await service.chunks(digest))!;
      assert(chunks.length >= 40, `${chunks.length} chunks`);
      const before = await readCalls();
      // Two Workers' readers sharing a cache, the reader's requests alternating between them.
      const shared = SharedChunkCache.create(64 * MIB, 512 * 1024, 256 * 1024);
      const readers = [0, 1].map((workerId) =>
        new BlobRangeReader(service, { shared, workerId, workers: 2 })
      );
      for (let offset = 0, n = 0; offset < size; offset += step, n++) {
        await expectRead(readers[n % 2], digest, data, offset, step);
      }
      for (const r of readers) await settle(r);
      const calls = await readCalls() - before;
      // Each Worker tops its 8 MiB window up once half of it is used: about
      // 4 MiB of chunks per burst, shared by two Workers (11 calls when
      // written). Topped up on every read, it took 53.
      assert(calls <= chunks.length / 3, `${calls} read calls for ${chunks.length} chunks`);
    } finally {
      await service.close();
    }
  } finally {
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
});

/** The spilled (temporary, unlinked) blob copies this process has open, by file name. */
function openSpills(): string[] {
  const names: string[] = [];
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      const target = Deno.readLinkSync(`/proc/self/fd/${e.name}`);
      if (/tvix-store-spill-.* \(deleted\)$/.test(target)) names.push(target);
    } catch {
      // Closed meanwhile.
    }
  }
  return names.sort();
}

Deno.test({
  name: "range reader over a daemon: a large blob without a chunk list keeps two verified copies",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const MIB = 1024 * 1024;
  const home = await Deno.makeTempDir({ prefix: "tvix-remote-unlisted-" });
  // Blobs in memory: the daemon lists no chunks for them.
  const daemon = await startDaemon({ home, args: ["--blob-service-addr=memory://"] });
  try {
    const data = pseudoRandom(20 * MIB, 8);
    const url = `grpc+http://${daemon.address}`;
    const uploader = await GrpcBlobService.fromUrl(url);
    const digest = await putBlob(uploader, data).finally(() => uploader.close());
    const service = await GrpcBlobService.fromUrl(url);
    try {
      assertEquals(await service.chunks(digest), []);
      const reader = new BlobRangeReader(service);
      // Reads that stop in several places, as a reader jumping around a file.
      for (const offset of [0, 10 * MIB, 4 * MIB, 15 * MIB, MIB]) {
        await expectRead(reader, digest, data, offset, 64 * 1024);
      }
      // Each stream holds the whole blob, checked, in a temporary file: two
      // are kept per blob, not one per place a read stopped.
      assertEquals(openSpills().length, 2);
      // Two readers taking turns keep their streams, each continuing where
      // it stopped: no new copy (no new download) per read.
      await expectRead(reader, digest, data, 2 * MIB, 4096);
      await expectRead(reader, digest, data, 12 * MIB, 4096);
      const kept = openSpills();
      for (let i = 1; i < 5; i++) {
        await expectRead(reader, digest, data, 2 * MIB + i * 4096, 4096);
        await expectRead(reader, digest, data, 12 * MIB + i * 4096, 4096);
      }
      assertEquals(openSpills(), kept);
    } finally {
      await service.close();
    }
  } finally {
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
});
