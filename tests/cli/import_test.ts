/**
 * `tvix-store import` as a real process against the embedded backends
 * (objectstore+file blobs, SQLite directories and PathInfos in a temp dir),
 * compared with `nix-store --add` of the same paths.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { nixOracle, writeEdgeCaseTree } from "../store/tree_gen.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { pathInfoServiceFromUrl } from "../../src/store/pathinfo/from_url.ts";
import { renderNar } from "../../src/nar/render.ts";
import { LocalNarCalculationService } from "../../src/nar/calculation.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { localStoreArgs, tvixStore } from "./helpers.ts";
import { collectBytes } from "../conformance/harness.ts";

Deno.test("import prints what nix-store --add prints, in argument order, and stores Nix's NAR", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "h3-cli-import-" });
  try {
    const tree = join(tmp, "tree");
    await writeEdgeCaseTree(tree);
    const paths = [
      tree,
      join(tree, "sizes/f4194321"),
      join(tree, "link-dangling"),
      join(tree, "d0"),
    ];
    const store = join(tmp, "store");
    const r = await tvixStore(["import", ...localStoreArgs(store), ...paths]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.stderr, "");

    const expected = [];
    for (const p of paths) expected.push(await nixOracle(p, join(tmp, "nix")));
    assertEquals(r.stdout, expected.map((e) => e.storePath + "\n").join(""));

    // What landed in the store is Nix's NAR, read back through the real backends.
    const args = localStoreArgs(store);
    const blob = await blobServiceFromUrl(args[1]);
    const dir = await directoryServiceFromUrl(args[3]);
    const pathInfo = await pathInfoServiceFromUrl(args[5]);
    try {
      const calc = new LocalNarCalculationService(blob, dir);
      for (const e of expected) {
        const info = await pathInfo.get(StorePath.parseAbsolute(e.storePath).digest);
        assert(info?.narinfo && info.node?.node, `no PathInfo for ${e.storePath}`);
        assertEquals(info.narinfo.narSha256, e.narSha256);
        assertEquals(info.narinfo.narSize, BigInt(e.nar.length));
        assertEquals(info.narinfo.ca?.digest, e.narSha256);
        assertEquals(await collectBytes(renderNar(info.node.node, blob, dir)), e.nar);
        assertEquals(await calc.calculateNar(info.node.node), {
          narSize: BigInt(e.nar.length),
          narSha256: e.narSha256,
        });
      }
    } finally {
      await Promise.all([blob.close(), dir.close(), pathInfo.close()]);
    }

    // Importing again is idempotent.
    const again = await tvixStore(["import", ...localStoreArgs(store), ...paths]);
    assertEquals(again.code, 0, again.stderr);
    assertEquals(again.stdout, r.stdout);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("a failing path is reported on stderr, the others still import, exit is non-zero", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "h3-cli-import-" });
  try {
    const good1 = join(tmp, "good1");
    const good2 = join(tmp, "good2");
    await Deno.writeTextFile(good1, "one");
    await Deno.writeTextFile(good2, "two");
    const missing = join(tmp, "missing");
    const fifoDir = join(tmp, "withfifo");
    await Deno.mkdir(fifoDir);
    const fifo = join(fifoDir, "pipe");
    assert((await new Deno.Command("mkfifo", { args: [fifo] }).output()).success);
    const badName = join(tmp, "bad name");
    await Deno.writeTextFile(badName, "x");

    const r = await tvixStore([
      "import",
      ...localStoreArgs(join(tmp, "store")),
      good1,
      missing,
      fifoDir,
      badName,
      good2,
      ".",
    ]);
    assertEquals(r.code, 1);
    const nix1 = await nixOracle(good1, join(tmp, "nix"));
    const nix2 = await nixOracle(good2, join(tmp, "nix"));
    assertEquals(r.stdout, `${nix1.storePath}\n${nix2.storePath}\n`);
    assert(r.stderr.includes(missing), r.stderr);
    assert(r.stderr.includes(fifo) && r.stderr.includes("FIFO"), r.stderr);
    assert(r.stderr.includes("invalid name: bad name"), r.stderr);
    assert(r.stderr.includes("path must not be .."), r.stderr);
    assert(r.stderr.includes("4 of 6 paths could not be imported"), r.stderr);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("import takes service addresses from the environment", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "h3-cli-import-" });
  try {
    const f = join(tmp, "hello");
    await Deno.writeTextFile(f, "Hello World!");
    const a = localStoreArgs(join(tmp, "store"));
    const r = await tvixStore(["import", f], {
      BLOB_SERVICE_ADDR: a[1],
      DIRECTORY_SERVICE_ADDR: a[3],
      PATH_INFO_SERVICE_ADDR: a[5],
    });
    assertEquals(r.code, 0, r.stderr);
    const sha = createHash("sha256").update(
      (await new Deno.Command("nix-store", { args: ["--dump", f], stdout: "piped" }).output())
        .stdout,
    ).digest("hex");
    assertEquals(sha, "03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040");
    assertEquals(r.stdout, (await nixOracle(f, join(tmp, "nix"))).storePath + "\n");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
