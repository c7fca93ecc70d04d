/**
 * BlobService conformance suite (docs/architecture.md#the-three-services,
 * docs/architecture.md#how-to-add-a-backend): the same cases run
 * against every backend. A backend's test file calls
 * {@linkcode blobServiceConformance} with a factory for fresh services.
 *
 * @module
 */
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { b3Display, blake3, bytesEqual, type Digest } from "../../src/castore/digest.ts";
import { type BlobService, writeWholeBlob } from "../../src/castore/blob/service.ts";
import { SINGLE_CHUNK_MAX } from "../../src/castore/blob/chunked_writer.ts";
import * as F from "../fixtures.ts";
import { collect, concat, type ServiceFactory, withService } from "./harness.ts";

/** Writes `data` in pieces of `pieceSize` bytes and returns the digest from close. */
export async function putBlob(
  service: BlobService,
  data: Uint8Array,
  pieceSize = 64 * 1024,
): Promise<Digest> {
  const writer = service.openWrite();
  for (let pos = 0; pos < data.length; pos += pieceSize) {
    await writer.write(data.subarray(pos, pos + pieceSize));
  }
  return await writer.close();
}

/** Reads a whole blob (from `offset`); `undefined` if absent. */
export async function readBlob(
  service: BlobService,
  digest: Digest,
  offset?: number,
): Promise<Uint8Array | undefined> {
  const reader = await service.openRead(digest, offset);
  return reader && concat(await collect(reader));
}

async function checkStoredBlob(service: BlobService, data: Uint8Array, digest: Digest) {
  assert(await service.has(digest), `has(${b3Display(digest)})`);
  const read = await readBlob(service, digest);
  assert(read !== undefined, "blob readable");
  assertEquals(read.length, data.length);
  assert(bytesEqual(read, data), "read back identical bytes");
  const chunks = await service.chunks(digest);
  assert(chunks !== undefined, "chunks present for a stored blob");
  if (chunks.length > 0) {
    // A chunk list must cover the blob exactly, and every chunk must be readable on its own.
    assertEquals(chunks.reduce((n, c) => n + c.size, 0n), BigInt(data.length));
    const pieces: Uint8Array[] = [];
    for (const chunk of chunks) {
      assert(await service.has(chunk.digest), "chunk known");
      const piece = await readBlob(service, chunk.digest);
      assert(piece !== undefined, "chunk readable");
      assertEquals(BigInt(piece.length), chunk.size);
      assert(bytesEqual(blake3(piece), chunk.digest), "chunk digest matches");
      pieces.push(piece);
    }
    assert(bytesEqual(concat(pieces), data), "chunks concatenate to the blob");
  }
}

