/**
 * NAR renderer against upstream's fixtures (docs/compatibility.md#test-vectors)
 * and its renderer cases (docs/compatibility.md#rendering-a-castore-node).
 */
import { createHash } from "node:crypto";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import {
  b,
  BLOB_A,
  BLOB_A_DIGEST,
  DIRECTORY_COMPLICATED,
  DIRECTORY_WITH_KEEP,
  HELLOWORLD_BLOB_CONTENTS,
  HELLOWORLD_BLOB_DIGEST,
  NAR_CONTENTS_HELLOWORLD,
  NAR_CONTENTS_SYMLINK,
} from "../fixtures.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import { fromHex, toHex } from "../../src/castore/digest.ts";
import { makeNode, type NodeVariant } from "../../src/castore/node.ts";
import { calculateNar, NarRenderError, PIECE_SIZE, renderNar } from "../../src/nar/render.ts";
import { concat, str } from "../../src/nar/wire.ts";
import { NAR_CONTENTS_COMPLICATED } from "./nar_fixtures.ts";
import { LocalNarCalculationService } from "../../src/nar/calculation.ts";
import { importPath } from "../../src/store/import.ts";
import { MemoryPathInfoService } from "../../src/store/pathinfo/memory.ts";
import type { BlobService } from "../../src/castore/blob/service.ts";
import type { DirectoryService } from "../../src/castore/directory/service.ts";
import { collectBytes } from "../conformance/harness.ts";
import { ByteBudget } from "../../src/concurrency.ts";

async function put(blob: BlobService, data: Uint8Array): Promise<Uint8Array> {
  const w = blob.openWrite();
  await w.write(data);
  return await w.close();
}

function services(): { blob: BlobService; dir: DirectoryService } {
  return { blob: new MemoryBlobService(), dir: new MemoryDirectoryService() };
}

Deno.test("complicated fixture has the reference's length and hash (docs/compatibility.md#test-vectors)", () => {
  assertEquals(NAR_CONTENTS_COMPLICATED.length, 840);
  assertEquals(
    toHex(createHash("sha256").update(NAR_CONTENTS_COMPLICATED).digest()),
    "ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a",
  );
});

Deno.test("single symlink renders without touching the services", async () => {
  const untouchable = {
    openRead: () => Promise.reject(new Error("blob service used")),
    get: () => Promise.reject(new Error("directory service used")),
    getRecursive: () => {
      throw new Error("directory service used");
    },
  };
  const node = makeNode.symlink(b("doesntmatter"), b("/nix/store/somewhereelse"));
  assertEquals(await collectBytes(renderNar(node, untouchable, untouchable)), NAR_CONTENTS_SYMLINK);
});

Deno.test("single file with a missing blob fails with NotFound", async () => {
  const { blob, dir } = services();
  const node = makeNode.file(b("doesntmatter"), HELLOWORLD_BLOB_DIGEST, 12n);
  const err = await assertRejects(() => collectBytes(renderNar(node, blob, dir)), NarRenderError);
  assertEquals(err.kind, "NotFound");
});

Deno.test("single file whose blob is shorter or longer than the node size fails", async () => {
  const { blob, dir } = services();
  await put(blob, HELLOWORLD_BLOB_CONTENTS);
  const short = makeNode.file(b("x"), HELLOWORLD_BLOB_DIGEST, 42n);
  const e1 = await assertRejects(() => collectBytes(renderNar(short, blob, dir)), NarRenderError);
  assertEquals(e1.kind, "UnexpectedEof");
  const long = makeNode.file(b("x"), HELLOWORLD_BLOB_DIGEST, 2n);
  const e2 = await assertRejects(() => collectBytes(renderNar(long, blob, dir)), NarRenderError);
  assertEquals(e2.kind, "InvalidInput");
  // Same for a large file streamed rather than read ahead.
  const big = new Uint8Array(3 * 1024 * 1024).fill(7);
  const bigDigest = await put(blob, big);
  for (
    const [size, kind] of [[big.length + 1, "UnexpectedEof"], [big.length - 1, "InvalidInput"]]
  ) {
    const node = makeNode.file(b("x"), bigDigest, BigInt(size));
    const e = await assertRejects(() => calculateNar(node, blob, dir), NarRenderError);
    assertEquals(e.kind, kind);
  }
});

Deno.test("a digest of the wrong length is a render error", async () => {
  const { blob, dir } = services();
  const node = makeNode.file(b("x"), new Uint8Array(2), 2n);
  const e = await assertRejects(() => collectBytes(renderNar(node, blob, dir)), NarRenderError);
  assertEquals(e.kind, "InvalidDigest");
});

