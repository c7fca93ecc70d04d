import { pseudoRandom } from "../fixtures.ts";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import {
  acquireChunkCodec,
  type ChunkCodec,
  ChunkWorkerPool,
  ENCODE_BATCH_LIMIT,
  inThreadCodec,
} from "../../src/castore/blob/chunk_pool.ts";
import { ENCODE_INLINE_LIMIT } from "../../src/castore/blob/chunk_codec.ts";
import { NOT_ALONE, REFUSED } from "./picky_chunk_worker.ts";
import { ObjectStoreBlobService } from "../../src/castore/blob/objectstore.ts";
import { blake3, bytesEqual, type Digest } from "../../src/castore/digest.ts";
import { StorageError } from "../../src/errors.ts";
import { FileObjectStore } from "../../src/castore/objectstore/file.ts";
import { MemoryObjectStore } from "../../src/castore/objectstore/memory.ts";
import { putBlob, readBlob } from "../conformance/blob_suite.ts";

/** Text-like bytes that compress well. */
function textBytes(length: number): Uint8Array {
  const line = new TextEncoder().encode(
    "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12.1\n",
  );
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = line[i % line.length] ^ ((i >> 12) & 1);
  return out;
}

/**
 * Sample chunks: empty and tiny (handled inline), small enough to go to a
 * Worker in one message with others, compressible, random, one of the
 * FastCDC maximum (one message each).
 */
const SAMPLES: Uint8Array[] = [
  new Uint8Array(0),
  new Uint8Array([1, 2, 3]),
  textBytes(ENCODE_INLINE_LIMIT + 1),
  pseudoRandom(40_000, 5),
  textBytes(ENCODE_BATCH_LIMIT),
  textBytes(300_000),
  pseudoRandom(200_000, 7),
  pseudoRandom(512 * 1024, 8),
];

/** Encodes and decodes every sample; the codec gets copies (it takes ownership). */
async function roundTrips(codec: ChunkCodec) {
  return await Promise.all(SAMPLES.map(async (sample) => {
    const { digest, stored: compressed } = await codec.encode(sample.slice());
    const decoded = await codec.decode(compressed.slice(), digest, sample.length);
    return { digest, compressed, decoded };
  }));
}

async function assertSameAsInThread(codec: ChunkCodec): Promise<void> {
  const expected = await roundTrips(inThreadCodec);
  const got = await roundTrips(codec);
  for (const [i, sample] of SAMPLES.entries()) {
    assertEquals(got[i].digest, blake3(sample));
    assertEquals(expected[i].digest, blake3(sample));
    assert(bytesEqual(got[i].compressed, expected[i].compressed), `sample ${i}: same zstd bytes`);
    assert(bytesEqual(got[i].decoded, sample), `sample ${i}: decodes to the input`);
  }
}

/** Damaged inputs and the error each must produce, for any codec. */
async function decodeErrors(codec: ChunkCodec): Promise<string[]> {
  const sample = SAMPLES[5];
  const { digest, stored: compressed } = await inThreadCodec.encode(sample);
  const flipped = compressed.slice();
  flipped[flipped.length >> 1] ^= 0x10;
  const cases: [Uint8Array, Digest, number | undefined][] = [
    [flipped, digest, sample.length],
    [compressed.slice(0, 20), digest, sample.length],
    [compressed.slice(), digest, sample.length - 1],
    [compressed.slice(), blake3(SAMPLES[1]), sample.length],
    [compressed.slice(), blake3(SAMPLES[1]), undefined],
    [pseudoRandom(100, 3), digest, undefined],
  ];
  const messages: string[] = [];
  for (const [input, d, size] of cases) {
    const err = await codec.decode(input, d, size).then(() => undefined, (e) => e);
    assert(err instanceof StorageError, `StorageError, got ${err}`);
    messages.push(err.message);
  }
  return messages;
}

Deno.test("chunk pool: Workers give the same digests, zstd bytes and decodes as the main thread", async () => {
  const pool = new ChunkWorkerPool(2);
  try {
    await assertSameAsInThread(pool);
    assert(pool.workers >= 1 && pool.workers <= 2, `1-2 Workers, got ${pool.workers}`);
    assertEquals(pool.inThread, false);
  } finally {
    await pool.terminate();
  }
});