/** Registers the BlobService conformance cases, each on a fresh service from `factory`. */
export function blobServiceConformance(label: string, factory: ServiceFactory<BlobService>): void {
  const test = (name: string, fn: (s: BlobService) => Promise<void>) =>
    Deno.test(`${label}: blob ${name}`, () => withService(factory, fn));

  test("has nonexistent is false", async (s) => {
    assertEquals(await s.has(F.BLOB_A_DIGEST), false);
  });

  test("chunks nonexistent is absent", async (s) => {
    assertEquals(await s.chunks(F.BLOB_A_DIGEST), undefined);
  });

  test("read nonexistent is absent", async (s) => {
    assertEquals(await s.openRead(F.BLOB_A_DIGEST), undefined);
    assertEquals(await s.openRead(F.BLOB_A_DIGEST, 1), undefined);
  });

  const blobs: [string, Uint8Array, Digest][] = [
    ["BLOB_A", F.BLOB_A, F.BLOB_A_DIGEST],
    ["BLOB_B", F.BLOB_B, F.BLOB_B_DIGEST],
    ["HELLOWORLD", F.HELLOWORLD_BLOB_CONTENTS, F.HELLOWORLD_BLOB_DIGEST],
  ];
  for (const [name, data, digest] of blobs) {
    test(`put, has, get ${name}`, async (s) => {
      assertEquals(await putBlob(s, data), digest);
      await checkStoredBlob(s, data, digest);
    });
  }

  test("readWhole, where a backend has it, gives the blob or nothing, never other bytes", async (s) => {
    if (!s.readWhole) return;
    assertEquals(await s.readWhole(F.BLOB_A_DIGEST, F.BLOB_A.length), undefined);
    // Many blobs asked for at once, as a NAR renderer does; BLOB_B (~1 MiB)
    // may be too large to come whole, and a wrong size hint must not
    // change what comes back.
    for (const [, data] of blobs) await putBlob(s, data);
    const asked = blobs.flatMap(([, data, digest]) => [
      { data, got: s.readWhole!(digest, data.length) },
      { data, got: s.readWhole!(digest, data.length + 1) },
    ]);
    for (const { data, got } of asked) {
      const whole = await got;
      if (whole) assertEquals(whole, data);
    }
  });

  test("writeWholeBlob stores what a writer would, at every size around one chunk", async (s) => {
    // Through writeWhole where the backend has it, else through a writer.
    const sizes = [0, 1, 4096, SINGLE_CHUNK_MAX - 1, SINGLE_CHUNK_MAX, SINGLE_CHUNK_MAX + 1];
    const all = sizes.map((n, i) => F.pseudoRandom(n, 100 + i));
    // Text-like ones too: raw and compressed chunks alike.
    all.push(...sizes.map((n) => new Uint8Array(n).fill(0x61)));
    // Copies: the backend may take a buffer spanning its whole ArrayBuffer.
    const digests = await Promise.all(all.map((data) => writeWholeBlob(s, data.slice())));
    for (const [i, data] of all.entries()) {
      assertEquals(digests[i], blake3(data), `blob ${i} (${data.length} B): its digest`);
      await checkStoredBlob(s, data, digests[i]);
    }
    // Again, now stored: the same digests.
    assertEquals(await Promise.all(all.map((d) => writeWholeBlob(s, d.slice()))), digests);
  });

  test("put, has, get the empty blob", async (s) => {
    const writer = s.openWrite();
    assertEquals(await writer.close(), F.EMPTY_BLOB_DIGEST);
    assert(await s.has(F.EMPTY_BLOB_DIGEST), "empty blob present");
    assertEquals(await readBlob(s, F.EMPTY_BLOB_DIGEST), new Uint8Array(0));
  });

  test("write piece sizes do not change the digest or contents", async (s) => {
    // Tiny pieces on a small blob only: over a network each write is a message.
    const small = F.BLOB_B.subarray(0, 3000);
    const smallDigest = await putBlob(s, small);
    for (const piece of [1, 7, 1000]) assertEquals(await putBlob(s, small, piece), smallDigest);
    await checkStoredBlob(s, small, smallDigest);
    for (const piece of [4096, 100_000, F.BLOB_B.length]) {
      assertEquals(await putBlob(s, F.BLOB_B, piece), F.BLOB_B_DIGEST);
    }
    const writer = s.openWrite();
    await writer.write(new Uint8Array(0));
    await writer.write(F.BLOB_A);
    await writer.write(new Uint8Array(0));
    assertEquals(await writer.close(), F.BLOB_A_DIGEST);
    await checkStoredBlob(s, F.BLOB_B, F.BLOB_B_DIGEST);
  });

  test("putting an existing blob again succeeds", async (s) => {
    assertEquals(await putBlob(s, F.BLOB_A), F.BLOB_A_DIGEST);
    assertEquals(await putBlob(s, F.BLOB_A), F.BLOB_A_DIGEST);
    await checkStoredBlob(s, F.BLOB_A, F.BLOB_A_DIGEST);
  });

  test("the caller may reuse its buffer after write resolves", async (s) => {
    const writer = s.openWrite();
    const buf = new Uint8Array(4096);
    for (let pos = 0; pos < F.BLOB_B.length; pos += buf.length) {
      buf.set(F.BLOB_B.subarray(pos, pos + buf.length));
      await writer.write(buf.subarray(0, Math.min(buf.length, F.BLOB_B.length - pos)));
      buf.fill(0xaa);
    }
    assertEquals(await writer.close(), F.BLOB_B_DIGEST);
    await checkStoredBlob(s, F.BLOB_B, F.BLOB_B_DIGEST);
  });

  test("interleaved writers do not mix", async (s) => {
    const w1 = s.openWrite();
    const w2 = s.openWrite();
    for (let pos = 0; pos < F.BLOB_B.length; pos += 100_000) {
      await w1.write(F.BLOB_B.subarray(pos, pos + 100_000));
      if (pos === 0) await w2.write(F.HELLOWORLD_BLOB_CONTENTS.subarray(0, 5));
    }
    await w2.write(F.HELLOWORLD_BLOB_CONTENTS.subarray(5));
    assertEquals(await w2.close(), F.HELLOWORLD_BLOB_DIGEST);
    assertEquals(await w1.close(), F.BLOB_B_DIGEST);
    await checkStoredBlob(s, F.BLOB_B, F.BLOB_B_DIGEST);
    await checkStoredBlob(s, F.HELLOWORLD_BLOB_CONTENTS, F.HELLOWORLD_BLOB_DIGEST);
  });

  test("reading from an offset", async (s) => {
    await putBlob(s, F.BLOB_B);
    const len = F.BLOB_B.length;
    for (const offset of [0, 10, 4096, 12_345, 524_288, len - 1]) {
      const read = await readBlob(s, F.BLOB_B_DIGEST, offset);
      assert(read !== undefined, "readable");
      assert(bytesEqual(read, F.BLOB_B.subarray(offset)), `contents from offset ${offset}`);
    }
    assertEquals(await readBlob(s, F.BLOB_B_DIGEST, len), new Uint8Array(0));
    // Past the end: an error or no data are both acceptable.
    try {
      const past = await readBlob(s, F.BLOB_B_DIGEST, len + 10);
      assertEquals(past?.length ?? 0, 0);
    } catch (err) {
      assert(err instanceof Error, "an Error");
    }
    await putBlob(s, F.BLOB_A);
    assertEquals(await readBlob(s, F.BLOB_A_DIGEST, 1), new Uint8Array([0x01]));
  });

  test("stopping a read early releases the reader", async (s) => {
    await putBlob(s, F.BLOB_B);
    const reader = await s.openRead(F.BLOB_B_DIGEST);
    assert(reader !== undefined, "readable");
    let seen = 0;
    for await (const piece of reader) {
      seen += piece.length;
      break;
    }
    assert(seen > 0, "got a first piece");
    // The service still works after the abandoned read.
    assertEquals((await readBlob(s, F.BLOB_B_DIGEST))?.length, F.BLOB_B.length);
  });

  test("closing twice returns the same digest", async (s) => {
    const writer = s.openWrite();
    await writer.write(F.BLOB_A);
    const first = await writer.close();
    assertEquals(first, F.BLOB_A_DIGEST);
    assertEquals(await writer.close(), first);
  });

  test("writing after close fails", async (s) => {
    const writer = s.openWrite();
    await writer.write(F.BLOB_A);
    await writer.close();
    await assertRejects(() => writer.write(F.BLOB_A));
    // The stored blob is unaffected.
    assertEquals(await readBlob(s, F.BLOB_A_DIGEST), F.BLOB_A);
  });

  test("abort stores nothing", async (s) => {
    const writer = s.openWrite();
    await writer.write(F.BLOB_B);
    await writer.abort();
    assertEquals(await s.has(F.BLOB_B_DIGEST), false);
    assertEquals(await s.openRead(F.BLOB_B_DIGEST), undefined);
    assertEquals(await s.chunks(F.BLOB_B_DIGEST), undefined);
  });
}