Deno.test("single file renders the fixture; the root name is irrelevant (docs/compatibility.md#q9-calculatenar-requires-a-valid-root-node-name)", async () => {
  const { blob, dir } = services();
  await put(blob, HELLOWORLD_BLOB_CONTENTS);
  for (const name of ["doesntmatter", "", "../a/b"]) {
    const node = makeNode.file(b(name), HELLOWORLD_BLOB_DIGEST, 12n);
    assertEquals(await collectBytes(renderNar(node, blob, dir)), NAR_CONTENTS_HELLOWORLD);
  }
});

Deno.test("complicated directory renders the fixture", async () => {
  const { blob, dir } = services();
  await put(blob, new Uint8Array(0));
  await dir.put(DIRECTORY_WITH_KEEP);
  await dir.put(DIRECTORY_COMPLICATED);
  const node = makeNode.directory(b(""), directoryDigest(DIRECTORY_COMPLICATED), 4n);
  assertEquals(await collectBytes(renderNar(node, blob, dir)), NAR_CONTENTS_COMPLICATED);
  const summary = await calculateNar(node, blob, dir);
  assertEquals(summary.narSize, 840n);
  assertEquals(
    summary.narSha256,
    fromHex("ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a"),
  );
});

Deno.test("a missing directory is a render error", async () => {
  const { blob, dir } = services();
  const node = makeNode.directory(b(""), directoryDigest(DIRECTORY_COMPLICATED), 4n);
  const e = await assertRejects(() => calculateNar(node, blob, dir), NarRenderError);
  assertEquals(e.kind, "DirectoryNotFound");
});

Deno.test("large files stream in bounded pieces and hash like the concatenation", async () => {
  const { blob, dir } = services();
  const big = new Uint8Array(5 * 1024 * 1024 + 3);
  for (let i = 0; i < big.length; i += 4096) big[i] = i & 0xff;
  const digest = await put(blob, big);
  const node = makeNode.file(b(""), digest, BigInt(big.length), true);
  let total = 0;
  const hash = createHash("sha256");
  for await (const piece of renderNar(node, blob, dir)) {
    assert(piece.length <= 4 * 1024 * 1024, `piece of ${piece.length} bytes`);
    total += piece.length;
    hash.update(piece);
  }
  const expected = concat([
    str("nix-archive-1"),
    str("("),
    str("type"),
    str("regular"),
    str("executable"),
    str(""),
    str("contents"),
    str(big),
    str(")"),
  ]);
  assertEquals(total, expected.length);
  assertEquals(
    new Uint8Array(hash.digest()),
    new Uint8Array(createHash("sha256").update(expected).digest()),
  );
});

Deno.test("LocalNarCalculationService caches by node content, not name", async () => {
  const { blob, dir } = services();
  await put(blob, HELLOWORLD_BLOB_CONTENTS);
  let reads = 0;
  const counting: BlobService = {
    ...blob,
    has: (d) => blob.has(d),
    chunks: (d) => blob.chunks(d),
    openWrite: () => blob.openWrite(),
    close: () => blob.close(),
    openRead: (d, o) => {
      reads++;
      return blob.openRead(d, o);
    },
  };
  const svc = new LocalNarCalculationService(counting, dir);
  const a: NodeVariant = makeNode.file(b("a"), HELLOWORLD_BLOB_DIGEST, 12n);
  const first = await svc.calculateNar(a);
  assertEquals(first.narSize, 128n);
  assertEquals(reads, 1);
  const second = await svc.calculateNar(makeNode.file(b("other"), HELLOWORLD_BLOB_DIGEST, 12n));
  assertEquals(second, first);
  assertEquals(reads, 1);
  // The executable bit changes the NAR, so it is another entry.
  await svc.calculateNar(makeNode.file(b("a"), HELLOWORLD_BLOB_DIGEST, 12n, true));
  assertEquals(reads, 2);
  // Failures are not cached.
  const missing = makeNode.file(b("m"), BLOB_A_DIGEST, 2n);
  await assertRejects(() => svc.calculateNar(missing), NarRenderError);
  await put(blob, BLOB_A);
  assertEquals((await svc.calculateNar(missing)).narSize, 120n);
  assertEquals(svc.cachedCount, 3);
});

