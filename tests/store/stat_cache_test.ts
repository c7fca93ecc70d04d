/**
 * The importer's stat cache, on its own (a clock of our own) and through
 * real `tvix-store import` processes: an unchanged tree is recognised
 * without reading a file (checked with strace), and every kind of change
 * is noticed (same-size rewrite, size change, replaced inode, symlink
 * target, executable bit), each re-import matching `nix-store --add`.
 * Directory records: an unchanged directory is taken whole, and a change
 * to a listing (a file added, removed or renamed, a change deep below, a
 * directory swapped for a look-alike) is noticed with every directory of
 * the old tree recorded.
 */
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { assert, assertEquals } from "../assert.ts";
import { RACY_MS, StatCache } from "../../src/store/stat_cache.ts";
import {
  type DirectoryRecord,
  type FileIdentity,
  ingestPath,
  nodeFromStats,
} from "../../src/castore/import/fs.ts";
import { toHex } from "../../src/castore/digest.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import { childEnv, DENO_DIR, localStoreArgs, MAIN } from "../cli/helpers.ts";
import { nixOracle } from "./tree_gen.ts";
import { replaceDuringImport, servicesWithHook } from "./hooked_services.ts";
import { importPath } from "../../src/store/import.ts";

const REPLACE_CHILD = new URL("./replace_child.ts", import.meta.url).pathname;
import { MemoryPathInfoService } from "../../src/store/pathinfo/memory.ts";

const digest = (n: number) => new Uint8Array(32).fill(n);
const file = (over: Partial<FileIdentity> = {}): FileIdentity => ({
  dev: 1,
  ino: 42,
  size: 100,
  mtimeMs: 1_000_000,
  ctimeMs: 1_000_000,
  executable: false,
  ...over,
});

