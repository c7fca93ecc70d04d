/**
 * Importing local paths, compared with what Debian's nix-bin computes for
 * the same trees: store path (`nix-store --add`), NAR hash and size
 * (`nix-store --dump`, `nix-hash`), NAR rendered from castore, NAR ingested
 * from `nix-store --dump` and rendered back.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertThrows } from "../assert.ts";
import { b, DIRECTORY_COMPLICATED, HELLOWORLD_BLOB_DIGEST } from "../fixtures.ts";
import { nixOracle, writeEdgeCaseTree } from "./tree_gen.ts";
import type { BlobService } from "../../src/castore/blob/service.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import { IngestError, ingestPath } from "../../src/castore/import/fs.ts";
import { makeNode, renameNode } from "../../src/castore/node.ts";
import { ingestNar } from "../../src/nar/ingest.ts";
import { calculateNar, renderNar } from "../../src/nar/render.ts";
import { MemoryPathInfoService } from "../../src/store/pathinfo/memory.ts";
import { importPath, nameFromPath } from "../../src/store/import.ts";
import * as nixbase32 from "../../src/store/nixbase32.ts";
import { NARInfo_CA_Hash } from "../../src/proto/tvix/store/protos/pathinfo.ts";
import { validatePathInfo } from "../../src/store/pathinfo/validate.ts";
import { collectBytes } from "../conformance/harness.ts";

function services() {
  return {
    blob: new MemoryBlobService(),
    directory: new MemoryDirectoryService(),
    pathInfo: new MemoryPathInfoService(),
  };
}

async function* once(bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  // 64 KiB pieces, like a pipe would deliver them.
  for (let i = 0; i < bytes.length; i += 65536) yield bytes.slice(i, i + 65536);
}

/** Imports `path` and checks everything against nix-bin. */
async function checkAgainstNix(path: string, tmp: string, add = true): Promise<void> {
  const nix = await nixOracle(path, add ? join(tmp, `nixstore-${crypto.randomUUID()}`) : undefined);
  const s = services();
  const { storePath, pathInfo } = await importPath(path, s);
  if (add) assertEquals(storePath.absolute(), nix.storePath, `store path of ${path}`);
  assertEquals(pathInfo.narinfo!.narSha256, nix.narSha256, "nar sha256");
  assertEquals(pathInfo.narinfo!.narSize, BigInt(nix.nar.length), "nar size");
  assertEquals(nixbase32.encode(pathInfo.narinfo!.narSha256), nix.nixHashBase32);
  // The raw 32-byte digest (docs/compatibility.md#q1-import-stores-the-ca-digest-as-text).
  assertEquals(pathInfo.narinfo!.ca, { type: NARInfo_CA_Hash.NAR_SHA256, digest: nix.narSha256 });
  assertEquals(validatePathInfo(pathInfo).absolute(), storePath.absolute());
  const stored = await s.pathInfo.get(storePath.digest);
  assertEquals(stored, pathInfo);

  // The castore side agrees: the NAR rendered from the services is Nix's.
  const node = pathInfo.node!.node!;
  assertEquals(await collectBytes(renderNar(node, s.blob, s.directory)), nix.nar, "rendered NAR");
  assertEquals(await calculateNar(node, s.blob, s.directory), {
    narSize: BigInt(nix.nar.length),
    narSha256: nix.narSha256,
  });

  // Nix's NAR ingested into fresh services gives the same node and renders back identical.
  const t = services();
  const ingested = await ingestNar(once(nix.nar), t.blob, t.directory);
  assertEquals(ingested.narSha256, nix.narSha256);
  assertEquals(ingested.node, renameNode(node, new Uint8Array(0)));
  assertEquals(await collectBytes(renderNar(ingested.node, t.blob, t.directory)), nix.nar);
}

