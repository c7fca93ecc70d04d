import { assert, assertEquals, assertThrows } from "../assert.ts";
import { toHex } from "../../src/castore/digest.ts";
import { type Directory, directoryDigest } from "../../src/castore/directory.ts";
import {
  ClosureError,
  DownloadValidator,
  traverseClosure,
  UploadClosure,
} from "../../src/castore/directory/closure.ts";
import { StorageError } from "../../src/errors.ts";
import * as F from "../fixtures.ts";

const { b, DIRECTORY_A: A, DIRECTORY_B: B, DIRECTORY_C: C } = F;
const hex = (d: Directory) => toHex(directoryDigest(d));
const hexes = (ds: Directory[]) => ds.map(hex);

function upload(...dirs: Directory[]) {
  const closure = new UploadClosure();
  for (const d of dirs) closure.add(d);
  return closure.finalize();
}

Deno.test("upload: roots and deduplication", () => {
  assertEquals(toHex(upload(A)!.rootDigest), hex(A));
  assertEquals(toHex(upload(A, B)!.rootDigest), hex(B));
  const dedup = upload(A, A, C)!;
  assertEquals(toHex(dedup.rootDigest), hex(C));
  assertEquals(hexes(dedup.leavesToRoot), [hex(A), hex(C)]);
  assertEquals(hexes(dedup.rootToLeaves), [hex(C), hex(A)]);
  assertEquals(new UploadClosure().finalize(), undefined);
});

Deno.test("upload: disconnected roots, dangling references, invalid and wrong-size directories", () => {
  assertEquals(assertThrows(() => upload(A, C, B), ClosureError).kind, "Graph");
  assertEquals(assertThrows(() => upload(B), ClosureError).kind, "Order");
  const emptySymlinkName: Directory = {
    directories: [],
    files: [],
    symlinks: [{ name: b(""), target: b("doesntmatter") }],
  };
  assertEquals(assertThrows(() => upload(emptySymlinkName), ClosureError).kind, "Validation");
  const wrongSize: Directory = {
    directories: [{ name: b("foo"), digest: directoryDigest(A), size: 42n }],
    files: [],
    symlinks: [],
  };
  const err = assertThrows(() => upload(A, wrongSize), ClosureError);
  assertEquals(err.kind, "WrongSize");
  assert(err.message.includes("specified 42, recorded 0"), err.message);
  // A short child digest is a clean validation error, not a crash
  // (docs/compatibility.md#q8-short-child-digests-crash-directory-put).
  const shortDigest: Directory = {
    directories: [{ name: b("a"), digest: new Uint8Array(2), size: 0n }],
    files: [],
    symlinks: [],
  };
  assertEquals(assertThrows(() => upload(shortDigest), ClosureError).kind, "InvalidDigest");
});

Deno.test("upload: leaves-to-root is post-order, root-to-leaves breadth-first", () => {
  const closure = upload(F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED)!;
  assertEquals(hexes(closure.leavesToRoot), [
    hex(F.DIRECTORY_WITH_KEEP),
    hex(F.DIRECTORY_COMPLICATED),
  ]);
  assertEquals(hexes(closure.rootToLeaves), [
    hex(F.DIRECTORY_COMPLICATED),
    hex(F.DIRECTORY_WITH_KEEP),
  ]);
});

Deno.test("download: root first, only referenced directories, nothing missing", () => {
  const ok = new DownloadValidator(directoryDigest(C));
  assert(ok.add(C));
  assert(ok.add(A));
  ok.finish();

  const unexpected = new DownloadValidator(directoryDigest(C));
  unexpected.add(C);
  assertEquals(assertThrows(() => unexpected.add(B), ClosureError).kind, "Order");

  assertThrows(() => new DownloadValidator(directoryDigest(B)).add(A), ClosureError);

  const premature = new DownloadValidator(directoryDigest(C));
  premature.add(C);
  assertThrows(() => premature.finish(), ClosureError, "premature end of stream");

  // Nothing received at all means "not found", not an error.
  new DownloadValidator(directoryDigest(C)).finish();
});

Deno.test("download: a directory referenced again after it arrived is not reported missing (docs/compatibility.md#q7-grpc-directory-client-reports-false-premature-ends)", () => {
  // root -> x -> A, and root -> y -> A: A arrives after x, then y references it again.
  const x: Directory = {
    directories: [{ name: b("a"), digest: directoryDigest(A), size: 0n }],
    files: [],
    symlinks: [],
  };
  const y: Directory = {
    directories: [{ name: b("b"), digest: directoryDigest(A), size: 0n }],
    files: [],
    symlinks: [],
  };
  const root: Directory = {
    directories: [
      { name: b("x"), digest: directoryDigest(x), size: 1n },
      { name: b("y"), digest: directoryDigest(y), size: 1n },
    ],
    files: [],
    symlinks: [],
  };
  const v = new DownloadValidator(directoryDigest(root));
  for (const d of [root, x, A, y]) v.add(d);
  assertEquals(v.add(A), false);
  v.finish();
});

Deno.test("download: a child whose size differs from its parent's declaration is refused", () => {
  const parent: Directory = {
    directories: [{ name: b("keep"), digest: directoryDigest(F.DIRECTORY_WITH_KEEP), size: 7n }],
    files: [],
    symlinks: [],
  };
  const v = new DownloadValidator(directoryDigest(parent));
  v.add(parent);
  assertEquals(assertThrows(() => v.add(F.DIRECTORY_WITH_KEEP), ClosureError).kind, "WrongSize");
});

Deno.test("traverseClosure: breadth-first, each once, missing root empty, missing child an error", async () => {
  const store = new Map(
    [A, C, F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED].map((d) => [hex(d), d]),
  );
  const get = (d: Uint8Array) => Promise.resolve(store.get(toHex(d)));
  const collect = async (root: Directory) => {
    const out: Directory[] = [];
    for await (const d of traverseClosure(get, directoryDigest(root))) out.push(d);
    return hexes(out);
  };
  assertEquals(await collect(C), [hex(C), hex(A)]);
  assertEquals(await collect(F.DIRECTORY_COMPLICATED), [
    hex(F.DIRECTORY_COMPLICATED),
    hex(F.DIRECTORY_WITH_KEEP),
  ]);
  assertEquals(await collect(B), []);
  store.delete(hex(A));
  let failed: unknown;
  try {
    await collect(C);
  } catch (err) {
    failed = err;
  }
  assert(failed instanceof StorageError, String(failed));
});