async function withCacheFile(fn: (path: string) => Promise<void> | void) {
  const dir = await Deno.makeTempDir({ prefix: "tvix-statcache-" });
  try {
    await fn(join(dir, "sub", "cache.sqlite"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("stat cache: a recorded file is known while its stat is unchanged", () =>
  withCacheFile((path) => {
    const cache = StatCache.open(path)!;
    try {
      assert(cache.rememberFile(file(), digest(1), 1_000_000 + RACY_MS + 1));
      assertEquals(cache.fileDigest(file()), digest(1));
      for (
        const changed of [
          { size: 101 },
          { mtimeMs: 1_000_001 },
          { ctimeMs: 1_000_001 },
          { ino: 43 },
          { dev: 2 },
          { executable: true },
        ]
      ) {
        assertEquals(cache.fileDigest(file(changed)), undefined, JSON.stringify(changed));
      }
      cache.rememberNar("d:abc:3", { narSize: 123n, narSha256: digest(7) });
      assertEquals(cache.narSummary("d:abc:3"), { narSize: 123n, narSha256: digest(7) });
      assertEquals(cache.narSummary("d:other:3"), undefined);
    } finally {
      cache.close();
    }
  }));

Deno.test("stat cache: a file changed within RACY_MS of being examined is not recorded", () =>
  withCacheFile((path) => {
    const cache = StatCache.open(path)!;
    try {
      // ctime just inside the window: a second change in the same clock
      // tick could keep the stat, so the file must be read again next time.
      assert(!cache.rememberFile(file({ ctimeMs: 1_000_000 }), digest(1), 1_000_000 + RACY_MS));
      assert(!cache.rememberFile(file({ mtimeMs: 2_000_000 }), digest(1), 2_000_000));
      // No inode or times (recorded as -1 by the walk): never recorded.
      for (const unknown of [{ ino: -1 }, { mtimeMs: -1 }, { ctimeMs: -1 }]) {
        assert(!cache.rememberFile(file(unknown), digest(1), 9_000_000), JSON.stringify(unknown));
      }
      assertEquals(cache.fileDigest(file()), undefined);
    } finally {
      cache.close();
    }
  }));

Deno.test("stat cache: a directory record is known by its listing key, unless it was racy", () =>
  withCacheFile((path) => {
    const cache = StatCache.open(path)!;
    try {
      const record = (over: Partial<DirectoryRecord> = {}): DirectoryRecord => ({
        key: digest(1),
        newestChange: 1_000_000,
        examinedAt: 1_000_000 + RACY_MS + 1,
        digest: digest(2),
        size: 17n,
        ...over,
      });
      assert(cache.rememberDirectory(record()));
      assertEquals(cache.directory(digest(1)), { digest: digest(2), size: 17n });
      assertEquals(cache.directory(digest(3)), undefined);
      // A file or symlink in it changed within the window, or has no identity.
      assert(!cache.rememberDirectory(record({ key: digest(4), examinedAt: 1_000_000 + RACY_MS })));
      assert(!cache.rememberDirectory(record({ key: digest(5), newestChange: Infinity })));
      assertEquals(cache.directory(digest(4)), undefined);
      assertEquals(cache.directory(digest(5)), undefined);
      // An empty directory has nothing that could change unseen.
      assert(cache.rememberDirectory(record({ key: digest(6), newestChange: -Infinity })));
    } finally {
      cache.close();
    }
  }));

Deno.test("nodeFromStats takes unchanged directories whole and asks file digests only below a change", async () => {
  const tree = await Deno.makeTempDir({ prefix: "tvix-statcache-dirs-" });
  try {
    for (const d of ["a/deep", "b"]) await Deno.mkdir(join(tree, d), { recursive: true });
    for (const f of ["top", "a/one", "a/deep/two", "b/three"]) {
      await Deno.writeTextFile(join(tree, f), `contents of ${f}\n`);
    }
    await Deno.symlink("a/one", join(tree, "link"));
    const ingest = async () => {
      const files = new Map<string, Uint8Array>();
      const dirs = new Map<string, { digest: Uint8Array; size: bigint }>();
      const node = await ingestPath(tree, new MemoryBlobService(), new MemoryDirectoryService(), {
        onFile: (f, d) => files.set(`${f.dev}:${f.ino}:${f.ctimeMs}`, d),
        onDirectory: (r) => dirs.set(toHex(r.key), { digest: r.digest, size: r.size }),
      });
      return { node, files, dirs };
    };
    const before = await ingest();
    assertEquals(before.dirs.size, 4);
    const asked: number[] = [];
    const known = (files: Map<string, Uint8Array>) => ({
      fileDigests: (fs: FileIdentity[]) => {
        asked.push(fs.length);
        return fs.map((f) => files.get(`${f.dev}:${f.ino}:${f.ctimeMs}`));
      },
      directory: (key: Uint8Array) => before.dirs.get(toHex(key)),
    });
    assertEquals(nodeFromStats(tree, known(before.files)), before.node);
    assertEquals(asked, [], "file digests asked for an unchanged tree");

    // A file added deep below: `a/deep`, `a` and the root miss, `b` is taken whole.
    await Deno.writeTextFile(join(tree, "a/deep/new"), "new\n");
    const after = await ingest();
    assertEquals(nodeFromStats(tree, known(after.files)), after.node);
    assertEquals(asked.sort(), [1, 1, 2], "files of a/deep, a and the root, not of b");
  } finally {
    await Deno.remove(tree, { recursive: true });
  }
});

Deno.test("stat cache: a corrupt cache file is replaced, costing only speed", () =>
  withCacheFile(async (path) => {
    await Deno.mkdir(join(path, ".."), { recursive: true });
    await Deno.writeTextFile(path, "this is not an SQLite database, not even close to one");
    const cache = StatCache.open(path);
    assert(cache, "no cache after a corrupt file");
    try {
      assert(cache.rememberFile(file(), digest(3), 1_000_000 + RACY_MS + 1));
      assertEquals(cache.fileDigest(file()), digest(3));
    } finally {
      cache.close();
    }
  }));

Deno.test("stat cache: a cache another import holds busy is left alone, and this run goes without", () =>
  withCacheFile(async (path) => {
    const first = StatCache.open(path)!;
    assert(first.rememberFile(file(), digest(4), 1_000_000 + RACY_MS + 1));
    first.close();
    const ino = (await Deno.stat(path)).ino;
    // Another import in the middle of writing its records.
    const other = new DatabaseSync(path);
    other.exec("BEGIN IMMEDIATE");
    try {
      assertEquals(StatCache.open(path), undefined, "no cache while it is busy");
      assertEquals((await Deno.stat(path)).ino, ino, "the busy file was replaced");
    } finally {
      other.exec("COMMIT");
      other.close();
    }
    const later = StatCache.open(path)!;
    try {
      assertEquals(later.fileDigest(file()), digest(4), "records kept");
    } finally {
      later.close();
    }
  }));

/** Runs `tvix-store import` (optionally under strace, listing opened files). */
async function runImport(store: string, tree: string, cacheHome: string, traceTo?: string) {
  const args = ["run", "-A", MAIN, "import", ...localStoreArgs(store), tree];
  const cmd = traceTo
    ? new Deno.Command("strace", {
      args: ["-f", "-qq", "-y", "-e", "trace=openat", "-o", traceTo, Deno.execPath(), ...args],
      env: childEnv({ XDG_CACHE_HOME: cacheHome, DENO_DIR }),
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    })
    : new Deno.Command(Deno.execPath(), {
      args,
      env: childEnv({ XDG_CACHE_HOME: cacheHome, DENO_DIR }),
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    });
  const out = await cmd.output();
  const td = new TextDecoder();
  assertEquals(out.code, 0, td.decode(out.stderr));
  return td.decode(out.stdout).trim();
}

/**
 * Regular files under `tree` that the traced process opened, by the path
 * strace's `-y` gives the new descriptor: the import opens files relative
 * to their directory's descriptor. Directories are told apart by what is
 * there now, not by the call's flags: a call interrupted by another
 * thread's comes back as a "resumed" line without them.
 */
async function filesRead(trace: string, tree: string): Promise<string[]> {
  const lines = (await Deno.readTextFile(trace)).split("\n");
  return lines
    .map((l) => / = \d+<([^>]+)>$/.exec(l)?.[1])
    .filter((p): p is string => p !== undefined && p.startsWith(`${tree}/`))
    .filter((p) => {
      try {
        return !Deno.lstatSync(p).isDirectory;
      } catch {
        return true; // gone since: count it
      }
    });
}

Deno.test("import with the stat cache: unchanged trees read nothing, every change is noticed", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-statcache-e2e-" });
  try {
    const tree = join(tmp, "tree");
    const store = join(tmp, "store");
    const cacheHome = join(tmp, "cache");
    await Deno.mkdir(join(tree, "sub"), { recursive: true });
    await Deno.writeTextFile(join(tree, "a.txt"), "alpha contents\n");
    await Deno.writeTextFile(join(tree, "sub", "b.txt"), "beta contents\n");
    await Deno.writeTextFile(join(tree, "sub", "c.sh"), "#!/bin/sh\necho c\n");
    await Deno.writeFile(join(tree, "big.bin"), new Uint8Array(3 << 20).fill(5));
    await Deno.symlink("a.txt", join(tree, "link"));
    // Older than the racy window, so the first import may record them.
    await new Promise((r) => setTimeout(r, RACY_MS + 100));

    let nixRound = 0;
    const expectNix = async (got: string, what: string) => {
      const want = await nixOracle(tree, join(tmp, `nix-${nixRound++}`));
      assertEquals(got, want.storePath, what);
    };

    const first = join(tmp, "trace-first");
    await expectNix(await runImport(store, tree, cacheHome, first), "first import");
    // The trace sees reads at all: the first import reads every file.
    assertEquals(
      new Set(await filesRead(first, tree)).size,
      4,
      "strace saw the first import read its four regular files",
    );
    const trace = join(tmp, "trace");
    await expectNix(await runImport(store, tree, cacheHome, trace), "unchanged re-import");
    assertEquals(await filesRead(trace, tree), [], "an unchanged re-import read files");

    const changes: [string, () => Promise<void>][] = [
      ["same-size rewrite", () => Deno.writeTextFile(join(tree, "a.txt"), "ALPHA contents\n")],
      ["size change", () => Deno.writeTextFile(join(tree, "sub", "b.txt"), "beta, longer now\n")],
      ["replaced inode", async () => {
        const p = join(tree, "sub", "c.sh");
        const keep = await Deno.stat(p);
        await Deno.remove(p);
        await Deno.writeTextFile(p, "#!/bin/sh\necho C\n");
        await Deno.utime(p, keep.atime!, keep.mtime!);
      }],
      ["symlink target", async () => {
        await Deno.remove(join(tree, "link"));
        await Deno.symlink("sub/b.txt", join(tree, "link"));
      }],
      ["executable bit", () => Deno.chmod(join(tree, "sub", "c.sh"), 0o755)],
      ["rewrite keeping size and mtime", async () => {
        const p = join(tree, "big.bin");
        const keep = await Deno.stat(p);
        await Deno.writeFile(p, new Uint8Array(3 << 20).fill(6));
        await Deno.utime(p, keep.atime!, keep.mtime!);
      }],
    ];
    for (const [what, change] of changes) {
      await change();
      await expectNix(await runImport(store, tree, cacheHome), what);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("import with directory records: every listing change is noticed, matching nix-store --add", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-statcache-dirs-e2e-" });
  try {
    const tree = join(tmp, "tree");
    const store = join(tmp, "store");
    const cacheHome = join(tmp, "cache");
    const write = async (dir: string, tag: string) => {
      await Deno.mkdir(join(dir, "deep", "er"), { recursive: true });
      await Deno.writeTextFile(join(dir, "x.txt"), `x ${tag}\n`);
      await Deno.writeTextFile(join(dir, "deep", "er", "y.txt"), `y ${tag}\n`);
      await Deno.symlink("x.txt", join(dir, "to-x"));
      // Same names, sizes and mtimes whatever the tag.
      for (const f of ["x.txt", "deep/er/y.txt"]) {
        await Deno.utime(join(dir, f), 1_600_000_000, 1_600_000_000);
      }
    };
    await Deno.mkdir(tree);
    await Deno.writeTextFile(join(tree, "top.txt"), "top\n");
    await write(join(tree, "sub"), "a");
    await write(join(tmp, "look-alike"), "b");

    let nixRound = 0;
    const expectNix = async (got: string, what: string) => {
      const want = await nixOracle(tree, join(tmp, `nix-${nixRound++}`));
      assertEquals(got, want.storePath, what);
    };
    // Every entry older than the racy window, then imported: the whole
    // tree is recorded, directories included.
    const settleAndRecord = async (what: string) => {
      await new Promise((r) => setTimeout(r, RACY_MS + 100));
      await expectNix(await runImport(store, tree, cacheHome), `${what}, recorded`);
    };
    await settleAndRecord("first import");
    const trace = join(tmp, "trace");
    await expectNix(await runImport(store, tree, cacheHome, trace), "unchanged re-import");
    assertEquals(await filesRead(trace, tree), [], "an unchanged re-import read files");

    const changes: [string, () => Promise<void>][] = [
      ["a file added", () => Deno.writeTextFile(join(tree, "sub", "added.txt"), "added\n")],
      ["a file removed", () => Deno.remove(join(tree, "sub", "added.txt"))],
      ["a file renamed", () => Deno.rename(join(tree, "top.txt"), join(tree, "top2.txt"))],
      ["a change deep below", async () => {
        const p = join(tree, "sub", "deep", "er", "y.txt");
        await Deno.writeTextFile(p, "Y a\n");
        await Deno.utime(p, 1_600_000_000, 1_600_000_000);
      }],
      ["a directory swapped for a look-alike", async () => {
        await Deno.rename(join(tree, "sub"), join(tmp, "old-sub"));
        await Deno.rename(join(tmp, "look-alike"), join(tree, "sub"));
      }],
    ];
    for (const [what, change] of changes) {
      await change();
      await expectNix(await runImport(store, tree, cacheHome), what);
      await settleAndRecord(what);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("import: a directory swapped for a look-alike while files are read gives the listed tree, and the cache stays true", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-swap-" });
  try {
    const D = join(tmp, "D"), D2 = join(tmp, "D2"), OLD = join(tmp, "Dold");
    for (const [dir, x] of [[D, "AAAA"], [D2, "BBBB"]]) {
      await Deno.mkdir(dir);
      await Deno.writeTextFile(join(dir, "a"), "1");
      await Deno.writeTextFile(join(dir, "x"), x);
    }
    await new Promise((r) => setTimeout(r, RACY_MS + 100));
    const expected = (await nixOracle(D, join(tmp, "nix"))).storePath;
    const cache = StatCache.open(join(tmp, "cache.sqlite"))!;
    try {
      // Another process swaps D for D2 once the first file has been read.
      const swapping = servicesWithHook(() => {
        Deno.renameSync(D, OLD);
        Deno.renameSync(D2, D);
      });
      const during = await importPath(D, swapping, { statCache: cache });
      assertEquals(during.storePath.absolute(), expected, "the tree as it was listed");
      // Back again: D is the untouched original, which the cache must not misname.
      Deno.renameSync(D, D2);
      Deno.renameSync(OLD, D);
      const again = await importPath(D, swapping, { statCache: cache });
      assertEquals(again.storePath.absolute(), expected);
    } finally {
      cache.close();
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("import: a file replaced by a symlink or a FIFO while the import runs fails it, without following or blocking", async () => {
  for (const kind of ["symlink", "FIFO"] as const) {
    const tmp = await Deno.makeTempDir({ prefix: "tvix-replace-" });
    try {
      const message = await replaceDuringImport(tmp, kind);
      assert(message.startsWith("IngestError: "), message);
      assert(message.includes(`${tmp}/D/x`), message);
      assert(message.includes(`was replaced while the import ran (now a ${kind})`), message);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  }
});

Deno.test("import without FFI: a file replaced by a FIFO or a symlink fails it, without blocking", async () => {
  for (const kind of ["FIFO", "symlink"]) {
    const tmp = await Deno.makeTempDir({ prefix: "tvix-replace-noffi-" });
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-read",
          "--allow-write",
          "--allow-env",
          "--allow-run=mkfifo",
          REPLACE_CHILD,
          tmp,
          kind,
        ],
        env: childEnv(),
        // A blocked open would hang the child: fail instead.
        signal: AbortSignal.timeout(60_000),
      }).output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assertEquals(out.code, 0, text);
      // A symlink is followed by path; the check sees the other file.
      const now = kind === "FIFO" ? "FIFO" : "different file";
      assert(text.includes(`IngestError: ${tmp}/D/x`), text);
      assert(text.includes(`was replaced while the import ran (now a ${now})`), text);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  }
});

Deno.test({
  name:
    "import: files whose inode numbers a JavaScript number cannot hold exactly are never taken from the cache",
  // Needs root to mount tmpfs and overlayfs (whose `xino` sets bit 63).
  ignore: Deno.uid() !== 0,
}, async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-xino-" });
  const mounts: string[] = [];
  const mount = async (args: string[], at: string) => {
    await Deno.mkdir(at, { recursive: true });
    const out = await new Deno.Command("mount", { args: [...args, at], stderr: "piped" }).output();
    if (out.success) mounts.unshift(at);
    return out.success;
  };
  try {
    const lower = join(tmp, "lower"), upper = join(tmp, "upper"), merged = join(tmp, "merged");
    assert(await mount(["-t", "tmpfs", "none"], lower));
    assert(await mount(["-t", "tmpfs", "none"], upper));
    // Two files alike in size and timestamps (to the millisecond, as tar
    // extracts them), different in contents.
    const made = await new Deno.Command("/usr/bin/python3", {
      args: [
        "-c",
        `
import os, sys
for attempt in range(50):
    for d, x in (("D1", b"AAAA"), ("D2", b"BBBB")):
        os.makedirs(os.path.join(sys.argv[1], d), exist_ok=True)
        p = os.path.join(sys.argv[1], d, "f")
        with open(p, "wb") as f: f.write(x)
        os.utime(p, ns=(10**18, 10**18))
    s = [os.lstat(os.path.join(sys.argv[1], d, "f")) for d in ("D1", "D2")]
    if s[0].st_ctime_ns // 10**6 == s[1].st_ctime_ns // 10**6: sys.exit(0)
sys.exit(1)
`,
        lower,
      ],
    }).output();
    assert(made.success, "two files with the same ctime millisecond");
    await Deno.mkdir(join(upper, "u"));
    await Deno.mkdir(join(upper, "w"));
    const opts = `lowerdir=${lower},upperdir=${upper}/u,workdir=${upper}/w,xino=on`;
    assert(await mount(["-t", "overlay", "overlay", "-o", opts], merged));
    const [i1, i2] = [
      Deno.lstatSync(join(merged, "D1/f")).ino!,
      Deno.lstatSync(join(merged, "D2/f")).ino!,
    ];
    assert(i1 > Number.MAX_SAFE_INTEGER, `inode ${i1} holds xino's high bits`);
    assertEquals(i1, i2, "as numbers the two inodes are one");
    await new Promise((r) => setTimeout(r, RACY_MS + 100));

    const services = {
      blob: new MemoryBlobService(),
      directory: new MemoryDirectoryService(),
      pathInfo: new MemoryPathInfoService(),
    };
    const cache = StatCache.open(join(tmp, "cache.sqlite"))!;
    try {
      for (const d of ["D2", "D1", "D2"]) {
        const path = join(merged, d, "f");
        const cached = await importPath(path, services, { statCache: cache });
        const fresh = await importPath(path, services);
        assertEquals(cached.storePath.absolute(), fresh.storePath.absolute(), d);
      }
    } finally {
      cache.close();
    }
  } finally {
    for (const m of mounts) await new Deno.Command("umount", { args: [m] }).output();
    await Deno.remove(tmp, { recursive: true });
  }
});