Deno.test("chunk pool: raw chunks where zstd saves too little, alike in a Worker and in-thread", async () => {
  const pool = new ChunkWorkerPool(2);
  try {
    const random = pseudoRandom(300 * 1024, 21);
    const text = new Uint8Array(300 * 1024).fill(0x41);
    for (const codec of [pool, inThreadCodec]) {
      const r = await codec.encode(random.slice(), true);
      assertEquals(r.raw, true);
      assert(bytesEqual(r.stored, random), "stored as it is");
      assert(
        bytesEqual(await codec.decode(r.stored.slice(), r.digest, random.length, true), random),
      );
      // Not allowed: always zstd (the object-store layout).
      assertEquals((await codec.encode(random.slice())).raw, false);
      const t = await codec.encode(text.slice(), true);
      assertEquals(t.raw, false);
      assert(t.stored.length < 1000, "compressible data is compressed");
      // A raw chunk that does not match its digest is refused like a bad frame.
      const bad = r.stored.slice();
      bad[7] ^= 1;
      await assertRejects(() => codec.decode(bad, r.digest, random.length, true), StorageError);
    }
  } finally {
    await pool.terminate();
  }
});

Deno.test("chunk pool: corrupt chunks are the same StorageErrors in a Worker as in-thread", async () => {
  const pool = new ChunkWorkerPool(1);
  try {
    assertEquals(await decodeErrors(pool), await decodeErrors(inThreadCodec));
  } finally {
    await pool.terminate();
  }
});

Deno.test("chunk pool: falls back to the main thread when Workers cannot start", async () => {
  const pool = new ChunkWorkerPool(2, new URL("./broken_chunk_worker.ts", import.meta.url));
  try {
    await assertSameAsInThread(pool);
    assertEquals(pool.inThread, true);
    assertEquals(pool.workers, 0);
  } finally {
    await pool.terminate();
  }
});

Deno.test("chunk pool: a Worker dying mid-write fails the write; nothing becomes visible", async () => {
  // Only the first Worker dies (see the module); chunks of the failed
  // write still being encoded may reach its replacement.
  const markDir = await Deno.makeTempDir({ prefix: "chunk-pool-crash-" });
  Deno.env.set("CRASHING_CHUNK_WORKER_MARK", `${markDir}/crashed`);
  const pool = new ChunkWorkerPool(1, new URL("./crashing_chunk_worker.ts", import.meta.url));
  const store = new MemoryObjectStore();
  const service = new ObjectStoreBlobService(store, { codec: pool });
  try {
    const data = pseudoRandom(4 * 1024 * 1024, 21);
    await assertRejects(() => putBlob(service, data), StorageError, "chunk worker failed");
    assertEquals(await store.list("blobs/"), []);
    assertEquals(await service.has(blake3(data)), false);
    assert(await Deno.stat(`${markDir}/crashed`).then(() => true, () => false), "it crashed");
    // The pool recovers with a fresh Worker (a chunk too large to be
    // handled inline, encoded and then decoded there).
    const small = pseudoRandom(100_000, 2);
    assertEquals(await putBlob(service, small), blake3(small));
    assert(bytesEqual((await readBlob(service, blake3(small)))!, small), "readable");
    assert(pool.workers >= 1, "a Worker serves again");
  } finally {
    await service.close();
    await pool.terminate();
    Deno.env.delete("CRASHING_CHUNK_WORKER_MARK");
    await Deno.remove(markDir, { recursive: true });
  }
});

