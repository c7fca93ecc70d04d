import { assertEquals } from "../assert.ts";
import { readRuns } from "../../src/castore/blob/read_runs.ts";

const span = (pack: number, offset: number, length: number) => ({ pack, offset, length });

Deno.test("read_runs: neighbours within the gap merge; other packs, far records and long runs do not", () => {
  const a = span(1, 56, 100); // header gap of 48 to the next
  const b = span(1, 204, 50);
  const c = span(1, 10_000, 10); // too far from b
  const d = span(2, 60, 10); // another pack
  const e = span(1, 10_058, 5000); // next to c, but the run would pass maxRun
  const runs = readRuns([e, d, c, b, a], 1000, 4096);
  assertEquals(runs.map((r) => [r.pack, r.offset, r.length, r.members]), [
    [1, 56, 198, [a, b]],
    [1, 10_000, 10, [c]],
    [1, 10_058, 5000, [e]],
    [2, 60, 10, [d]],
  ]);
});

Deno.test("read_runs: the same record twice is read once", () => {
  const a = span(3, 100, 40);
  const a2 = span(3, 100, 40);
  const runs = readRuns([a, a2], 0, 1 << 20);
  assertEquals(runs.length, 1);
  assertEquals([runs[0].offset, runs[0].length, runs[0].members.length], [100, 40, 2]);
});
