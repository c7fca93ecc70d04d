/**
 * The choice garbage collection's policies make (docs/gc.md#policies), on
 * reference graphs where the closure rule and the LRU order pull in
 * different directions: victims never include a path a kept path refers
 * to, and come referrers first.
 */
import { assert, assertEquals } from "../assert.ts";
import { choosePolicyVictims, type PolicyPath } from "../../src/store/gc_policy.ts";

const NOW = 1_000_000_000;

/** A path `key` accessed `ageMs` ago, referring to `references`, holding one blob of `size` bytes. */
function path(key: string, ageMs: number, references: string[] = [], size = 100): PolicyPath {
  return { key, references, accessedMs: NOW - ageMs, blobs: new Map([[`blob-${key}`, size]]) };
}

/** Every kept path's references are kept, and each victim comes before what it refers to. */
function checkClosure(paths: PolicyPath[], victims: string[]): void {
  const gone = new Set(victims);
  for (const p of paths) {
    if (gone.has(p.key)) continue;
    for (const r of p.references) assert(!gone.has(r), `${p.key} is kept but ${r} goes`);
  }
  for (const [i, v] of victims.entries()) {
    const referrers = paths.filter((p) => p.references.includes(v) && p.key !== v);
    for (const r of referrers) {
      const j = victims.indexOf(r.key);
      assert(j >= 0 && j < i, `${v} goes before its referrer ${r.key}`);
    }
  }
}

Deno.test("--older-than: old paths go, referrers first; an old path a recent one refers to stays", () => {
  const paths = [
    path("app", 10, ["lib"]), // recent
    path("lib", 5000, ["libc"]), // old, but app refers to it
    path("libc", 5000),
    path("tool", 5000, ["toollib", "tool"]), // old, refers to itself
    path("toollib", 5000, ["libc"]),
    path("fresh", 0),
  ];
  const { victims } = choosePolicyVictims(paths, { olderThanMs: 1000, nowMs: NOW });
  assertEquals([...victims].sort(), ["tool", "toollib"]);
  checkClosure(paths, victims);
});

Deno.test("--max-size: least recently used first, but never before its referrers; stops once under", () => {
  const paths = [
    path("dep", 900, [], 300), // least recently used, held by app
    path("app", 100, ["dep"], 100),
    path("old", 800, [], 200),
    path("mid", 500, [], 200),
    path("new", 10, [], 200),
  ];
  const choice = choosePolicyVictims(paths, { maxSizeBytes: 400, nowMs: NOW });
  // old (800) goes first; dep is older but app still refers to it, so mid
  // (500) is next, then app (100), still over; that frees dep, which goes
  // before new: 1000 → 200.
  assertEquals(choice.victims, ["old", "mid", "app", "dep"]);
  assertEquals([choice.sizeBefore, choice.sizeAfter], [1000, 200]);
  checkClosure(paths, choice.victims);
});

Deno.test("--max-size counts a blob several paths share once, and frees it with the last of them", () => {
  const shared = new Map([["blob-shared", 1000]]);
  const paths: PolicyPath[] = [
    { key: "a", references: [], accessedMs: NOW - 30, blobs: shared },
    { key: "b", references: [], accessedMs: NOW - 20, blobs: shared },
    { key: "c", references: [], accessedMs: NOW - 10, blobs: new Map([["blob-c", 10]]) },
  ];
  const choice = choosePolicyVictims(paths, { maxSizeBytes: 500, nowMs: NOW });
  assertEquals(choice.victims, ["a", "b"]);
  assertEquals([choice.sizeBefore, choice.sizeAfter], [1010, 10]);
});

Deno.test("both policies: --older-than first, then --max-size over what is left", () => {
  const paths = [path("x", 5000), path("y", 50), path("z", 10)];
  const choice = choosePolicyVictims(paths, { olderThanMs: 1000, maxSizeBytes: 100, nowMs: NOW });
  assertEquals(choice.victims, ["x", "y"]);
  assertEquals([choice.sizeBefore, choice.sizeAfter], [200, 100]);
});
