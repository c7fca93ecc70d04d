import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { PACK_MAGIC, PackBlobService, RECORD_HEADER } from "../../src/castore/blob/pack.ts";
import { blake3, bytesEqual, concatBytes } from "../../src/castore/digest.ts";
import { releaseWhole } from "../../src/castore/blob/chunk_codec.ts";
import { StorageError } from "../../src/errors.ts";
import { blobServiceConformance, putBlob, readBlob } from "../conformance/blob_suite.ts";
import { tempDirFactory } from "../conformance/harness.ts";
import * as F from "../fixtures.ts";

blobServiceConformance(
  "pack",
  tempDirFactory((dir) => blobServiceFromUrl(`pack://${dir}/packs`), "pack-blob-"),
);

/** Half random (stored raw), half text (stored compressed), several chunks. */
const MIXED = new Uint8Array(3 * 1024 * 1024);
MIXED.set(F.pseudoRandom(1536 * 1024, 5));
MIXED.fill(0x61, 1536 * 1024);

async function packFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.name.endsWith(".pack")) out.push(e.name);
  return out.sort();
}

Deno.test("pack: blobs survive a reopen only once committed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pack-commit-" });
  try {
    const a = new PackBlobService(dir);
    const digest = await putBlob(a, MIXED);
    assert(await a.has(digest), "visible to the writer before the commit");
    // A second service on the same directory (another process) sees only the index.
    const b = new PackBlobService(dir);
    assertEquals(await b.has(digest), false);
    await a.sync();
    assert(await b.has(digest), "visible to others once committed");
    assert(bytesEqual((await readBlob(b, digest))!, MIXED));
    await a.close();
    await b.close();
    // One pack file: magic, then header + stored bytes per chunk.
    const packs = await packFiles(dir);
    assertEquals(packs.length, 1);
    const bytes = await Deno.readFile(`${dir}/${packs[0]}`);
    assert(bytesEqual(bytes.subarray(0, 8), PACK_MAGIC));
    // The random half is stored raw, so the pack is about that long plus
    // the compressed text half.
    assert(bytes.length > 1536 * 1024 && bytes.length < 1700 * 1024, `pack ${bytes.length} B`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pack: a corrupted record is a StorageError, never wrong bytes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pack-corrupt-" });
  try {
    const s = new PackBlobService(dir);
    const data = F.pseudoRandom(100_000, 3);
    const digest = await putBlob(s, data);
    await s.close();
    const [pack] = await packFiles(dir);
    const f = await Deno.open(`${dir}/${pack}`, { read: true, write: true });
    await f.seek(8 + RECORD_HEADER + 500, Deno.SeekMode.Start);
    await f.write(new Uint8Array([1, 2, 3]));
    f.close();
    const t = new PackBlobService(dir);
    await assertRejects(() => readBlob(t, digest), StorageError, "invalid");
    await t.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pack: readChunkInto fills a shared buffer with verified chunks, or rejects", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pack-into-" });
  try {
    const s = new PackBlobService(dir);
    const digest = await putBlob(s, MIXED);
    await s.sync();
    const chunks = (await s.chunks(digest))!;
    assert(chunks.length >= 4, `${chunks.length} chunks`);
    // Where the FUSE reader puts them: a slot of a SharedArrayBuffer.
    const shared = new Uint8Array(new SharedArrayBuffer(MIXED.length + 4096));
    let at = 0;
    for (const c of chunks) {
      const slot = shared.subarray(4096 + at, 4096 + at + Number(c.size));
      await s.readChunkInto(c.digest, slot);
      at += slot.length;
    }
    assert(bytesEqual(shared.subarray(4096), MIXED), "raw and compressed chunks read back");
    const first = chunks[0], last = chunks[chunks.length - 1];
    const wrong = new Uint8Array(Number(first.size) + 1);
    await assertRejects(() => s.readChunkInto(first.digest, wrong), StorageError, "expected");
    const unknown = blake3(new Uint8Array([1]));
    await assertRejects(() => s.readChunkInto(unknown, new Uint8Array(1)), StorageError, "missing");
    await s.close();

    // One byte flipped in the first (random: raw) and the last (text: zstd) chunk.
    const [pack] = await packFiles(dir);
    const bytes = await Deno.readFile(`${dir}/${pack}`);
    for (const c of [first, last]) {
      let i = bytes.indexOf(c.digest[0]);
      while (i >= 0 && !bytesEqual(bytes.subarray(i, i + 32), c.digest)) {
        i = bytes.indexOf(c.digest[0], i + 1);
      }
      assert(i > 0, "record found");
      // The digest ends the record header; the stored length precedes it.
      const stored = new DataView(bytes.buffer, i - 4, 4).getUint32(0, true);
      bytes[i + 32 + (stored >> 1)] ^= 0x55;
    }
    await Deno.writeFile(`${dir}/${pack}`, bytes);
    const t = new PackBlobService(dir);
    for (const c of [first, last]) {
      await assertRejects(
        () => t.readChunkInto(c.digest, new Uint8Array(Number(c.size))),
        StorageError,
      );
    }
    // An undamaged chunk still reads.
    const mid = chunks[1];
    const into = new Uint8Array(Number(mid.size));
    await t.readChunkInto(mid.digest, into);
    assertEquals(blake3(into), mid.digest);
    await t.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pack: packs roll over at the target size; every blob stays readable", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pack-roll-" });
  try {
    const s = new PackBlobService(dir, { packTargetSize: 300 * 1024 });
    const blobs = [0, 1, 2, 3, 4].map((i) => F.pseudoRandom(200_000, 10 + i));
    const digests = [];
    for (const b of blobs) digests.push(await putBlob(s, b));
    await s.close();
    assertEquals((await packFiles(dir)).length, 3);
    const t = new PackBlobService(dir);
    for (let i = 0; i < blobs.length; i++) {
      assert(bytesEqual((await readBlob(t, digests[i]))!, blobs[i]));
      assert(bytesEqual(digests[i], blake3(blobs[i])));
    }
    await t.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Small text files (compressed) and a few random ones (raw), as a directory's files are. */
function smallFiles(n: number): Uint8Array[] {
  const text = new TextEncoder().encode("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x/share\n");
  return Array.from({ length: n }, (_, i) => {
    if (i % 7 === 3) return F.pseudoRandom(200 + i, 100 + i);
    const data = new Uint8Array(100 + (i * 997) % 6000).map((_, j) => text[j % text.length]);
    data[0] = i;
    return data;
  });
}

/**
 * Every blob of `digests` asked for in one synchronous run, as a NAR
 * renderer does: through `openRead`, or `readWhole` (what it uses).
 */
function readAllAtOnce(s: PackBlobService, digests: Uint8Array[], whole = false) {
  return Promise.allSettled(digests.map(async (d) => {
    if (whole) return await s.readWhole(d);
    const reader = await s.openRead(d);
    if (!reader) return undefined;
    const parts: Uint8Array[] = [];
    for await (const p of reader) parts.push(p);
    return concatBytes(parts);
  }));
}

Deno.test("pack: small blobs opened together, across packs, read right; a missing one is absent", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pack-batch-" });
  try {
    // Small packs: the batch spans several of them, and more than one lookup query.
    const s = new PackBlobService(dir, { packTargetSize: 8 * 1024 });
    const files = smallFiles(150);
    const digests = [];
    for (const f of files) digests.push(await putBlob(s, f));
    await s.close();
    const packs = await packFiles(dir);
    assert(packs.length >= 3, `the blobs span several packs: ${packs}`);
    const missing = blake3(new TextEncoder().encode("never stored"));
    const t = new PackBlobService(dir);
    const asked = [...digests.slice(0, 70), missing, ...digests.slice(70), digests[5]];
    for (const whole of [false, true]) {
      const got = await readAllAtOnce(t, asked, whole);
      for (const [i, r] of got.entries()) {
        assertEquals(r.status, "fulfilled", `blob ${i}`);
        const want = i === 70 ? undefined : files[i < 70 ? i : i === asked.length - 1 ? 5 : i - 1];
        assertEquals(
          (r as PromiseFulfilledResult<Uint8Array | undefined>).value,
          want,
          `blob ${i}`,
        );
      }
    }
    // One blob asked for twice, and nothing else: two buffers of their own,
    // so a reader freeing its copy leaves the other's intact.
    for (const whole of [false, true]) {
      const [first, second] = await readAllAtOnce(t, [digests[9], digests[9]], whole);
      const a = (first as PromiseFulfilledResult<Uint8Array>).value;
      const b = (second as PromiseFulfilledResult<Uint8Array>).value;
      releaseWhole(a);
      assertEquals(b, files[9], `second read (readWhole: ${whole})`);
    }
    // The batched lookup answers as the single one does.
    const many = t.locateMany(asked);
    for (const [i, d] of asked.entries()) assertEquals(many[i], t.locate(d), `location ${i}`);
    await t.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pack: a damaged record among small blobs read together fails only its own read", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pack-batch-bad-" });
  try {
    const s = new PackBlobService(dir);
    const files = smallFiles(40);
    const digests = [];
    for (const f of files) digests.push(await putBlob(s, f));
    await s.close();
    const t = new PackBlobService(dir);
    // One compressed and one raw record damaged, in the middle of one run of neighbours.
    const bad = [10, 12];
    assert(t.locate(digests[10])!.raw && !t.locate(digests[12])!.raw);
    const [pack] = await packFiles(dir);
    const f = await Deno.open(`${dir}/${pack}`, { read: true, write: true });
    for (const i of bad) {
      const at = t.locate(digests[i])!;
      await f.seek(at.offset + Math.floor(at.length / 2), Deno.SeekMode.Start);
      await f.write(new Uint8Array([0xde, 0xad]));
    }
    f.close();
    for (const whole of [false, true]) {
      const got = await readAllAtOnce(t, digests, whole);
      for (const [i, r] of got.entries()) {
        if (bad.includes(i)) {
          assertEquals(r.status, "rejected", `blob ${i}`);
          assert((r as PromiseRejectedResult).reason instanceof StorageError, `blob ${i}`);
        } else {
          assertEquals((r as PromiseFulfilledResult<Uint8Array>).value, files[i], `blob ${i}`);
        }
      }
    }
    await t.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A gc cutoff later than every write so far and earlier than every write after it. */
async function cutoffBetween(): Promise<number> {
  await new Promise((r) => setTimeout(r, 20));
  const cutoff = Date.now();
  await new Promise((r) => setTimeout(r, 20));
  return cutoff;
}

Deno.test("pack: gc taking a chunk an upload reused fails only what needs it, at its referrer's sync", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pack-gc-race-" });
  try {
    const SHARED = F.pseudoRandom(1024 * 1024, 41); // several chunks
    const OTHER = F.pseudoRandom(700 * 1024, 42);
    const writer = new PackBlobService(dir);
    const shared = await putBlob(writer, SHARED);
    await writer.sync();
    const cutoff = await cutoffBetween();
    // Uploaded again: every chunk is found committed and reused, not written.
    assertEquals(await putBlob(writer, SHARED), shared);
    // Another upload, of new bytes, published in the same commit round.
    const other = await putBlob(writer, OTHER);
    // Garbage collection in another process: the shared blob was written
    // before its cutoff and nothing refers to it.
    const gc = new PackBlobService(dir);
    const report = await gc.sweep(() => false, { cutoff, dryRun: false });
    assert(report.removed > 0, "the shared blob's rows went");
    // The other upload is committed and its referrer may be stored; the
    // reused one is refused, so nothing refers to missing chunks.
    await writer.sync([other]);
    const reader = new PackBlobService(dir);
    assert(bytesEqual((await readBlob(reader, other))!, OTHER), "the other upload is committed");
    await assertRejects(() => writer.sync([shared]), StorageError, "garbage collected");
    await assertRejects(() => writer.sync([other, shared]), StorageError, "garbage collected");
    assertEquals(await reader.has(shared), false);
    // Uploaded again, its chunks are written afresh and it is whole.
    assertEquals(await putBlob(writer, SHARED), shared);
    await writer.sync([shared]);
    assert(bytesEqual((await readBlob(reader, shared))!, SHARED));
    await Promise.all([writer.close(), gc.close(), reader.close()]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pack: a reused chunk lost to gc and entered again by another process is accepted on retry", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pack-gc-reenter-" });
  try {
    const SMALL = F.pseudoRandom(10 * 1024, 43); // one chunk: the blob is its chunk
    const writer = new PackBlobService(dir);
    const small = await putBlob(writer, SMALL);
    await writer.sync();
    const cutoff = await cutoffBetween();
    assertEquals(await putBlob(writer, SMALL), small); // reused
    const gc = new PackBlobService(dir);
    await gc.sweep(() => false, { cutoff, dryRun: false });
    await assertRejects(() => writer.sync([small]), StorageError, "garbage collected");
    // Another process stores it again; a retry here finds it committed and reuses it.
    const other = new PackBlobService(dir);
    await putBlob(other, SMALL);
    await other.sync();
    assertEquals(await putBlob(writer, SMALL), small);
    await writer.sync([small]);
    const reader = new PackBlobService(dir);
    assert(bytesEqual((await readBlob(reader, small))!, SMALL));
    await Promise.all([writer.close(), gc.close(), other.close(), reader.close()]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pack: compaction never points the index at a pack another process's gc removed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pack-gc-compact-" });
  try {
    const LIVE = F.pseudoRandom(100 * 1024, 44);
    const a = new PackBlobService(dir);
    const b = new PackBlobService(dir);
    const live = await putBlob(a, LIVE);
    await putBlob(a, F.pseudoRandom(900 * 1024, 45)); // dead: the pack is mostly garbage
    await a.sync();
    const isLive = (d: Uint8Array) => bytesEqual(d, live);
    const later = () => ({ cutoff: Date.now() + 60_000, dryRun: false });
    // b's gc moves the live blob into b's own pack and deletes a's current pack.
    await b.sweep(isLive, later());
    await putBlob(b, F.pseudoRandom(900 * 1024, 46)); // more garbage, beside the copy
    await b.sync();
    // a's gc would copy the live blob into its current pack, which is gone:
    // it must fail before the index points there, and leave the blob whole.
    await assertRejects(() => a.sweep(isLive, later()), StorageError, "run gc again");
    const reader = new PackBlobService(dir);
    assert(bytesEqual((await readBlob(reader, live))!, LIVE), "readable after the failed gc");
    // Its failed copy does not keep a directory that names it out.
    await a.sync([live]);
    // The next gc starts a new pack and succeeds.
    await a.sweep(isLive, later());
    const after = new PackBlobService(dir);
    assert(bytesEqual((await readBlob(after, live))!, LIVE));
    await Promise.all([a.close(), b.close(), reader.close(), after.close()]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pack: gc deleting a pack while its writer commits leaves no row pointing at it", async () => {
  // The writer's commit checks that its pack is there, flushes it, then
  // enters the rows; another process's gc (everything older than its
  // cutoff, nothing of the pack in the index yet) runs in between.
  for (let round = 0; round < 5; round++) {
    const dir = await Deno.makeTempDir({ prefix: "pack-gc-commit-" });
    try {
      const writer = new PackBlobService(dir);
      const gc = new PackBlobService(dir);
      const DATA = F.pseudoRandom(3 * 1024 * 1024, 60 + round);
      const digest = await putBlob(writer, DATA); // published, not committed
      const commit = writer.sync([digest]).then(() => "committed", (err) => err);
      await gc.sweep(() => true, { cutoff: Date.now() + 60_000, dryRun: false });
      const outcome = await commit;
      const reader = new PackBlobService(dir);
      try {
        if (outcome === "committed") {
          // Then the rows came first and the pack stayed: the blob reads.
          assert(bytesEqual((await readBlob(reader, digest))!, DATA), "committed but unreadable");
        } else {
          // Or the pack went first: the upload is refused and nothing is indexed.
          assert(outcome instanceof StorageError, `commit failed with ${outcome}`);
          assert(/garbage collected/.test(outcome.message), outcome.message);
          assertEquals(await reader.has(digest), false);
        }
      } finally {
        await Promise.all([writer.close(), gc.close(), reader.close()]);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("pack: a writer committing into a pack after gc counted it as empty keeps the pack", async () => {
  // gc counts each pack's live bytes first and deletes empty ones after;
  // another process's writer enters its rows into one of them in between.
  const dir = await Deno.makeTempDir({ prefix: "pack-gc-late-rows-" });
  try {
    const writer = new PackBlobService(dir);
    const DATA = F.pseudoRandom(2 * 1024 * 1024, 70);
    const digest = await putBlob(writer, DATA); // published, not committed
    const [pack] = await packFiles(dir);
    const id = Number(pack.replace(".pack", ""));
    let committed = false;
    const gc = new PackBlobService(dir, {
      beforeCompacting: async (at) => {
        if (at !== id) return;
        await writer.sync([digest]);
        committed = true;
      },
    });
    await gc.sweep(() => true, { cutoff: Date.now() + 60_000, dryRun: false });
    assert(committed, "the writer committed while gc ran");
    assertEquals(await packFiles(dir), [pack], "the pack its rows point into is kept");
    const reader = new PackBlobService(dir);
    assert(bytesEqual((await readBlob(reader, digest))!, DATA));
    await Promise.all([writer.close(), gc.close(), reader.close()]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pack: a rewrite whose copies' pack another process's gc removed leaves the index and the old pack alone", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pack-gc-rewrite-dest-" });
  try {
    const LIVE = F.pseudoRandom(100 * 1024, 71), DEAD = F.pseudoRandom(1024 * 1024, 72);
    const writer = new PackBlobService(dir);
    const live = await putBlob(writer, LIVE);
    await putBlob(writer, DEAD);
    await writer.close();
    const [old] = await packFiles(dir);
    // Too new for the other gc, old enough for this one: only this one rewrites it.
    const hour = new Date(Date.now() + 3600_000);
    await Deno.utime(join(dir, old), hour, hour);
    const other = new PackBlobService(dir);
    let armed = false, interleaved = false;
    class Collector extends PackBlobService {
      override async sync(refs?: Uint8Array[]): Promise<void> {
        await super.sync(refs);
        if (!armed) return;
        armed = false;
        // Right after the copies were committed, before the index points at
        // them: the other gc sees a quiet pack that no row points into.
        await other.sweep(() => true, { cutoff: Date.now() + 60_000, dryRun: false });
        interleaved = true;
      }
    }
    const gc = new Collector(dir, {
      beforeCompacting: (id) => void (armed = `${id}.pack` === old),
    });
    await assertRejects(
      () => gc.sweep((d) => bytesEqual(d, live), { cutoff: Date.now() + 86400_000, dryRun: false }),
      StorageError,
      "another garbage collection removed",
    );
    assert(interleaved, "the other gc ran in between");
    assert((await packFiles(dir)).includes(old), "the old pack stays");
    const reader = new PackBlobService(dir);
    assert(bytesEqual((await readBlob(reader, live))!, LIVE));
    await Promise.all([gc.close(), other.close(), reader.close()]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pack: compression-level in the URL sets the level of new large chunks; bad values are refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pack-level-" });
  try {
    // Compressible text that zstd's levels tell apart, in several large chunks.
    const words = new TextEncoder().encode(
      "lib/libfoo.so.1 /nix/store/0123456789abcdfghijklmnpqrsvwxyz-foo-1.0 ELF x86-64 ",
    );
    const data = new Uint8Array(2 * 1024 * 1024);
    const noise = F.pseudoRandom(data.length, 9);
    for (let i = 0; i < data.length; i++) data[i] = words[(i * 7 + (noise[i] & 3)) % words.length];
    const stored: Record<string, number> = {};
    for (const level of ["1", "3", "19", ""]) {
      const url = `pack://${dir}/${level || "default"}${
        level ? `?compression-level=${level}` : ""
      }`;
      const s = await blobServiceFromUrl(url);
      const digest = await putBlob(s, data);
      await s.sync!();
      assert(bytesEqual((await readBlob(s, digest))!, data), `read back at level ${level}`);
      await s.close();
      const dirName = `${dir}/${level || "default"}`;
      const [pack] = await packFiles(dirName);
      stored[level || "default"] = (await Deno.stat(`${dirName}/${pack}`)).size;
    }
    assertEquals(
      stored["3"],
      stored["default"],
      `level 3 is the default: ${JSON.stringify(stored)}`,
    );
    assert(stored["1"] > stored["3"] && stored["3"] > stored["19"], JSON.stringify(stored));

    for (const bad of ["0", "20", "-1", "3.5", "x", ""]) {
      await assertRejects(
        () => blobServiceFromUrl(`pack://${dir}/bad?compression-level=${bad}`),
        StorageError,
        "not an integer from 1 to 19",
      );
    }
    await assertRejects(
      () => blobServiceFromUrl(`pack://${dir}/bad?level=1`),
      StorageError,
      "unknown pack store option level",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pack: a pack's descriptor is not closed under a read still running on it", async () => {
  // Two descriptors for six packs: every read evicts another's descriptor,
  // and a number closed under a running read is soon the next pack's.
  const dir = await Deno.makeTempDir({ prefix: "pack-fd-" });
  try {
    const s = new PackBlobService(dir, { packTargetSize: 100 * 1024, readHandles: 2 });
    const blobs = [0, 1, 2, 3, 4, 5].map((i) => F.pseudoRandom(400_000, 40 + i));
    const chunks: { digest: Uint8Array; size: number }[] = [];
    for (const b of blobs) {
      const digest = await putBlob(s, b);
      for (const c of (await s.chunks(digest))!) chunks.push({ ...c, size: Number(c.size) });
    }
    await s.sync();
    assert(new Set(await packFiles(dir)).size >= 6, "a pack per blob at least");
    assert(chunks.some((c) => c.size > 64 * 1024), "chunks read asynchronously");
    for (let round = 0; round < 20; round++) {
      // Interleaved, so consecutive reads name different packs.
      const order = chunks.map((_, i) => (i * 7 + round) % chunks.length);
      await Promise.all(order.map(async (i) => {
        const into = new Uint8Array(chunks[i].size);
        await s.readChunkInto(chunks[i].digest, into);
        assertEquals(blake3(into), chunks[i].digest);
      }));
    }
    await s.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pack: the same chunks uploaded at once, or again once committed, are written once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pack-dedup-" });
  try {
    const service = new PackBlobService(dir);
    // Small files, each a single chunk, most of them several times over, and
    // one blob of several chunks twice: uploaded together, so their lookups
    // are answered together (see `locateSoon`).
    const distinct = Array.from({ length: 12 }, (_, i) => F.pseudoRandom(1000 + i * 3000, i));
    const uploads = [...distinct, ...distinct, ...distinct.slice(0, 5), MIXED, MIXED];
    const digests = await Promise.all(uploads.map((data) => putBlob(service, data)));
    assertEquals(digests, uploads.map((data) => blake3(data)));
    await service.sync();
    const packs = await packFiles(dir);
    assertEquals(packs.length, 1);
    const written = (await Deno.stat(join(dir, packs[0]))).size;
    // Raw random chunks: each distinct small blob takes its size and a header.
    const small = distinct.reduce((n, d) => n + RECORD_HEADER + d.length, 0);
    assert(written > PACK_MAGIC.length + small, `pack ${written} B`);
    assert(written < PACK_MAGIC.length + small + 1700 * 1024, `pack ${written} B: written twice?`);
    // Committed now: uploading all of it again writes nothing.
    await Promise.all(uploads.map((data) => putBlob(service, data)));
    await service.sync();
    assertEquals((await Deno.stat(join(dir, packs[0]))).size, written);
    assertEquals(await packFiles(dir), packs);
    for (const [i, data] of uploads.entries()) {
      assert(bytesEqual((await readBlob(service, digests[i]))!, data), `blob ${i} reads back`);
    }
    await service.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
