/**
 * Round trip: a generated tree (exec bits, symlinks, empty files and
 * directories, UTF-8 names, files of many chunks, equal contents with
 * different modes) imported with `tvix-store import` reads back through the
 * mount identical to the source: `diff -r --no-dereference`, modes, and the
 * xattr digests. Over local backends and over `grpc+http://` to a daemon.
 */
import { join, relative } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { b3Display, blake3, EMPTY_DIGEST } from "../../src/castore/digest.ts";
import type { ServiceAddrs } from "../../src/store/services.ts";
import { writeEdgeCaseTree } from "../store/tree_gen.ts";
import { startDaemon } from "../grpc/daemon_harness.ts";
import { addrFlags, run, runTvix, SKIP, startMount, tempStore } from "./harness.ts";

/** Every path under `root` (relative, `""` = root), parents first. */
async function walk(root: string, rel = ""): Promise<string[]> {
  const out = [rel];
  const st = await Deno.lstat(join(root, rel));
  if (!st.isDirectory) return out;
  for await (const e of Deno.readDir(join(root, rel))) {
    out.push(...await walk(root, join(rel, e.name)));
  }
  return out;
}

/** `getfattr -R` of the whole tree: path relative to `root` → attribute name → value. */
async function dumpXattrs(root: string): Promise<Map<string, Map<string, string>>> {
  const r = await run("getfattr", ["-R", "-P", "-h", "-d", "-m", "-", "--absolute-names", root]);
  assertEquals(r.code, 0, r.stderr);
  const out = new Map<string, Map<string, string>>();
  let current: Map<string, string> | undefined;
  for (const line of r.stdout.split("\n")) {
    if (line.startsWith("# file: ")) {
      // getfattr prints names as UTF-8, escaping control bytes and `\` as octal.
      const path = line.slice(8).replace(
        /\\([0-7]{3})/g,
        (_, o) => String.fromCharCode(parseInt(o, 8)),
      );
      current = new Map();
      out.set(relative(root, path), current);
    } else if (line && current) {
      const eq = line.indexOf("=");
      current.set(line.slice(0, eq), JSON.parse(line.slice(eq + 1)));
    }
  }
  return out;
}

async function checkRoundTrip(addrs: ServiceAddrs): Promise<void> {
  const src = await Deno.makeTempDir({ prefix: "tvix-fuse-src-" });
  try {
    const tree = join(src, "tree");
    await writeEdgeCaseTree(tree);
    const imported = await runTvix(["import", tree, ...addrFlags(addrs)]);
    assertEquals(imported.code, 0, imported.stderr);
    const storePath = imported.stdout.trim();
    assert(/^\/nix\/store\/[0-9a-z]{32}-tree$/.test(storePath), storePath);

    const m = await startMount({ addrs, args: ["--threads=2"] });
    try {
      const mounted = join(m.mountpoint, storePath.slice("/nix/store/".length));
      const diff = await run("diff", ["-r", "--no-dereference", tree, mounted]);
      assertEquals(diff.code, 0, diff.stdout + diff.stderr);

      const xattrs = await dumpXattrs(mounted);
      const paths = await walk(tree);
      assertEquals((await walk(mounted)).sort(), [...paths].sort());
      for (const rel of paths) {
        const s = await Deno.lstat(join(tree, rel));
        const t = await Deno.lstat(join(mounted, rel));
        const attrs = xattrs.get(rel) ?? new Map();
        if (s.isSymlink) {
          assertEquals(t.mode, 0o120444, rel);
          assertEquals(
            await Deno.readLink(join(mounted, rel)),
            await Deno.readLink(join(tree, rel)),
          );
          assertEquals(attrs.size, 0, rel);
        } else if (s.isDirectory) {
          assertEquals(t.mode, 0o040555, rel);
          const digest = attrs.get("user.tvix.castore.directory.digest");
          assert(/^b3:[A-Za-z0-9+/]{43}=$/.test(digest ?? ""), `${rel}: ${digest}`);
          if (rel === "emptydir") assertEquals(digest, b3Display(EMPTY_DIGEST));
        } else {
          // Nix keeps only the owner's executable bit.
          assertEquals(t.mode, (s.mode! & 0o100) ? 0o100555 : 0o100444, rel);
          assertEquals(t.size, s.size, rel);
          const data = await Deno.readFile(join(tree, rel));
          assertEquals(attrs.get("user.tvix.castore.blob.digest"), b3Display(blake3(data)), rel);
        }
      }
      // Equal contents, different modes: different inodes
      // (docs/compatibility.md#q15-fuse-inode-keys-directory-sizes-and-root-listing).
      const a = await Deno.lstat(join(mounted, "sizes/dup-a"));
      const b = await Deno.lstat(join(mounted, "sizes/dup-b"));
      assert(a.ino !== b.ino && a.mode !== b.mode);
      assertEquals((await m.stop()).code, 0, m.log());
    } finally {
      await m.stop();
    }
  } finally {
    await Deno.remove(src, { recursive: true });
  }
}

Deno.test(
  { name: "mount round trip: local backends (SQLite + object store)", ignore: SKIP },
  async () => {
    const store = await tempStore();
    try {
      await checkRoundTrip(store.addrs);
    } finally {
      await store.remove();
    }
  },
);

Deno.test({
  name: "mount round trip: grpc+http:// to a daemon",
  ignore: SKIP,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const store = await tempStore();
  const daemon = await startDaemon({ home: store.dir, args: addrFlags(store.addrs) });
  try {
    const url = `grpc+http://${daemon.address}`;
    await checkRoundTrip({
      blobServiceAddr: url,
      directoryServiceAddr: url,
      pathInfoServiceAddr: url,
    });
  } finally {
    await daemon.stop();
    await store.remove();
  }
});
