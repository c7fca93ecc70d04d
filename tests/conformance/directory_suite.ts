/**
 * DirectoryService conformance suite (docs/architecture.md#the-three-services,
 * docs/compatibility.md#directory-closures): the same cases run
 * against every backend. A backend's test file calls
 * {@linkcode directoryServiceConformance} with a factory for fresh services.
 *
 * @module
 */
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { b3Display, type Digest, digestKey } from "../../src/castore/digest.ts";
import { type Directory, directoryDigest, directorySize } from "../../src/castore/directory.ts";
import { DownloadValidator } from "../../src/castore/directory/closure.ts";
import type { DirectoryService } from "../../src/castore/directory/service.ts";
import * as F from "../fixtures.ts";
import { collect, fails, type ServiceFactory, withService } from "./harness.ts";

const { b } = F;

/** What a backend cannot do, so the suite checks only what it promises. */
export interface DirectorySuiteOptions {
  /**
   * `get` only finds directories that were the root of an upload (object
   * store); intermediate ones are reachable through `getRecursive` only.
   */
  onlyRootsRetrievable?: boolean;
}

const A = directoryDigest(F.DIRECTORY_A);
const B = directoryDigest(F.DIRECTORY_B);
const C = directoryDigest(F.DIRECTORY_C);

/** Multi-puts `dirs` and returns the root digest from close. */
export async function putAll(service: DirectoryService, dirs: Directory[]): Promise<Digest> {
  const putter = service.putMultiple();
  for (const d of dirs) await putter.put(d);
  return await putter.close();
}

/** Whether the multi-put of `dirs` fails, at a put or at close. */
function putAllFails(service: DirectoryService, dirs: Directory[]): Promise<boolean> {
  return fails(() => putAll(service, dirs));
}

function dirNode(name: string, child: Directory, size = directorySize(child)) {
  return { name: b(name), digest: directoryDigest(child), size };
}

/** A directory with the given subdirectories (names must be sorted). */
function parentOf(...children: [string, Directory][]): Directory {
  return {
    directories: children.map(([name, d]) => dirNode(name, d)),
    files: [],
    symlinks: [],
  };
}

/** A symlink-only directory, to get many distinct leaves. */
function leaf(i: number): Directory {
  return { directories: [], files: [], symlinks: [{ name: b("l"), target: b(`target-${i}`) }] };
}

/** Checks a recursive get: root first, breadth-first levels, each once, exactly `expected`. */
function checkClosure(root: Digest, got: Directory[], expected: Directory[]): void {
  assert(got.length > 0, `closure of ${b3Display(root)} is empty`);
  assertEquals(directoryDigest(got[0]), root);
  const keys = got.map((d) => digestKey(directoryDigest(d)));
  assertEquals(new Set(keys).size, keys.length, "each directory once");
  assertEquals(
    [...keys].sort(),
    expected.map((d) => digestKey(directoryDigest(d))).sort(),
    "the whole closure",
  );
  const validator = new DownloadValidator(root);
  for (const d of got) assert(validator.add(d), "root-to-leaves order");
  validator.finish();
  // Breadth-first: depth (shortest distance from the root) never decreases.
  const depth = new Map([[keys[0], 0]]);
  let last = 0;
  for (let i = 0; i < got.length; i++) {
    const own = depth.get(keys[i]);
    assert(own !== undefined && own >= last, "breadth-first order");
    last = own;
    for (const child of got[i].directories) {
      const key = digestKey(child.digest);
      if (!depth.has(key)) depth.set(key, own + 1);
    }
  }
}

