import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { ByteBudget, JobSet, mapLimit, Semaphore } from "../src/concurrency.ts";

/** A promise with its resolve/reject exposed, to drive jobs by hand. */
function gate<T = void>() {
  return Promise.withResolvers<T>();
}

/** Lets every pending microtask and timer of this turn run. */
const settle = () => new Promise((r) => setTimeout(r, 0));

Deno.test("Semaphore: at most n holders, served in arrival order", async () => {
  const sem = new Semaphore(2);
  const order: number[] = [];
  let active = 0;
  let peak = 0;
  const gates = [gate(), gate(), gate(), gate()];
  const runs = gates.map((g, i) =>
    sem.run(async () => {
      active++;
      peak = Math.max(peak, active);
      order.push(i);
      await g.promise;
      active--;
    })
  );
  await settle();
  assertEquals(order, [0, 1]);
  assertEquals(sem.waiting, 2);
  gates[1].resolve();
  await settle();
  assertEquals(order, [0, 1, 2]);
  gates[0].resolve();
  gates[2].resolve();
  gates[3].resolve();
  await Promise.all(runs);
  assertEquals(order, [0, 1, 2, 3]);
  assertEquals(peak, 2);
  assertEquals(sem.free, 2);
});

Deno.test("Semaphore: a permit released twice counts once; a throwing job releases", async () => {
  const sem = new Semaphore(1);
  const release = await sem.acquire();
  release();
  release();
  assertEquals(sem.free, 1);
  await assertRejects(() => sem.run(() => Promise.reject(new Error("boom"))), Error, "boom");
  assertEquals(sem.free, 1);
});

Deno.test("JobSet: bounded in count; add waits for room", async () => {
  const set = new JobSet({ maxJobs: 2 });
  const gates = [gate(), gate(), gate()];
  await set.add(() => gates[0].promise);
  await set.add(() => gates[1].promise);
  let third = false;
  const adding = set.add(() => gates[2].promise).then(() => (third = true));
  await settle();
  assert(!third, "a third job started while two ran");
  assertEquals(set.size, 2);
  gates[0].resolve();
  await adding;
  assert(third);
  gates[1].resolve();
  gates[2].resolve();
  await set.drain();
  assertEquals(set.size, 0);
});

Deno.test("JobSet: bounded in weight, but a job heavier than the bound runs alone", async () => {
  const set = new JobSet({ maxJobs: 10, maxWeight: 100 });
  const a = gate();
  await set.add(() => a.promise, 60);
  let started = false;
  const adding = set.add(() => {
    started = true;
    return Promise.resolve();
  }, 50);
  await settle();
  assert(!started, "60 + 50 exceeds 100");
  a.resolve();
  await adding;
  await settle();
  assert(started);
  // Heavier than the bound: waits for an empty set, then runs.
  await set.add(() => Promise.resolve(), 500);
  await set.drain();
});

Deno.test("JobSet: the first failure sticks and is reported mapped", async () => {
  const set = new JobSet({ maxJobs: 4, mapError: (e) => new Error(`mapped: ${e}`) });
  const slow = gate();
  await set.add(() => slow.promise);
  await set.add(() => Promise.reject("first"));
  await set.add(() => Promise.reject("second")).catch(() => {});
  await settle();
  assertThrows(() => set.check(), Error, "mapped: first");
  await assertRejects(() => set.add(() => Promise.resolve()), Error, "mapped: first");
  slow.resolve();
  await assertRejects(() => set.drain(), Error, "mapped: first");
});

Deno.test("JobSet: a throwing mapError still ends the job and fails the set", async () => {
  const set = new JobSet({
    maxJobs: 1,
    mapError: () => {
      throw new Error("mapper broke");
    },
  });
  await set.add(() => Promise.reject(new Error("job failed")));
  await settle();
  // The job no longer counts as running, and its own error is what sticks.
  assertEquals(set.size, 0);
  await assertRejects(() => set.drain(), Error, "job failed");
});

Deno.test("JobSet: the job has started when add resolves; a synchronous throw is its failure", async () => {
  const set = new JobSet({ maxJobs: 1 });
  let started = false;
  await set.add(() => {
    started = true;
    return Promise.resolve();
  });
  assert(started, "add resolved before calling the job");
  await set.drain();
  await set.add(() => {
    throw new Error("sync");
  });
  await assertRejects(() => set.drain(), Error, "sync");
});

Deno.test("mapLimit: results in item order with at most n pending", async () => {
  let active = 0;
  let peak = 0;
  const out = await mapLimit([5, 1, 4, 2, 3], 2, async (ms, i) => {
    active++;
    peak = Math.max(peak, active);
    await new Promise((r) => setTimeout(r, ms));
    active--;
    return `${i}:${ms}`;
  });
  assertEquals(out, ["0:5", "1:1", "2:4", "3:2", "4:3"]);
  assertEquals(peak, 2);
  assertEquals(await mapLimit([], 3, () => Promise.resolve(1)), []);
});

Deno.test("mapLimit: a failure stops new calls and waits for those running", async () => {
  const started: number[] = [];
  let finished = 0;
  await assertRejects(
    () =>
      mapLimit([0, 1, 2, 3, 4, 5], 2, async (i) => {
        started.push(i);
        await new Promise((r) => setTimeout(r, 5));
        finished++;
        if (i === 1) throw new Error("item 1");
      }),
    Error,
    "item 1",
  );
  // Items 0 and 1 run together; item 2 may start in lane 0 before item 1 fails.
  assert(started.length <= 3, `started ${started}`);
  assertEquals(finished, started.length, "a call was left running");
});

Deno.test("ByteBudget: takes only what is free, never waits, and counts what is given back", () => {
  const budget = new ByteBudget(100);
  assert(budget.tryTake(60));
  assertEquals(budget.tryTake(50), false, "more than is free");
  assert(budget.tryTake(40));
  assertEquals(budget.inUse, 100);
  budget.give(60);
  assertEquals(budget.inUse, 40);
  assert(budget.tryTake(60));
  budget.give(100);
  assertEquals(budget.inUse, 0);
  assert(budget.tryTake(0), "nothing is always free");
  assertEquals(new ByteBudget(0).tryTake(1), false);
});

Deno.test("Semaphore: a shrink waits for holders to finish, a growth wakes waiters", async () => {
  const sem = new Semaphore(4);
  const held = await Promise.all([sem.acquire(), sem.acquire(), sem.acquire(), sem.acquire()]);
  const woken: number[] = [];
  const waiters = [0, 1, 2].map((i) => sem.acquire().then((release) => (woken.push(i), release)));
  sem.permits = 2;
  assertEquals(sem.permits, 2);
  assertEquals(sem.free, -2);
  // Two releases pay back the shrink; only the third hands a permit on.
  held[0]();
  held[1]();
  await settle();
  assertEquals(woken, []);
  held[2]();
  await settle();
  assertEquals(woken, [0]);
  sem.permits = 4;
  await settle();
  assertEquals(woken, [0, 1, 2]);
  assertEquals(sem.free, 0);
  for (const release of [held[3], ...await Promise.all(waiters)]) release();
  assertEquals(sem.free, 4);
  sem.permits = 0;
  assertEquals(sem.permits, 1, "never below one");
});
