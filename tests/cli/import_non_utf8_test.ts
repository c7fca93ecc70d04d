/**
 * `tvix-store import` of a tree whose names and symlink targets are not
 * valid UTF-8, as real processes over a daemon that also serves the binary
 * cache: the store path is `nix-store --add`'s, the NAR the cache serves is
 * `nix-store --dump`'s, a re-import through the stat cache gives the same
 * path without reading a file (strace), and without FFI permission the
 * import fails with an error naming the directory.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { nixOracle } from "../store/tree_gen.ts";
import { writeNonUtf8Tree } from "../store/non_utf8_tree.ts";
import { RACY_MS } from "../../src/store/stat_cache.ts";
import { startDaemon } from "../grpc/daemon_harness.ts";
import { childEnv, MAIN, NO_FFI_PERMISSIONS, remoteStoreArgs, tracedImport } from "./helpers.ts";

const td = new TextDecoder();

/** `tracedImport` with every permission, through the daemon at `grpc`. */
function importOverDaemon(tree: string, grpc: string, cacheHome: string, traceTo: string) {
  return tracedImport(tree, {
    permissions: ["-A"],
    serviceArgs: remoteStoreArgs(grpc),
    cacheHome,
    traceTo,
  });
}

Deno.test("byte names over a daemon: nix-store's path and NAR, the same path from the stat cache", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-cli-non-utf8-" });
  const home = join(tmp, "home");
  const daemon = await startDaemon({
    home,
    listen: "127.0.0.1:0",
    args: ["--nar-bridge-listen-address=127.0.0.1:0"],
  });
  try {
    const tree = join(tmp, "tree");
    await writeNonUtf8Tree(tree);
    // Older than the racy window, so the first import may record the files.
    await new Promise((r) => setTimeout(r, RACY_MS + 100));
    const nix = await nixOracle(tree, join(tmp, "nix"));
    const grpc = `grpc+http://${daemon.address}`;
    const cacheHome = join(tmp, "cache");

    const first = await importOverDaemon(tree, grpc, cacheHome, join(tmp, "trace-1"));
    assertEquals(first.stdout, nix.storePath);
    // The trace sees the byte-level walk's reads: seven files below names that are not UTF-8.
    assert(
      first.opened.filter((l) => /openat\(\d+, "/.test(l)).length >= 7,
      `the first import's byte-level reads were not traced:\n${first.opened.join("\n")}`,
    );

    // The binary cache serves Nix's NAR, names inside it as bytes.
    const http = /nar-bridge listening address=(\S+)/.exec(daemon.log())?.[1];
    assert(http, daemon.log());
    const hash = nix.storePath.slice("/nix/store/".length, "/nix/store/".length + 32);
    const narinfo = await (await fetch(`http://${http}/${hash}.narinfo`)).text();
    assert(narinfo.startsWith(`StorePath: ${nix.storePath}\n`), narinfo);
    const url = /^URL: (\S+)$/m.exec(narinfo)![1];
    const nar = new Uint8Array(await (await fetch(`http://${http}/${url}`)).arrayBuffer());
    assertEquals(nar, nix.nar);

    const again = await importOverDaemon(tree, grpc, cacheHome, join(tmp, "trace-2"));
    assertEquals(again.stdout, nix.storePath);
    assertEquals(again.opened, [], "the unchanged re-import read files");
  } finally {
    const { status } = await daemon.stop("SIGTERM");
    assertEquals(status.code, 0, daemon.log());
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("without FFI permission, a name that is not UTF-8 fails with an error naming its directory", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-cli-non-utf8-noffi-" });
  try {
    const tree = join(tmp, "tree");
    await writeNonUtf8Tree(tree);
    const memory = ["memory://", "memory://", "memory://"];
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        ...NO_FFI_PERMISSIONS,
        MAIN,
        "import",
        "--no-stat-cache",
        `--blob-service-addr=${memory[0]}`,
        `--directory-service-addr=${memory[1]}`,
        `--path-info-service-addr=${memory[2]}`,
        join(tree, "genuine"),
        tree,
      ],
      env: childEnv(),
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = td.decode(out.stderr);
    assertEquals(out.code, 1, stderr);
    // A genuine U+FFFD name needs no FFI: string paths reach it.
    const genuine = await nixOracle(join(tree, "genuine"), join(tmp, "nix"));
    assertEquals(td.decode(out.stdout), genuine.storePath + "\n");
    assert(
      stderr.includes(`${tree}: holds a file name that is not valid UTF-8`) &&
        stderr.includes("--allow-ffi"),
      stderr,
    );
    assert(!stderr.includes("No such file or directory"), stderr);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
