/** `src/loading_cache.ts`: bounds, recency, shared loads. */
import { assert, assertEquals } from "./assert.ts";
import { LoadingCache } from "../src/loading_cache.ts";

Deno.test("loading cache: concurrent fetches of one key share one load", async () => {
  const cache = new LoadingCache<string, number>(10);
  let loads = 0;
  const load = () => new Promise<number>((r) => setTimeout(() => r(++loads), 5));
  const [a, b] = await Promise.all([cache.fetch("k", load), cache.fetch("k", load)]);
  assertEquals([a, b, loads], [1, 1, 1]);
  assertEquals(cache.loading, 0);
  assertEquals(await cache.fetch("k", load), 1, "then it is cached");
});

Deno.test("loading cache: bounded by weight, least recently used first", () => {
  const cache = new LoadingCache<string, Uint8Array>(10, (b) => b.length);
  cache.set("a", new Uint8Array(4));
  cache.set("b", new Uint8Array(4));
  assert(cache.get("a"), "touch a: b is now the oldest");
  cache.set("c", new Uint8Array(4));
  assertEquals(cache.get("b"), undefined);
  assert(cache.get("a") && cache.get("c"));
  cache.set("huge", new Uint8Array(11));
  assertEquals(cache.get("huge"), undefined, "larger than the whole cache: not kept");
  assertEquals(cache.size, 2, "and nothing was dropped for it");
});

Deno.test("loading cache: a load that yields undefined or fails caches nothing", async () => {
  const cache = new LoadingCache<string, number>(10);
  assertEquals(await cache.fetch("k", () => Promise.resolve(undefined)), undefined);
  assert(!cache.has("k"));
  let failed = false;
  await cache.fetch("k", () => Promise.reject(new Error("boom"))).catch(() => (failed = true));
  assert(failed && !cache.has("k"));
  assertEquals(await cache.fetch("k", () => Promise.resolve(7)), 7);
});

Deno.test("loading cache: delete forgets a value and its weight", async () => {
  const cache = new LoadingCache<string, Uint8Array>(8, (b) => b.length);
  cache.set("a", new Uint8Array(4));
  cache.set("b", new Uint8Array(4));
  cache.delete("a");
  cache.delete("missing");
  assertEquals([cache.get("a"), cache.size], [undefined, 1]);
  cache.set("c", new Uint8Array(4));
  assert(cache.get("b") && cache.get("c"), "the freed weight is usable: nothing was dropped");
  assertEquals((await cache.fetch("a", () => Promise.resolve(new Uint8Array(1)))).length, 1);
});
