import { dirname } from "node:path";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import {
  blobIndexPath,
  chunkPath,
  ObjectStoreBlobService,
} from "../../src/castore/blob/objectstore.ts";
import { chunkLengths } from "../../src/castore/blob/fastcdc.ts";
import type { BlobService } from "../../src/castore/blob/service.ts";
import { blake3, bytesEqual, type Digest, toHex } from "../../src/castore/digest.ts";
import { InvalidRequestError, StorageError } from "../../src/errors.ts";
import { constructServices } from "../../src/store/services.ts";
import { FileObjectStore } from "../../src/castore/objectstore/file.ts";
import { MemoryObjectStore } from "../../src/castore/objectstore/memory.ts";
import type { ObjectStore } from "../../src/castore/objectstore/store.ts";
import { StatBlobResponse } from "../../src/proto/tvix/castore/protos/rpc_blobstore.ts";
import { blobServiceConformance, putBlob, readBlob } from "../conformance/blob_suite.ts";
import * as F from "../fixtures.ts";
import { tempDirFactory } from "../conformance/harness.ts";

blobServiceConformance(
  "objectstore+file",
  tempDirFactory((dir) => blobServiceFromUrl(`objectstore+file://${dir}`), "objectstore-blob-"),
);

blobServiceConformance("objectstore+memory", async () => {
  const service = await blobServiceFromUrl("objectstore+memory://");
  return { service, cleanup: () => service.close() };
});

const MULTI = F.pseudoRandom(3 * 1024 * 1024, 99);
const MULTI_DIGEST = blake3(MULTI);
/** Below the minimum chunk size: stored as one chunk. */
const SINGLE = F.pseudoRandom(100_000, 17);

/** Every file below `dir` (relative paths, dot files included), sorted. */
async function filesBelow(dir: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(rel ? `${dir}/${rel}` : dir)) {
    const path = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await filesBelow(dir, path));
    else out.push(path);
  }
  return out.sort();
}

