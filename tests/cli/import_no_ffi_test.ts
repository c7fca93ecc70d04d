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
import { childEnv, MAIN } from "./helpers.ts";

const td = new TextDecoder();

/** Imports `tree` into the embedded store in `home` without `--allow-ffi`, under strace. */
async function importNoFfi(tree: string, home: string, traceTo: string) {
  const store = (name: string) =>
    `${name}://${home}/store/${name === "pack" ? "packs" : "s.sqlite"}`;
  const out = await new Deno.Command("strace", {
    args: [
      "-f",
      "-qq",
      "-e",
      "trace=openat",
      "-o",
      traceTo,
      Deno.execPath(),
      "run",
      "--no-prompt",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-net",
      "--allow-sys",
      MAIN,
      "import",
      `--blob-service-addr=${store("pack")}`,
      `--directory-service-addr=${store("sqlite")}`,
      `--path-info-service-addr=${store("sqlite")}`,
      tree,
    ],
    env: childEnv({ XDG_CACHE_HOME: join(home, "cache") }),
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(out.code, 0, td.decode(out.stderr));
  const opened = (await Deno.readTextFile(traceTo)).split("\n").filter((l) =>
    l.includes(`"${tree}/`) && !l.includes("O_DIRECTORY") && !l.includes("= -1")
  );
  return { path: td.decode(out.stdout).trim(), opened };
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
    assertEquals(first.path, (await nixOracle(tree, join(tmp, "nix1"))).storePath);
    assert(first.opened.length >= 4, `the first import reads the files: ${first.opened}`);

    // The cache vouches for every file and directory.
    const again = await importNoFfi(tree, home, trace);
    assertEquals(again.path, first.path);
    assertEquals(again.opened, [], "a re-import reads no file of the tree");

    // Same size, new contents, deep down.
    await Deno.writeTextFile(join(tree, "lib", "deep", "b.txt"), "SECOND\n");
    const changed = await importNoFfi(tree, home, trace);
    assertEquals(changed.path, (await nixOracle(tree, join(tmp, "nix2"))).storePath);
    assert(changed.path !== first.path, "the rewrite changes the store path");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
