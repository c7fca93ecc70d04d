/**
 * Names and symlink targets that are not valid UTF-8, imported with
 * `tvix-store import` and read back through a real mount: python3 with
 * byte paths (listdir, lstat, readlink, read) sees the source tree's bytes.
 * Runs as root where /dev/fuse exists; skipped otherwise.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { describeTree, writeNonUtf8Tree } from "../store/non_utf8_tree.ts";
import { addrFlags, run, runTvix, SKIP, startMount, tempStore } from "./harness.ts";

Deno.test({
  name: "byte names read back through the mount as the same bytes, with the same contents",
  ignore: SKIP,
  async fn() {
    const src = await Deno.makeTempDir({ prefix: "tvix-fuse-non-utf8-" });
    const store = await tempStore();
    try {
      const tree = join(src, "tree");
      await writeNonUtf8Tree(tree);
      const imported = await runTvix([
        "import",
        "--no-stat-cache",
        tree,
        ...addrFlags(store.addrs),
      ]);
      assertEquals(imported.code, 0, imported.stderr);
      const storePath = imported.stdout.trim();
      assert(/^\/nix\/store\/[0-9a-z]{32}-tree$/.test(storePath), storePath);

      const m = await startMount({ addrs: store.addrs, args: ["--threads=2"] });
      try {
        const mounted = join(m.mountpoint, storePath.slice("/nix/store/".length));
        assertEquals(await describeTree(mounted), await describeTree(tree));
        const diff = await run("diff", ["-r", "--no-dereference", tree, mounted]);
        assertEquals(diff.code, 0, diff.stdout + diff.stderr);
      } finally {
        await m.stop();
      }
    } finally {
      await store.remove();
      await Deno.remove(src, { recursive: true });
    }
  },
});