Deno.test("chunk pool: the blob service writes identical objects with and without Workers", async () => {
  const dir = await Deno.makeTempDir({ prefix: "chunk-pool-" });
  const data = new Uint8Array(3 * 1024 * 1024);
  data.set(textBytes(1024 * 1024));
  data.set(pseudoRandom(2 * 1024 * 1024, 5), 1024 * 1024);
  try {
    const stores = [new FileObjectStore(`${dir}/a`), new FileObjectStore(`${dir}/b`)];
    const withWorkers = new ObjectStoreBlobService(stores[0], { workers: 1 });
    const inThread = new ObjectStoreBlobService(stores[1], { workers: 0 });
    assertEquals(await putBlob(withWorkers, data), blake3(data));
    assertEquals(await putBlob(inThread, data, 77_777), blake3(data));
    const paths = await stores[0].list();
    assertEquals(await stores[1].list(), paths);
    assert(paths.length >= 4, `index and chunks stored, got ${paths.length}`);
    for (const p of paths) {
      assertEquals(await stores[0].get(p), await stores[1].get(p));
    }
    // Each reads what the other wrote.
    const swapped = [
      new ObjectStoreBlobService(stores[1], { workers: 1 }),
      new ObjectStoreBlobService(stores[0], { workers: 0 }),
    ];
    for (const s of swapped) assert(bytesEqual((await readBlob(s, blake3(data)))!, data), "read");
    for (const s of [withWorkers, inThread, ...swapped]) await s.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("chunk pool: the shared pool is released by its last user", async () => {
  const a = acquireChunkCodec(1);
  const b = acquireChunkCodec(2);
  assert(a.codec === b.codec, "one pool per process");
  const pool = a.codec as ChunkWorkerPool;
  await assertSameAsInThread(pool);
  await a.release();
  await a.release(); // idempotent: does not release b's use
  assert(pool.workers >= 1, "still running for b");
  await b.release();
  assertEquals(pool.workers, 0);
  const c = acquireChunkCodec(1);
  assert(c.codec !== pool, "a new pool after the last release");
  await c.release();
  assertEquals(acquireChunkCodec(0).codec, inThreadCodec);
});

Deno.test("chunk pool: idle Workers never keep a process alive", async () => {
  const config = new URL("../../deno.json", import.meta.url).pathname;
  const pool = new URL("../../src/castore/blob/chunk_pool.ts", import.meta.url).href;
  // Encodes and decodes, then reaches the end of the script without releasing the pool.
  const script = `
    const { acquireChunkCodec } = await import(${JSON.stringify(pool)});
    const { codec } = acquireChunkCodec(2);
    const data = new Uint8Array(300000).fill(7);
    const e = await codec.encode(data.slice());
    const d = await codec.decode(e.stored, e.digest, data.length);
    console.log(d.length);
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--config", config, script],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // A hang is the failure being tested for; end it so the test reports it.
  const guard = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const out = await child.output();
  clearTimeout(guard);
  assertEquals(new TextDecoder().decode(out.stdout).trim(), "300000");
  assert(out.success, `exits on its own: ${new TextDecoder().decode(out.stderr)}`);
});

Deno.test("chunk pool: small chunks of unknown size asked for together are split with a Worker; a bad one fails alone", async () => {
  const pool = new ChunkWorkerPool(1);
  try {
    const plain = Array.from({ length: 40 }, (_, i) => textBytes(1000 + i * 500));
    const encoded = await Promise.all(plain.map((p) => inThreadCodec.encode(p.slice())));
    // Damaged: one early (decoded here) and one late (decoded by the Worker).
    const bad = new Set([3, 33]);
    const decodes = encoded.map(({ digest, stored }, i) => {
      const frame = stored.slice();
      if (bad.has(i)) frame[frame.length >> 1] ^= 0x40;
      // Without a size: those of known size are decoded here (see the next test).
      return pool.decode(frame, digest);
    });
    const results = await Promise.allSettled(decodes);
    for (const [i, r] of results.entries()) {
      if (bad.has(i)) {
        assert(r.status === "rejected" && r.reason instanceof StorageError, `chunk ${i} must fail`);
      } else {
        assert(r.status === "fulfilled" && bytesEqual(r.value, plain[i]), `chunk ${i} decodes`);
      }
    }
    assertEquals(pool.workers, 1, "the later half went to a Worker");
    // A lone small chunk is decoded in-thread: no Worker is needed for it.
    const lone = new ChunkWorkerPool(1);
    const { digest, stored } = await inThreadCodec.encode(plain[0].slice());
    assert(bytesEqual(await lone.decode(stored, digest, plain[0].length), plain[0]));
    assertEquals(lone.workers, 0);
    await lone.terminate();
  } finally {
    await pool.terminate();
  }
});

Deno.test("chunk pool: small chunks of known size are decoded here, many at once too; a bad one fails alone", async () => {
  const pool = new ChunkWorkerPool(1);
  try {
    const plain = Array.from({ length: 40 }, (_, i) => textBytes(1000 + i * 500));
    const encoded = await Promise.all(plain.map((p) => inThreadCodec.encode(p.slice())));
    const results = await Promise.allSettled(encoded.map(({ digest, stored }, i) => {
      const frame = stored.slice();
      if (i === 20) frame[frame.length >> 1] ^= 0x40;
      return pool.decode(frame, digest, plain[i].length);
    }));
    for (const [i, r] of results.entries()) {
      if (i === 20) {
        assert(r.status === "rejected" && r.reason instanceof StorageError, `chunk ${i} must fail`);
      } else {
        assert(r.status === "fulfilled" && bytesEqual(r.value, plain[i]), `chunk ${i} decodes`);
      }
    }
    // The reused zstd context (zstd_small.ts) costs less than handing them over.
    assertEquals(pool.workers, 0, "no Worker for small chunks of known size");
  } finally {
    await pool.terminate();
  }
});

Deno.test("chunk pool: chunks encoded in one message to a Worker are each the in-thread result; a refused one fails alone", async () => {
  const pool = new ChunkWorkerPool(1, new URL("./picky_chunk_worker.ts", import.meta.url));
  try {
    // Sizes between the inline limit and the batch limit, asked for in one
    // turn: they travel together.
    const plain = Array.from(
      { length: 24 },
      (_, i) =>
        i % 3 === 0
          ? pseudoRandom(ENCODE_INLINE_LIMIT + 1 + i * 4000, i)
          : textBytes(ENCODE_INLINE_LIMIT + 1 + i * 4000),
    );
    plain[7][0] = REFUSED;
    plain[19][0] = REFUSED;
    const results = await Promise.allSettled(plain.map((p) => pool.encode(p.slice(), true)));
    for (const [i, r] of results.entries()) {
      if (i === 7 || i === 19) {
        assert(
          r.status === "rejected" && r.reason instanceof StorageError &&
            r.reason.message === "refused on purpose",
          `chunk ${i} must fail alone`,
        );
        continue;
      }
      assert(r.status === "fulfilled", `chunk ${i} encodes`);
      const expected = await inThreadCodec.encode(plain[i].slice(), true);
      assertEquals(r.value.digest, expected.digest);
      assertEquals(r.value.raw, expected.raw);
      assert(bytesEqual(r.value.stored, expected.stored), `chunk ${i}: same stored bytes`);
    }
    assertEquals(pool.workers, 1);
  } finally {
    await pool.terminate();
  }
});

Deno.test("chunk pool: chunks gathered for a Worker fail when the pool stops first, and start no Worker", async () => {
  const pool = new ChunkWorkerPool(2);
  const encoding = pool.encode(pseudoRandom(ENCODE_INLINE_LIMIT + 100, 9), true);
  await pool.terminate();
  await assertRejects(() => encoding, StorageError, "chunk worker was stopped");
  await new Promise((r) => setTimeout(r, 0)); // past the batch's scheduled hand-over
  assertEquals(pool.workers, 0);
});

Deno.test("chunk pool: chunks gathered in one turn are spread over the encoding Workers", async () => {
  // Four Workers, three of them for encoding (see defaultChunkWorkers). The
  // picky Worker refuses these chunks sent alone or in a batch of one: each
  // Worker's part must travel together.
  const pool = new ChunkWorkerPool(4, new URL("./picky_chunk_worker.ts", import.meta.url));
  try {
    const plain = Array.from({ length: 24 }, (_, i) => {
      const p = textBytes(ENCODE_INLINE_LIMIT + 1 + i * 100);
      p[0] = NOT_ALONE;
      return p;
    });
    const encoded = await Promise.all(plain.map((p) => pool.encode(p.slice(), true)));
    for (const [i, e] of encoded.entries()) assertEquals(e.digest, blake3(plain[i]));
    assertEquals(pool.workers, 3);
  } finally {
    await pool.terminate();
  }
});
