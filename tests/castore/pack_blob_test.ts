import { assert, assertEquals, assertRejects } from "../assert.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { PACK_MAGIC, PackBlobService, RECORD_HEADER } from "../../src/castore/blob/pack.ts";
import { blake3, bytesEqual } from "../../src/castore/digest.ts";
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
