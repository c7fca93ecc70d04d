/**
 * Importing trees whose names and symlink targets are not valid UTF-8
 * (docs/architecture.md#names-are-bytes): the store path is what
 * `nix-store --add` prints, the NAR rendered from castore is
 * `nix-store --dump`'s, the stat cache's metadata-only walk gives the same
 * node, and no directory descriptor is left open.
 */
import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { nixOracle } from "./tree_gen.ts";
import { BIG_FILE_BYTES, writeNonUtf8Tree } from "./non_utf8_tree.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import {
  type FileIdentity,
  IngestError,
  ingestPath,
  nodeFromStats,
} from "../../src/castore/import/fs.ts";
import { renameNode } from "../../src/castore/node.ts";
import { ingestNar } from "../../src/nar/ingest.ts";
import { renderNar } from "../../src/nar/render.ts";
import { MemoryPathInfoService } from "../../src/store/pathinfo/memory.ts";
import { importPath } from "../../src/store/import.ts";
import { collectBytes } from "../conformance/harness.ts";

function services() {
  return {
    blob: new MemoryBlobService(),
    directory: new MemoryDirectoryService(),
    pathInfo: new MemoryPathInfoService(),
  };
}

async function* chunks(bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += 65536) yield bytes.slice(i, i + 65536);
}

/** Open file descriptors of this process. */
function openFds(): number {
  return [...Deno.readDirSync("/proc/self/fd")].length;
}

async function withTree(fn: (tmp: string, tree: string) => Promise<void>): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-non-utf8-" });
  try {
    const tree = join(tmp, "tree");
    await writeNonUtf8Tree(tree);
    await fn(tmp, tree);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

Deno.test("names and targets that are not UTF-8 import as nix-store --add does, NAR as --dump", () =>
  withTree(async (tmp, tree) => {
    for (const root of [tree, join(tree, "collide"), join(tree, "genuine")]) {
      const nix = await nixOracle(root, join(tmp, "nix"));
      const s = services();
      const fdsBefore = openFds();
      const { storePath, pathInfo } = await importPath(root, s);
      assertEquals(openFds(), fdsBefore, `descriptors left open importing ${root}`);
      assertEquals(storePath.absolute(), nix.storePath, `store path of ${root}`);
      assertEquals(pathInfo.narinfo!.narSha256, nix.narSha256, `NAR hash of ${root}`);
      assertEquals(pathInfo.narinfo!.narSize, BigInt(nix.nar.length));
      const node = pathInfo.node!.node!;
      assertEquals(await collectBytes(renderNar(node, s.blob, s.directory)), nix.nar);

      // Nix's NAR ingested gives the same node and renders back byte for byte.
      const t = services();
      const ingested = await ingestNar(chunks(nix.nar), t.blob, t.directory);
      assertEquals(ingested.node, renameNode(node, new Uint8Array(0)));
      assertEquals(await collectBytes(renderNar(ingested.node, t.blob, t.directory)), nix.nar);
    }
  }));

Deno.test("the stat cache's metadata-only walk rebuilds the node of a tree with byte names", () =>
  withTree(async (_tmp, tree) => {
    const s = services();
    const digests = new Map<string, Uint8Array>();
    const key = (f: FileIdentity) => `${f.dev}:${f.ino}:${f.size}:${f.mtimeMs}:${f.ctimeMs}`;
    const node = await ingestPath(tree, s.blob, s.directory, {
      onFile: (file, digest) => digests.set(key(file), digest),
    });
    // Every regular file, the seven reached through directory descriptors included.
    assertEquals(digests.size, 10);
    const fdsBefore = openFds();
    const asked: string[] = [];
    const rebuilt = nodeFromStats(tree, {
      fileDigests: (files) =>
        files.map((file) => {
          asked.push(key(file));
          return digests.get(key(file));
        }),
    });
    assertEquals(openFds(), fdsBefore, "descriptors left open");
    assertEquals(new Set(asked).size, 10);
    assertEquals(rebuilt, node);

    // One file not known (the streamed one, below two raw names): no node.
    const big = [...digests.entries()].find(([k]) => k.split(":")[2] === String(BIG_FILE_BYTES));
    assert(big, "the streamed file was not seen");
    assertEquals(
      nodeFromStats(tree, {
        fileDigests: (fs) => fs.map((f) => key(f) === big[0] ? undefined : digests.get(key(f))),
      }),
      undefined,
    );
    assertEquals(openFds(), fdsBefore, "descriptors left open after a miss");
  }));

Deno.test("an unsupported file below a raw name is refused with its escaped path; nothing stored", () =>
  withTree(async (_tmp, tree) => {
    const fifo = await new Deno.Command("/usr/bin/python3", {
      args: [
        "-c",
        "import os,sys; os.mkfifo(os.fsencode(sys.argv[1]) + b'/\\xc3(dir/fifo\\xff')",
        tree,
      ],
    }).output();
    assert(fifo.success, new TextDecoder().decode(fifo.stderr));
    const s = services();
    const fdsBefore = openFds();
    const err = await assertRejects(() => importPath(tree, s), IngestError);
    assertEquals(err.path, join(tree, "\\xc3(dir", "fifo\\xff"));
    assert(err.message.includes("unsupported file type (FIFO)"), err.message);
    assertEquals(openFds(), fdsBefore, "descriptors left open after a failure");
    assertEquals(await Array.fromAsync(s.pathInfo.list()), []);
  }));