Deno.test("a directory of many symlinks renders in bounded pieces, as nix-store --dump", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "render-links-" });
  try {
    const root = `${tmp}/links`;
    await Deno.mkdir(root);
    const target = "../".repeat(20) + "nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello/bin/hello";
    for (let i = 0; i < 4000; i++) await Deno.symlink(`${target}${i}`, `${root}/l${i}`);
    const blob = new MemoryBlobService();
    const directory = new MemoryDirectoryService();
    const pathInfo = new MemoryPathInfoService();
    const { pathInfo: info } = await importPath(root, { blob, directory, pathInfo });
    const node = info.node!.node!;
    const pieces: Uint8Array[] = [];
    for await (const piece of renderNar(node, blob, directory)) {
      assert(piece.length <= PIECE_SIZE, `piece of ${piece.length} bytes`);
      pieces.push(piece);
    }
    assert(pieces.length > 4, `${pieces.length} pieces`);
    const dump = await new Deno.Command("nix-store", { args: ["--dump", root] }).output();
    assert(dump.success);
    assertEquals(concat(pieces), dump.stdout);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("a NAR of small files comes in pieces that each span a buffer of their own", async () => {
  // What lets the HTTP layer free each piece as soon as it is sent
  // (releaseWhole frees only a buffer that a piece spans whole).
  const tmp = await Deno.makeTempDir({ prefix: "render-small-" });
  try {
    const root = `${tmp}/small`;
    await Deno.mkdir(root);
    for (let i = 0; i < 400; i++) {
      await Deno.writeTextFile(`${root}/f${i}`, `file ${i} `.repeat(20 + (i % 300)));
    }
    const blob = new MemoryBlobService();
    const directory = new MemoryDirectoryService();
    const pathInfo = new MemoryPathInfoService();
    const { pathInfo: info } = await importPath(root, { blob, directory, pathInfo });
    const pieces: Uint8Array[] = [];
    for await (const piece of renderNar(info.node!.node!, blob, directory)) {
      assertEquals(piece.byteOffset, 0);
      assertEquals(piece.byteLength, piece.buffer.byteLength, "a view into a larger buffer");
      pieces.push(piece);
    }
    assert(pieces.length >= 4, `${pieces.length} pieces`);
    const dump = await new Deno.Command("nix-store", { args: ["--dump", root] }).output();
    assert(dump.success);
    assertEquals(concat(pieces), dump.stdout);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("read-ahead of small files stays within a budget shared by renderings, which get it all back", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "render-budget-" });
  try {
    const root = `${tmp}/small`;
    await Deno.mkdir(root);
    for (let i = 0; i < 300; i++) {
      await Deno.writeTextFile(`${root}/f${i}`, `budget ${i} `.repeat(100 + (i % 200)));
    }
    const blob = new MemoryBlobService();
    const directory = new MemoryDirectoryService();
    const pathInfo = new MemoryPathInfoService();
    const { pathInfo: info } = await importPath(root, { blob, directory, pathInfo });
    const node = info.node!.node!;
    const dump = await new Deno.Command("nix-store", { args: ["--dump", root] }).output();
    assert(dump.success);

    // Two downloads taking turns, as a slow client's and a fast one's do.
    const budget = new ByteBudget(64 * 1024);
    const a = renderNar(node, blob, directory, undefined, budget);
    const b = renderNar(node, blob, directory, undefined, budget);
    const outA: Uint8Array[] = [], outB: Uint8Array[] = [];
    let most = 0;
    for (let doneA = false, doneB = false; !doneA || !doneB;) {
      if (!doneA) {
        const r = await a.next();
        if (r.done) doneA = true;
        else outA.push(r.value);
      }
      most = Math.max(most, budget.inUse);
      if (!doneB) {
        const r = await b.next();
        if (r.done) doneB = true;
        else outB.push(r.value);
      }
      most = Math.max(most, budget.inUse);
    }
    // Together they asked for more than the budget: it ran full.
    assert(most > 60 * 1024, `${most} bytes read ahead at most`);
    assertEquals(concat(outA), dump.stdout);
    assertEquals(concat(outB), dump.stdout);
    assertEquals(budget.inUse, 0, "all given back at the end");

    // No budget at all: every file is read when its turn comes.
    const none = new ByteBudget(0);
    assertEquals(
      await collectBytes(renderNar(node, blob, directory, undefined, none)),
      dump.stdout,
    );

    // A download cut short gives back what it had read ahead.
    const cut = renderNar(node, blob, directory, undefined, budget);
    await cut.next();
    assert(budget.inUse > 0, "read ahead before the cut");
    await cut.return(undefined);
    assertEquals(budget.inUse, 0, "given back after a cut");

    // So does one that fails: a blob goes missing while files are read ahead.
    const failing = new MemoryBlobService();
    const names = [...Array(300).keys()].map((i) => `f${i}`);
    for (const [i, name] of names.entries()) {
      if (i === 150) continue;
      await put(failing, await Deno.readFile(`${root}/${name}`));
    }
    await assertRejects(
      () => collectBytes(renderNar(node, failing, directory, undefined, budget)),
      NarRenderError,
    );
    assertEquals(budget.inUse, 0, "given back after a failure");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