/** Registers the DirectoryService conformance cases, each on a fresh service from `factory`. */
export function directoryServiceConformance(
  label: string,
  factory: ServiceFactory<DirectoryService>,
  options: DirectorySuiteOptions = {},
): void {
  const test = (name: string, fn: (s: DirectoryService) => Promise<void>) =>
    Deno.test(`${label}: directory ${name}`, () => withService(factory, fn));
  const intermediatesVisible = !options.onlyRootsRetrievable;

  test("get nonexistent is absent", async (s) => {
    assertEquals(await s.get(A), undefined);
    assertEquals(await s.get(F.DUMMY_DIGEST), undefined);
  });

  test("recursive get of a missing root is empty", async (s) => {
    assertEquals(await collect(s.getRecursive(C)), []);
  });

  test("put, get", async (s) => {
    assertEquals(await s.put(F.DIRECTORY_A), A);
    assertEquals(await s.get(A), F.DIRECTORY_A);
    assertEquals(await collect(s.getRecursive(A)), [F.DIRECTORY_A]);
    await s.put(F.DIRECTORY_WITH_KEEP);
    assertEquals(await s.get(directoryDigest(F.DIRECTORY_WITH_KEEP)), F.DIRECTORY_WITH_KEEP);
  });

  test("putting the same directory again succeeds", async (s) => {
    assertEquals(await s.put(F.DIRECTORY_A), A);
    assertEquals(await s.put(F.DIRECTORY_A), A);
    assertEquals(await putAll(s, [F.DIRECTORY_A, F.DIRECTORY_C]), C);
    assertEquals(await putAll(s, [F.DIRECTORY_A, F.DIRECTORY_C]), C);
    checkClosure(C, await collect(s.getRecursive(C)), [F.DIRECTORY_C, F.DIRECTORY_A]);
  });

  test("multi-put, get", async (s) => {
    assertEquals(await putAll(s, [F.DIRECTORY_A, F.DIRECTORY_C]), C);
    assertEquals(await s.get(C), F.DIRECTORY_C);
    assertEquals(await collect(s.getRecursive(C)), [F.DIRECTORY_C, F.DIRECTORY_A]);
    if (intermediatesVisible) assertEquals(await s.get(A), F.DIRECTORY_A);
  });

  test("multi-put deduplicates", async (s) => {
    assertEquals(await putAll(s, [F.DIRECTORY_A, F.DIRECTORY_A, F.DIRECTORY_C]), C);
    assertEquals(await collect(s.getRecursive(C)), [F.DIRECTORY_C, F.DIRECTORY_A]);
  });

  test("multi-put of the fixture tree", async (s) => {
    const root = directoryDigest(F.DIRECTORY_COMPLICATED);
    assertEquals(await putAll(s, [F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]), root);
    assertEquals(await collect(s.getRecursive(root)), [
      F.DIRECTORY_COMPLICATED,
      F.DIRECTORY_WITH_KEEP,
    ]);
  });

  test("recursive get is breadth-first, root first, each directory once", async (s) => {
    // root → p, q; p → a(A), k(WITH_KEEP); q → a(A), c(C); C → A twice.
    const p = parentOf(["a", F.DIRECTORY_A], ["k", F.DIRECTORY_WITH_KEEP]);
    const q = parentOf(["a", F.DIRECTORY_A], ["c", F.DIRECTORY_C]);
    const root = parentOf(["p", p], ["q", q]);
    const all = [F.DIRECTORY_A, F.DIRECTORY_WITH_KEEP, p, F.DIRECTORY_C, q, root];
    const rootDigest = directoryDigest(root);
    assertEquals(await putAll(s, all), rootDigest);
    checkClosure(rootDigest, await collect(s.getRecursive(rootDigest)), all);
    if (intermediatesVisible) {
      const qDigest = directoryDigest(q);
      assertEquals(await s.get(qDigest), q);
      checkClosure(qDigest, await collect(s.getRecursive(qDigest)), [
        q,
        F.DIRECTORY_A,
        F.DIRECTORY_C,
      ]);
    }
  });

  test("a wide closure in one upload", async (s) => {
    const leaves = Array.from({ length: 300 }, (_, i) => leaf(i));
    const mid = Array.from({ length: 10 }, (_, m) => ({
      directories: leaves.slice(m * 30, m * 30 + 30).map((l, i) =>
        dirNode(`d${String(i).padStart(3, "0")}`, l)
      ),
      files: [],
      symlinks: [],
    }));
    const root = parentOf(...mid.map((d, i): [string, Directory] => [`m${i}`, d]));
    const all = [...leaves, ...mid, root];
    const rootDigest = directoryDigest(root);
    assertEquals(await putAll(s, all), rootDigest);
    checkClosure(rootDigest, await collect(s.getRecursive(rootDigest)), all);
  });

  test("stopping a recursive get early is fine", async (s) => {
    await putAll(s, [F.DIRECTORY_A, F.DIRECTORY_C]);
    for await (const d of s.getRecursive(C)) {
      assertEquals(d, F.DIRECTORY_C);
      break;
    }
    assertEquals(await collect(s.getRecursive(C)), [F.DIRECTORY_C, F.DIRECTORY_A]);
  });

  test("closing an empty multi-put fails", async (s) => {
    await assertRejects(() => s.putMultiple().close());
  });

  test("reject unconnected closure, store nothing", async (s) => {
    assert(await putAllFails(s, [F.DIRECTORY_A, F.DIRECTORY_C, F.DIRECTORY_B]), "must fail");
    assertEquals(await s.get(B), undefined);
    assertEquals(await s.get(C), undefined);
    assertEquals(await s.get(A), undefined);
    assertEquals(await collect(s.getRecursive(C)), []);
    assertEquals(await collect(s.getRecursive(B)), []);
  });

  test("reject dangling reference in a multi-put", async (s) => {
    assertEquals(await s.put(F.DIRECTORY_A), A);
    assert(await putAllFails(s, [F.DIRECTORY_B]), "must fail");
    assertEquals(await s.get(B), undefined);
    assertEquals(await collect(s.getRecursive(B)), []);
  });

  test("reject a single put whose child is missing", async (s) => {
    await assertRejects(() => s.put(F.DIRECTORY_B));
    assertEquals(await s.get(B), undefined);
  });

  test("reject failing validation", async (s) => {
    const invalid: Directory = {
      directories: [],
      files: [],
      symlinks: [{ name: b(""), target: b("doesntmatter") }],
    };
    await assertRejects(() => s.put(invalid));
    assert(await putAllFails(s, [invalid]), "multi-put must fail");
    assert(await putAllFails(s, [F.DIRECTORY_A, invalid]), "multi-put must fail");
    assertEquals(await s.get(directoryDigest(invalid)), undefined);
    assertEquals(await s.get(A), undefined);
    const unsorted: Directory = {
      directories: [],
      files: [],
      symlinks: [{ name: b("b"), target: b("x") }, { name: b("a"), target: b("x") }],
    };
    await assertRejects(() => s.put(unsorted));
    assertEquals(await s.get(directoryDigest(unsorted)), undefined);
  });

  test("reject a child digest of the wrong length", async (s) => {
    const bad: Directory = {
      directories: [{ name: b("foo"), digest: new Uint8Array(5), size: 0n }],
      files: [],
      symlinks: [],
    };
    assert(await putAllFails(s, [F.DIRECTORY_A, bad]), "must fail");
    await assertRejects(() => s.put(bad));
    assertEquals(await s.get(directoryDigest(bad)), undefined);
  });

  test("reject wrong size", async (s) => {
    const wrong = parentOf();
    wrong.directories.push(dirNode("foo", F.DIRECTORY_A, directorySize(F.DIRECTORY_A) + 42n));
    assert(await putAllFails(s, [F.DIRECTORY_A, wrong]), "must fail");
    assertEquals(await s.get(directoryDigest(wrong)), undefined);
    assertEquals(await collect(s.getRecursive(directoryDigest(wrong))), []);
    assertEquals(await s.get(A), undefined);
  });

  test("a failed multi-put leaves earlier uploads intact", async (s) => {
    assertEquals(await putAll(s, [F.DIRECTORY_A, F.DIRECTORY_C]), C);
    assert(await putAllFails(s, [F.DIRECTORY_A, F.DIRECTORY_C, F.DIRECTORY_B]), "must fail");
    assertEquals(await collect(s.getRecursive(C)), [F.DIRECTORY_C, F.DIRECTORY_A]);
    assertEquals(await collect(s.getRecursive(B)), []);
  });

  test("after a rejected put, the upload stores nothing", async (s) => {
    const putter = s.putMultiple();
    await putter.put(F.DIRECTORY_A);
    const wrongSize = parentOf();
    wrongSize.directories.push(dirNode("a", F.DIRECTORY_A, 42n));
    // A backend may reject at this put or only at close; either way the
    // valid directories put around it must not be stored.
    await fails(() => putter.put(wrongSize));
    await fails(() => putter.put(F.DIRECTORY_C));
    assert(await fails(() => putter.close()), "close must fail");
    assertEquals(await s.get(A), undefined);
    assertEquals(await s.get(C), undefined);
    assertEquals(await collect(s.getRecursive(C)), []);
  });

  test("a closed putter refuses more", async (s) => {
    const putter = s.putMultiple();
    await putter.put(F.DIRECTORY_A);
    assertEquals(await putter.close(), A);
    await assertRejects(() => putter.put(F.DIRECTORY_C));
  });
}