/** Runs `body` with a file-backed service in a fresh temp dir, then removes it. */
async function withFileService(
  body: (service: ObjectStoreBlobService, dir: string, store: CountingStore) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "objectstore-blob-" });
  const store = new CountingStore(new FileObjectStore(dir));
  const service = new ObjectStoreBlobService(store);
  try {
    await body(service, dir, store);
  } finally {
    await service.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Delegates to a real store and records what was asked of it, so tests can
 * see which objects a read touched and how many puts ran at once.
 */
class CountingStore implements ObjectStore {
  readonly gets: string[] = [];
  readonly puts: string[] = [];
  inflightPuts = 0;
  maxInflightPuts = 0;
  /** Bytes of the puts in flight. */
  inflightBytes = 0;
  /** While set, puts wait for it before completing (to observe concurrency). */
  gate: Promise<void> | undefined;
  /** Called whenever a put starts. */
  onPut: (() => void) | undefined;
  readonly description: string;

  constructor(readonly inner: ObjectStore) {
    this.description = inner.description;
  }
  get(path: string) {
    this.gets.push(path);
    return this.inner.get(path);
  }
  size(path: string) {
    return this.inner.size(path);
  }
  async put(path: string, data: Uint8Array) {
    this.puts.push(path);
    this.inflightPuts++;
    this.inflightBytes += data.length;
    this.maxInflightPuts = Math.max(this.maxInflightPuts, this.inflightPuts);
    this.onPut?.();
    try {
      if (this.gate) await this.gate;
      await this.inner.put(path, data);
    } finally {
      this.inflightPuts--;
      this.inflightBytes -= data.length;
    }
  }
  delete(path: string) {
    return this.inner.delete(path);
  }
  list(prefix?: string) {
    return this.inner.list(prefix);
  }
  close() {
    return this.inner.close();
  }
}

async function zstdCli(args: string[], input: Uint8Array): Promise<Uint8Array | undefined> {
  let child;
  try {
    child = new Deno.Command("zstd", { args, stdin: "piped", stdout: "piped", stderr: "piped" })
      .spawn();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined; // zstd CLI not installed
    throw err;
  }
  const writer = child.stdin.getWriter();
  await writer.write(input);
  await writer.close();
  const out = await child.output();
  assert(out.success, `zstd ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  return out.stdout;
}

/** Reads a blob piece by piece; returns the pieces received before any error, and the error. */
async function readUntilError(service: BlobService, digest: Digest, offset = 0) {
  const pieces: Uint8Array[] = [];
  try {
    const reader = await service.openRead(digest, offset);
    assert(reader, "blob present");
    for await (const p of reader) pieces.push(p.slice());
    return { pieces, error: undefined };
  } catch (error) {
    return { pieces, error };
  }
}

Deno.test("objectstore blob: on-disk layout of a small blob (docs/compatibility.md#blobs-and-chunks)", async () => {
  await withFileService(async (service, dir) => {
    const digest = await putBlob(service, F.HELLOWORLD_BLOB_CONTENTS);
    const hex = toHex(digest);
    assertEquals(hex.slice(0, 4), "5ca7");
    // One chunk: the chunk object is the blob, no index is written.
    assertEquals(await filesBelow(dir), [`chunks/b3/5ca7/${hex}`]);
    assertEquals(blobIndexPath(digest), `blobs/b3/5ca7/${hex}`);
    assert(await service.has(digest), "present through its chunk object");
    assertEquals(await service.chunks(digest), []);
    const chunk = await Deno.readFile(`${dir}/chunks/b3/5ca7/${hex}`);
    const viaCli = await zstdCli(["-d", "-q", "-c"], chunk);
    if (viaCli) assertEquals(viaCli, F.HELLOWORLD_BLOB_CONTENTS);
  });
});

Deno.test("objectstore blob: a multi-chunk blob round-trips; chunks are stored and readable", async () => {
  await withFileService(async (service, dir) => {
    assertEquals(await putBlob(service, MULTI, 100_000), MULTI_DIGEST);
    const chunks = await service.chunks(MULTI_DIGEST);
    assert(chunks && chunks.length >= 2, "at least two chunks");
    assertEquals(chunks.map((c) => Number(c.size)), chunkLengths(MULTI));

    const index = StatBlobResponse.decode(
      await Deno.readFile(`${dir}/${blobIndexPath(MULTI_DIGEST)}`),
    );
    assertEquals(index.chunks, chunks);
    assertEquals(index.bao.length, 0);

    const files = await filesBelow(dir);
    assertEquals(
      files,
      [blobIndexPath(MULTI_DIGEST), ...new Set(chunks.map((c) => chunkPath(c.digest)))].sort(),
    );
    let pos = 0;
    for (const [i, c] of chunks.entries()) {
      const expected = MULTI.subarray(pos, pos + Number(c.size));
      pos += Number(c.size);
      assertEquals(c.digest, blake3(expected));
      assert(await service.has(c.digest), "chunk known to has()");
      assertEquals(await service.chunks(c.digest), []);
      assert(bytesEqual((await readBlob(service, c.digest))!, expected), `chunk ${i} readable`);
      if (i === 0) {
        const viaCli = await zstdCli(
          ["-d", "-q", "-c"],
          await Deno.readFile(`${dir}/${chunkPath(c.digest)}`),
        );
        if (viaCli) assert(bytesEqual(viaCli, expected), "zstd CLI decodes the chunk");
      }
    }
    assert(bytesEqual((await readBlob(service, MULTI_DIGEST))!, MULTI), "blob reads back");
  });
});

Deno.test("objectstore blob: reads from an offset fetch only the covering chunks", async () => {
  await withFileService(async (service, _dir, store) => {
    await putBlob(service, MULTI);
    const chunks = (await service.chunks(MULTI_DIGEST))!;
    const last = chunks[chunks.length - 1];
    const lastStart = MULTI.length - Number(last.size);
    for (const offset of [0, 1, lastStart - 1, lastStart, lastStart + 5, MULTI.length - 1]) {
      store.gets.length = 0;
      const read = await readBlob(service, MULTI_DIGEST, offset);
      assert(read && bytesEqual(read, MULTI.subarray(offset)), `contents from ${offset}`);
      if (offset >= lastStart) {
        // Lookup of the digest as a chunk, the index, then only the last chunk.
        assertEquals(store.gets, [
          chunkPath(MULTI_DIGEST),
          blobIndexPath(MULTI_DIGEST),
          chunkPath(last.digest),
        ]);
      }
    }
    assertEquals(await readBlob(service, MULTI_DIGEST, MULTI.length), new Uint8Array(0));
  });
});

Deno.test("objectstore blob: the empty blob reads as empty without any I/O", async () => {
  const store = new CountingStore(new MemoryObjectStore());
  const service = new ObjectStoreBlobService(store);
  assertEquals(await readBlob(service, F.EMPTY_BLOB_DIGEST), new Uint8Array(0));
  assertEquals(store.gets, []);
  await service.close();
});

Deno.test("objectstore blob: a corrupted chunk is a StorageError, never wrong bytes", async () => {
  await withFileService(async (service, dir) => {
    await putBlob(service, MULTI);
    const chunks = (await service.chunks(MULTI_DIGEST))!;
    const victim = `${dir}/${chunkPath(chunks[1].digest)}`;
    const original = await Deno.readFile(victim);
    const prefixLength = Number(chunks[0].size);

    const damage: [string, Uint8Array][] = [
      [
        "flipped byte",
        (() => {
          const d = original.slice();
          d[Math.floor(d.length / 2)] ^= 0x01;
          return d;
        })(),
      ],
      ["truncated", original.slice(0, original.length - 100)],
      ["empty", new Uint8Array(0)],
      ["garbage", F.pseudoRandom(1000, 5)],
    ];
    for (const [what, bytes] of damage) {
      await Deno.writeFile(victim, bytes);
      const { pieces, error } = await readUntilError(service, MULTI_DIGEST);
      assert(error instanceof StorageError, `${what}: StorageError, got ${error}`);
      const got = pieces.reduce((n, p) => n + p.length, 0);
      assert(got <= prefixLength, `${what}: nothing past the damaged chunk was yielded`);
      let pos = 0;
      for (const p of pieces) {
        assert(
          bytesEqual(p, MULTI.subarray(pos, pos + p.length)),
          `${what}: yielded bytes are right`,
        );
        pos += p.length;
      }
      // The chunk read on its own fails too.
      await assertRejects(() => readBlob(service, chunks[1].digest), StorageError);
    }

    await Deno.remove(victim);
    assert(
      (await readUntilError(service, MULTI_DIGEST)).error instanceof StorageError,
      "missing chunk",
    );
  });
});

Deno.test("objectstore blob: a corrupted single-chunk blob or index is a StorageError", async () => {
  await withFileService(async (service, dir) => {
    const digest = await putBlob(service, SINGLE);
    const chunkFile = `${dir}/${chunkPath(digest)}`;
    const data = await Deno.readFile(chunkFile);
    data[data.length - 10] ^= 0xff;
    await Deno.writeFile(chunkFile, data);
    await assertRejects(() => readBlob(service, digest), StorageError);

    await putBlob(service, MULTI);
    const good = await Deno.readFile(`${dir}/${blobIndexPath(MULTI_DIGEST)}`);
    await Deno.writeFile(
      `${dir}/${blobIndexPath(MULTI_DIGEST)}`,
      new Uint8Array([0x12, 0x05, 0x0a, 0x01]),
    );
    await assertRejects(() => service.chunks(MULTI_DIGEST), StorageError);
    await assertRejects(() => readBlob(service, MULTI_DIGEST), StorageError);
    // One flipped bit that still decodes.
    const flipped = F.damageLastIndexEntry(good);
    const listed = StatBlobResponse.decode(good).chunks.length;
    assertEquals(StatBlobResponse.decode(flipped).chunks.length, listed - 1);
    await Deno.writeFile(`${dir}/${blobIndexPath(MULTI_DIGEST)}`, flipped);
    await assertRejects(() => service.chunks(MULTI_DIGEST), StorageError, "does not encode back");
    await assertRejects(() => readBlob(service, MULTI_DIGEST), StorageError);
    // A listed chunk digest of the wrong length.
    await Deno.writeFile(
      `${dir}/${blobIndexPath(MULTI_DIGEST)}`,
      StatBlobResponse.encode({
        chunks: [{ digest: new Uint8Array(31), size: 1n }],
        bao: new Uint8Array(),
      })
        .finish(),
    );
    await assertRejects(
      () => service.chunks(MULTI_DIGEST),
      StorageError,
      "Invalid digest length 31 for chunk #0",
    );
  });
});

Deno.test("objectstore blob: an index written by the reference (single chunk listed) reads fine", async () => {
  await withFileService(async (service, dir) => {
    const digest = await putBlob(service, SINGLE);
    const legacy = StatBlobResponse.encode({
      chunks: [{ digest, size: BigInt(SINGLE.length) }],
      bao: new Uint8Array(),
    }).finish();
    const indexFile = `${dir}/${blobIndexPath(digest)}`;
    await Deno.mkdir(dirname(indexFile), { recursive: true });
    await Deno.writeFile(indexFile, legacy);
    assertEquals(await service.chunks(digest), []);
    assert(bytesEqual((await readBlob(service, digest))!, SINGLE), "readable");
    // The reference's later fix writes an empty index instead: same answers.
    await Deno.writeFile(indexFile, new Uint8Array(0));
    assertEquals(await service.chunks(digest), []);
    assert(bytesEqual((await readBlob(service, digest))!, SINGLE), "readable");
  });
});

Deno.test("objectstore blob: same content twice writes no new objects; shared chunks dedup", async () => {
  await withFileService(async (service, dir, store) => {
    await putBlob(service, MULTI);
    const before = await filesBelow(dir);
    const stats = await Promise.all(before.map((f) => Deno.stat(`${dir}/${f}`)));
    store.puts.length = 0;
    assertEquals(await putBlob(service, MULTI, 12_345), MULTI_DIGEST);
    assertEquals(store.puts, []);
    assertEquals(await filesBelow(dir), before);
    const after = await Promise.all(before.map((f) => Deno.stat(`${dir}/${f}`)));
    assertEquals(after.map((s) => s.mtime), stats.map((s) => s.mtime));

    // A blob that extends MULTI shares all but its last chunks with it.
    const longer = new Uint8Array(MULTI.length + 200_000);
    longer.set(MULTI);
    longer.set(F.pseudoRandom(200_000, 3), MULTI.length);
    const digest = await putBlob(service, longer);
    const shared = new Set((await service.chunks(MULTI_DIGEST))!.map((c) => toHex(c.digest)));
    const newChunks = (await service.chunks(digest))!.filter((c) => !shared.has(toHex(c.digest)));
    assert(newChunks.length <= 2, `only the tail is new, got ${newChunks.length} new chunks`);
    assertEquals(
      store.puts.filter((p) => p.startsWith("chunks/")).sort(),
      newChunks.map((c) => chunkPath(c.digest)).sort(),
    );
  });
});

Deno.test("objectstore blob: abort leaves no index and no blob; no temp files after writes", async () => {
  await withFileService(async (service, dir) => {
    const writer = service.openWrite();
    await writer.write(MULTI);
    await writer.abort();
    assertEquals(await service.has(MULTI_DIGEST), false);
    assertEquals(await service.openRead(MULTI_DIGEST), undefined);
    assertEquals((await filesBelow(dir)).filter((f) => f.startsWith("blobs/")), []);

    // A blob of exactly one maximal chunk: nothing may carry its digest before close.
    const one = new Uint8Array(512 * 1024);
    const w2 = service.openWrite();
    await w2.write(one);
    await w2.abort();
    assertEquals(await service.has(blake3(one)), false);

    await putBlob(service, MULTI);
    await putBlob(service, F.HELLOWORLD_BLOB_CONTENTS);
    const files = await filesBelow(dir);
    assertEquals(files.filter((f) => f.split("/").pop()!.startsWith(".")), []);
  });
});

Deno.test("objectstore blob: uploads are bounded by bytes in flight too", async () => {
  const store = new CountingStore(new MemoryObjectStore());
  const limit = 1024 * 1024;
  const service = new ObjectStoreBlobService(store, {
    maxInflightChunks: 64,
    maxInflightBytes: limit,
  });
  let open!: () => void;
  store.gate = new Promise((resolve) => (open = resolve));
  const writer = service.openWrite();
  // Random data: each chunk is stored at about its own size.
  const data = F.pseudoRandom(20 * 300 * 1024, 12);
  let resolved = false;
  const writing = writer.write(data).then(() => (resolved = true));
  // Many turns of the event loop: the writer fills what the bound allows, then waits.
  for (let i = 0; i < 200; i++) await new Promise((r) => setTimeout(r, 0));
  assertEquals(resolved, false);
  // zstd frames of random data are a few bytes longer than the chunk.
  assert(store.inflightBytes <= limit + 1024, `${store.inflightBytes} bytes in flight`);
  // Stopped by bytes, not by count: the next chunk (at most 512 KiB) did not fit.
  assert(store.inflightBytes > limit - 512 * 1024, `${store.inflightBytes} bytes in flight`);
  open();
  store.gate = undefined;
  await writing;
  assertEquals(await writer.close(), blake3(data));
  assert(bytesEqual((await readBlob(service, blake3(data)))!, data), "reads back");
  await service.close();
});

Deno.test("objectstore blob: uploads are bounded in flight; write() waits", async () => {
  const store = new CountingStore(new MemoryObjectStore());
  const service = new ObjectStoreBlobService(store, { maxInflightChunks: 3 });
  let open!: () => void;
  store.gate = new Promise((resolve) => (open = resolve));
  const writer = service.openWrite();
  // 20 chunks' worth of data in one write: it cannot resolve while puts are held.
  const data = F.pseudoRandom(20 * 300 * 1024, 11);
  let resolved = false;
  const threeStarted = new Promise<void>((resolve) => {
    store.onPut = () => store.inflightPuts === 3 && resolve();
  });
  const writing = writer.write(data).then(() => (resolved = true));
  await threeStarted;
  // Give the writer many turns of the event loop: it must stay blocked.
  for (let i = 0; i < 50; i++) await new Promise((r) => setTimeout(r, 0));
  assertEquals(store.inflightPuts, 3);
  assertEquals(resolved, false);
  open();
  store.gate = undefined;
  await writing;
  assertEquals(await writer.close(), blake3(data));
  assert(store.maxInflightPuts <= 3, `at most 3 puts at once, saw ${store.maxInflightPuts}`);
  assert(bytesEqual((await readBlob(service, blake3(data)))!, data), "reads back");
  await service.close();
});

Deno.test("objectstore blob: a failing store makes the write fail, with no index", async () => {
  const inner = new MemoryObjectStore();
  const failing = new CountingStore(inner);
  failing.put = (path: string) => Promise.reject(new StorageError(`disk full writing ${path}`));
  const service = new ObjectStoreBlobService(failing);
  await assertRejects(() => putBlob(service, MULTI), StorageError, "disk full");
  assertEquals(await inner.list(), []);
  await service.close();
});

Deno.test("objectstore blob: any other store failure is reported as a StorageError", async () => {
  const inner = new MemoryObjectStore();
  const failing = new CountingStore(inner);
  failing.put = () => Promise.reject(new TypeError("EIO"));
  const service = new ObjectStoreBlobService(failing);
  await assertRejects(() => putBlob(service, MULTI), StorageError, "storing a chunk: EIO");
  assertEquals(await inner.list(), []);
  await service.close();
});

Deno.test("objectstore blob: invalid digests and offsets are rejected", async () => {
  const service = new ObjectStoreBlobService(new MemoryObjectStore());
  await assertRejects(() => service.has(new Uint8Array(31)));
  await assertRejects(() => service.openRead(F.BLOB_A_DIGEST, -1));
  await service.close();
});

Deno.test("objectstore blob: a directory naming a blob the store does not hold is refused at the commit point", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tvix-os-commit-" });
  const addrs = {
    blobServiceAddr: `objectstore+file://${dir}/blobs`,
    directoryServiceAddr: `sqlite://${dir}/s.sqlite`,
    pathInfoServiceAddr: `sqlite://${dir}/s.sqlite`,
  };
  const te = new TextEncoder();
  const directoryOf = (digest: Digest, size: number) => ({
    directories: [],
    files: [{ name: te.encode("f"), digest, size: BigInt(size), executable: false }],
    symlinks: [],
  });
  try {
    const kept = te.encode("uploaded before a restart, still there\n");
    const lost = te.encode("uploaded before a restart, gone with a power loss\n");
    const before = await constructServices(addrs);
    const [keptDigest, lostDigest] = [
      await putBlob(before.blob, kept),
      await putBlob(before.blob, lost),
    ];
    // What a power loss between the acknowledged upload and its commit
    // leaves: the object gone, or there but empty.
    await Deno.remove(`${dir}/blobs/${chunkPath(lostDigest)}`);
    const emptied = te.encode("uploaded before a restart, left empty by a power loss\n");
    const emptiedDigest = await putBlob(before.blob, emptied);
    await Deno.writeFile(`${dir}/blobs/${chunkPath(emptiedDigest)}`, new Uint8Array(0));
    await before.close();
    const s = await constructServices(addrs);
    try {
      await assertRejects(
        () => s.directory.put(directoryOf(emptiedDigest, emptied.length)),
        InvalidRequestError,
      );
      await assertRejects(
        () => s.directory.put(directoryOf(lostDigest, lost.length)),
        InvalidRequestError,
        "is not in the store: upload blobs before the directories",
      );
      const never = blake3(te.encode("never uploaded"));
      await assertRejects(() => s.directory.put(directoryOf(never, 14)), InvalidRequestError);
      // Present on disk from before the restart: found by looking.
      await s.directory.put(directoryOf(keptDigest, kept.length));
      // Uploaded again: accepted.
      assertEquals(await putBlob(s.blob, lost), lostDigest);
      await s.directory.put(directoryOf(lostDigest, lost.length));
    } finally {
      await s.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