Deno.test("import of generated trees matches nix-store --add / --dump / nix-hash", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "h3-import-" });
  try {
    const tree = join(tmp, "tree");
    await writeEdgeCaseTree(tree);
    await checkAgainstNix(tree, tmp);
    // Sub-paths as roots: a directory, a single file, executable file, symlinks (not followed).
    for (
      const rel of [
        "sizes",
        "sizes/f4194321",
        "exec.sh",
        "empty",
        "emptydir",
        "link-relative",
        "link-dangling",
        "link-to-dir",
        "d0",
      ]
    ) {
      await checkAgainstNix(join(tree, rel), tmp);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("filesystem ingestion of upstream's test tree gives DIRECTORY_COMPLICATED (docs/compatibility.md#test-vectors)", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "h3-import-" });
  try {
    const root = join(tmp, "root");
    await Deno.mkdir(join(root, "keep"), { recursive: true });
    await Deno.writeFile(join(root, ".keep"), new Uint8Array(0));
    await Deno.writeFile(join(root, "keep", ".keep"), new Uint8Array(0));
    await Deno.symlink("/nix/store/somewhereelse", join(root, "aa"));
    const s = services();
    const node = await ingestPath(root, s.blob, s.directory);
    assertEquals(node, makeNode.directory(b("root"), directoryDigest(DIRECTORY_COMPLICATED), 4n));
    assert(await s.directory.get(directoryDigest(DIRECTORY_COMPLICATED)));

    await Deno.writeFile(join(tmp, "hello"), b("Hello World!"));
    assertEquals(
      await ingestPath(join(tmp, "hello"), s.blob, s.directory),
      makeNode.file(b("hello"), HELLOWORLD_BLOB_DIGEST, 12n, false),
    );
    assert(await s.blob.has(HELLOWORLD_BLOB_DIGEST));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("sockets and FIFOs are refused with an error naming the path; nothing stored", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "h3-import-" });
  let listener: Deno.Listener | undefined;
  try {
    const root = join(tmp, "root");
    await Deno.mkdir(join(root, "sub"), { recursive: true });
    await Deno.writeFile(join(root, "a"), b("a"));
    const fifo = join(root, "sub", "fifo");
    const mk = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert(mk.success);
    const s = services();
    const err = await assertRejects(() => importPath(root, s), IngestError, fifo);
    assert(err.message.includes("FIFO"), err.message);
    for await (const _ of s.pathInfo.list()) throw new Error("a PathInfo was stored");
    assertEquals(
      await s.directory.get(directoryDigest({ directories: [], files: [], symlinks: [] })),
      undefined,
    );
    await Deno.remove(fifo);

    const sock = join(root, "sock");
    listener = Deno.listen({ transport: "unix", path: sock });
    await assertRejects(() => ingestPath(root, s.blob, s.directory), IngestError, sock);
    await assertRejects(
      () => ingestPath(join(tmp, "missing"), s.blob, s.directory),
      IngestError,
      "missing",
    );
  } finally {
    listener?.close();
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("store path names come from the last component (docs/compatibility.md#the-import-algorithm)", () => {
  assertEquals(nameFromPath("a/b/c"), "c");
  assertEquals(nameFromPath("a/b/../c"), "c");
  assertEquals(nameFromPath("a/b/../c/d/../e"), "e");
  assertEquals(nameFromPath("/x/y/"), "y");
  for (const bad of ["a/b/..", ".", "/", "", ".."]) {
    assertThrows(() => nameFromPath(bad), IngestError, "path must not be ..");
  }
});

Deno.test("an invalid store path name fails before ingesting", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "h3-import-" });
  try {
    const p = join(tmp, "bad name");
    await Deno.writeFile(p, b("x"));
    await assertRejects(() => importPath(p, services()), Error, "invalid name: bad name");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("the NAR hash does not read blobs back from the blob service", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "h3-import-" });
  try {
    const tree = join(tmp, "tree");
    await writeEdgeCaseTree(tree);
    const s = services();
    const blob = s.blob;
    const writeOnly: BlobService = {
      has: (d) => blob.has(d),
      chunks: (d) => blob.chunks(d),
      openWrite: () => blob.openWrite(),
      close: () => blob.close(),
      openRead: () => Promise.reject(new Error("blob read during import")),
    };
    const r = await importPath(tree, { ...s, blob: writeOnly });
    const nar = await new Deno.Command("nix-store", { args: ["--dump", tree], stdout: "piped" })
      .output();
    assertEquals(
      r.pathInfo.narinfo!.narSha256,
      new Uint8Array(createHash("sha256").update(nar.stdout).digest()),
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("a 2000-level deep tree imports, renders and ingests like Nix's", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "h3-import-" });
  try {
    const root = join(tmp, "deep");
    let p = root;
    for (let i = 0; i < 2000; i++) p = join(p, "a");
    await Deno.mkdir(p, { recursive: true });
    await Deno.writeTextFile(join(p, "f"), "bottom");
    await checkAgainstNix(root, tmp, false);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("import: `..` after a symlink is resolved in the text, as nix-store --add does", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-dotdot-" });
  try {
    await Deno.mkdir(join(tmp, "real", "x"), { recursive: true });
    await Deno.writeTextFile(join(tmp, "real", "b"), "beside the symlink's target\n");
    await Deno.writeTextFile(join(tmp, "b"), "beside the symlink\n");
    await Deno.symlink(join(tmp, "real", "x"), join(tmp, "a"));
    const given = `${tmp}/a/../b`;
    const nix = await new Deno.Command("nix-store", {
      args: ["--store", join(tmp, "nix"), "--add", given],
      stdout: "piped",
    }).output();
    assert(nix.success);
    const { storePath } = await importPath(given, services());
    assertEquals(storePath.absolute(), new TextDecoder().decode(nix.stdout).trim());
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
