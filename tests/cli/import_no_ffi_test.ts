/**
 * `tvix-store import` without FFI permission: the walk lists directories
 * through Deno's own API (and BLAKE3 falls back to WebAssembly), the store
 * path is `nix-store --add`'s, a re-import through the stat cache opens no
 * file of the tree (strace), and a same-size rewrite is noticed.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { nixOracle } from "../store/tree_gen.ts";
import { RACY_MS } from "../../src/store/stat_cache.ts";
import { localStoreArgs, NO_FFI_PERMISSIONS, tracedImport } from "./helpers.ts";

/** `tracedImport` into the embedded store in `home`, without `--allow-ffi`. */
function importNoFfi(tree: string, home: string, traceTo: string) {
  return tracedImport(tree, {
    permissions: [...NO_FFI_PERMISSIONS],
    serviceArgs: localStoreArgs(join(home, "store")),
    cacheHome: join(home, "cache"),
    traceTo,
  });
}

Deno.test("without FFI: import, a re-import from the stat cache and a same-size rewrite match nix-store", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-cli-noffi-" });
  try {
    const tree = join(tmp, "tree");
    await Deno.mkdir(join(tree, "lib", "deep"), { recursive: true });
    await Deno.writeTextFile(join(tree, "README"), "read me\n");
    await Deno.writeTextFile(join(tree, "lib", "a.txt"), "first file\n".repeat(100));
    await Deno.writeTextFile(join(tree, "lib", "deep", "b.txt"), "second\n");
    await Deno.writeTextFile(join(tree, "run.sh"), "#!/bin/sh\necho hi\n", { mode: 0o755 });
    await Deno.symlink("lib/a.txt", join(tree, "link"));
    const home = join(tmp, "home");
    const trace = join(tmp, "trace");

    // Files changed within the racy window of an import are not recorded.
    await new Promise((r) => setTimeout(r, RACY_MS + 300));
    const first = await importNoFfi(tree, home, trace);
    assertEquals(first.stdout, (await nixOracle(tree, join(tmp, "nix1"))).storePath);
    assert(first.opened.length >= 4, `the first import reads the files: ${first.opened}`);

    // The cache vouches for every file and directory.
    const again = await importNoFfi(tree, home, trace);
    assertEquals(again.stdout, first.stdout);
    assertEquals(again.opened, [], "a re-import reads no file of the tree");

    // Same size, new contents, deep down.
    await Deno.writeTextFile(join(tree, "lib", "deep", "b.txt"), "SECOND\n");
    const changed = await importNoFfi(tree, home, trace);
    assertEquals(changed.stdout, (await nixOracle(tree, join(tmp, "nix2"))).storePath);
    assert(changed.stdout !== first.stdout, "the rewrite changes the store path");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
