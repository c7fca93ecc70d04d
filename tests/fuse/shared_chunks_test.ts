/** The chunk cache shared by FUSE Workers: hits, waiting for a fill, eviction, limits. */
import { assert, assertEquals } from "../assert.ts";
import { blake3 } from "../../src/castore/digest.ts";
import { SHARED_CACHE_WAYS as W, SharedChunkCache } from "../../src/fuse/shared_chunks.ts";

const bytes = (n: number, seed: number) =>
  Uint8Array.from({ length: n }, (_, i) => (i * seed) & 0xff);

Deno.test("shared chunks: miss, fill, hit returns a private copy", () => {
  const cache = SharedChunkCache.create(1 << 20, 4096);
  const data = bytes(1000, 7);
  const digest = blake3(data);
  assertEquals(cache.lookup(digest), undefined);
  const claim = cache.claim(digest, data.length)!;
  claim.fill(data);
  const hit = cache.lookup(digest);
  assert(hit instanceof Uint8Array);
  assertEquals(hit, data);
  hit[0] ^= 0xff; // a copy: the cached bytes stay intact
  assertEquals(SharedChunkCache.attach(cache.buffer).lookup(digest), data);
});

Deno.test("shared chunks: a lookup during a fill waits for it", async () => {
  const cache = SharedChunkCache.create(1 << 20, 4096);
  const data = bytes(300, 3);
  const digest = blake3(data);
  const claim = cache.claim(digest, data.length)!;
  const pending = cache.lookup(digest);
  assert(pending instanceof Promise);
  setTimeout(() => claim.fill(data), 10);
  await pending;
  assertEquals(cache.lookup(digest), data);
});

Deno.test("shared chunks: a slot filled in place is invisible until committed", async () => {
  const cache = SharedChunkCache.create(1 << 20, 4096);
  const data = bytes(3000, 5);
  const digest = blake3(data);
  const claim = cache.claim(digest, data.length)!;
  assertEquals(claim.slot.length, data.length);
  assert(claim.slot.buffer === cache.buffer, "the slot is the shared memory itself");
  claim.slot.set(data.subarray(0, 1000)); // half written: others must wait, not see it
  const pending = cache.borrow(digest);
  assert(pending instanceof Promise);
  claim.slot.set(data.subarray(1000), 1000);
  claim.commit();
  await pending;
  assertEquals(cache.lookup(digest), data);

  // Written, then found bad and abandoned: a miss, never the written bytes.
  const other = bytes(2000, 9);
  const bad = cache.claim(blake3(other), other.length)!;
  bad.slot.set(other);
  bad.abandon();
  assertEquals(cache.lookup(blake3(other)), undefined);
});

Deno.test("shared chunks: abandoned fills and oversized chunks are misses", () => {
  const cache = SharedChunkCache.create(1 << 20, 4096);
  const digest = blake3(bytes(10, 1));
  cache.claim(digest, 10)!.abandon();
  assertEquals(cache.lookup(digest), undefined);
  assertEquals(cache.claim(blake3(bytes(5000, 1)), 5000), undefined);
});

Deno.test("shared chunks: a full set evicts its least recently used slot", () => {
  // W slots = one set: chunk W+1 replaces the oldest.
  const cache = SharedChunkCache.create(W * 4096, 4096);
  const chunks = Array.from({ length: W + 1 }, (_, i) => bytes(100, i + 1));
  for (const c of chunks.slice(0, W)) cache.claim(blake3(c), c.length)!.fill(c);
  for (const c of chunks.slice(1, W)) assertEquals(cache.lookup(blake3(c)), c); // touch all but the first
  cache.claim(blake3(chunks[W]), 100)!.fill(chunks[W]);
  assertEquals(cache.lookup(blake3(chunks[0])), undefined);
  for (const c of chunks.slice(1)) assertEquals(cache.lookup(blake3(c)), c);
});

Deno.test("shared chunks: borrowed bytes are not overwritten until released", () => {
  // One set of W slots, all full: claim W+1 must evict, but not a pinned slot.
  const cache = SharedChunkCache.create(W * 4096, 4096);
  const chunks = Array.from({ length: W + 2 }, (_, i) => bytes(100, i + 1));
  for (const c of chunks.slice(0, W)) cache.claim(blake3(c), c.length)!.fill(c);
  const b = cache.borrow(blake3(chunks[0]));
  assert(b && !(b instanceof Promise));
  assertEquals(b.bytes, chunks[0]);
  assert(b.bytes.buffer instanceof SharedArrayBuffer, "a view into the cache, not a copy");
  // chunks[0] is the least recently used of the others but for its pin.
  for (const c of chunks.slice(1, W)) assertEquals(cache.lookup(blake3(c)), c);
  cache.claim(blake3(chunks[W]), 100)!.fill(chunks[W]);
  assertEquals(b.bytes, chunks[0]);
  assert(cache.has(blake3(chunks[0])));
  assertEquals(cache.lookup(blake3(chunks[1])), undefined); // evicted instead
  b.release();
  b.release(); // idempotent
  // Unpinned and now the oldest: the next claim may take it.
  for (const c of chunks.slice(2, W + 1)) cache.lookup(blake3(c));
  cache.claim(blake3(chunks[W + 1]), 100)!.fill(chunks[W + 1]);
  assertEquals(cache.lookup(blake3(chunks[0])), undefined);
  assertEquals(cache.borrow(blake3(chunks[0])), undefined);
});

Deno.test("shared chunks: sized by typical chunk, not by slot", () => {
  // 1 MiB of 1 KiB-typical chunks in 4 KiB slots: 1024 slots, so 1024 small chunks fit.
  const cache = SharedChunkCache.create(1 << 20, 4096, 1024);
  const chunks = Array.from({ length: 512 }, (_, i) => bytes(1024, i + 1));
  for (const c of chunks) cache.claim(blake3(c), c.length)?.fill(c);
  const hits = chunks.filter((c) => cache.lookup(blake3(c)) instanceof Uint8Array).length;
  assert(hits > 480, `only ${hits} of 512 cached`);
});
