import { assertEquals, assertThrows } from "./assert.ts";
import { TurnBatch } from "../src/turn_batch.ts";

/** Lets every pending microtask, immediate and timer of this turn run. */
const settle = () => new Promise((r) => setTimeout(r, 0));

/** Resolves after `n` microtask hops, like a chain of `n` awaits. */
async function hops(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await Promise.resolve();
}

Deno.test("TurnBatch: one synchronous run is one batch, at the next microtask checkpoint", async () => {
  const batches: number[][] = [];
  const batch = new TurnBatch<number>((items) => batches.push(items));
  for (let i = 0; i < 5; i++) batch.add(i);
  assertEquals(batch.size, 5);
  assertEquals(batches, []);
  await Promise.resolve();
  assertEquals(batches, [[0, 1, 2, 3, 4]]);
  assertEquals(batch.size, 0);
  batch.add(5);
  await settle();
  assertEquals(batches, [[0, 1, 2, 3, 4], [5]]);
});

Deno.test("TurnBatch: with setImmediate, requests at different depths of promise chains meet", async () => {
  const batches: number[][] = [];
  const micro = new TurnBatch<number>((items) => batches.push(items));
  const immediate = new TurnBatch<number>((items) => batches.push(items), setImmediate);
  // Each request is made after its own number of awaits, as uploads of one
  // burst reach their chunk lookups.
  await Promise.all([0, 1, 2, 3].map(async (i) => {
    await hops(i * 3);
    micro.add(i);
  }));
  await settle();
  assertEquals(batches.length, 4, `one batch per depth, got ${JSON.stringify(batches)}`);
  batches.length = 0;
  await Promise.all([0, 1, 2, 3].map(async (i) => {
    await hops(i * 3);
    immediate.add(i);
  }));
  await settle();
  assertEquals(batches, [[0, 1, 2, 3]]);
});

Deno.test("TurnBatch: flush hands over at once; later items form the next batch; never an empty one", async () => {
  const batches: string[][] = [];
  const batch = new TurnBatch<string>((items) => batches.push(items), setImmediate);
  batch.add("a");
  batch.add("b");
  batch.flush();
  assertEquals(batches, [["a", "b"]]);
  batch.flush(); // nothing gathered: nothing handed over
  batch.add("c");
  await settle();
  assertEquals(batches, [["a", "b"], ["c"]]);
  // Flushed before its scheduled hand-over, which then finds nothing.
  batch.add("d");
  batch.flush();
  await settle();
  assertEquals(batches, [["a", "b"], ["c"], ["d"]]);
});

Deno.test("TurnBatch: a throwing consumer throws from flush, and the next batch still goes out", async () => {
  const batches: number[][] = [];
  let fail = true;
  const batch = new TurnBatch<number>((items) => {
    if (fail) throw new Error("consumer failed");
    batches.push(items);
  });
  batch.add(1);
  assertThrows(() => batch.flush(), Error, "consumer failed");
  fail = false;
  batch.add(2);
  await Promise.resolve();
  assertEquals(batches, [[2]]);
});
