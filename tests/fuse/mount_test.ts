/**
 * Upstream's FUSE test scenarios (tvix/castore/src/fs/fuse/tests.rs; see
 * docs/compatibility.md#fuse-behaviour) against a real `tvix-store mount`
 * process over a local store (SQLite + object store), plus the quirk fixes
 * (docs/compatibility.md#q15-fuse-inode-keys-directory-sizes-and-root-listing,
 * docs/compatibility.md#q17-the-show-xattr-flag-cannot-be-turned-off).
 * Runs as root where /dev/fuse exists; skipped otherwise.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import * as F from "../fixtures.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import { makeNode, type NodeVariant } from "../../src/castore/node.ts";
import { encode as nixbase32 } from "../../src/store/nixbase32.ts";
import { SqlitePathInfoService } from "../../src/store/pathinfo/sqlite.ts";
import {
  getXattr,
  listXattrs,
  type MountProcess,
  run,
  runTvix,
  SKIP,
  startMount,
  tempStore,
} from "./harness.ts";

const b = F.b;
const BLOB_A_NAME = "00000000000000000000000000000000-test";
const BLOB_B_NAME = "55555555555555555555555555555555-test";
const HELLOWORLD_BLOB_NAME = "66666666666666666666666666666666-test";
const SYMLINK_NAME = "11111111111111111111111111111111-test";
const SYMLINK_NAME2 = "44444444444444444444444444444444-test";
const DIRECTORY_WITH_KEEP_NAME = "22222222222222222222222222222222-test";
const DIRECTORY_COMPLICATED_NAME = "33333333333333333333333333333333-test";
const MISSING_DIRECTORY_NAME = "77777777777777777777777777777777-test";
const MISSING_BLOB_NAME = "88888888888888888888888888888888-test";
const DANGLING_SYMLINK_NAME = "99999999999999999999999999999999-test";
/**
 * Same contents as HELLOWORLD_BLOB_NAME, not executable: must get its own inode
 * (docs/compatibility.md#q15-fuse-inode-keys-directory-sizes-and-root-listing).
 */
const HELLOWORLD_PLAIN_NAME = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello";
/** Extra root entries so listing the root takes several READDIR calls. */
const EXTRA_ROOTS = 300;

function roots(): NodeVariant[] {
  const nodes = [
    makeNode.file(b(BLOB_A_NAME), F.BLOB_A_DIGEST, 2n),
    makeNode.file(b(BLOB_B_NAME), F.BLOB_B_DIGEST, BigInt(F.BLOB_B.length)),
    makeNode.file(b(HELLOWORLD_BLOB_NAME), F.HELLOWORLD_BLOB_DIGEST, 12n, true),
    makeNode.file(b(HELLOWORLD_PLAIN_NAME), F.HELLOWORLD_BLOB_DIGEST, 12n, false),
    makeNode.symlink(b(SYMLINK_NAME), b(BLOB_A_NAME)),
    makeNode.symlink(b(SYMLINK_NAME2), b("/nix/store/somewhereelse")),
    makeNode.symlink(b(DANGLING_SYMLINK_NAME), b("00000000000000000000000000000000-missing")),
    makeNode.directory(
      b(DIRECTORY_WITH_KEEP_NAME),
      directoryDigest(F.DIRECTORY_WITH_KEEP),
      1n,
    ),
    makeNode.directory(
      b(DIRECTORY_COMPLICATED_NAME),
      directoryDigest(F.DIRECTORY_COMPLICATED),
      4n,
    ),
    makeNode.directory(b(MISSING_DIRECTORY_NAME), F.DUMMY_DIGEST, 0n),
    makeNode.file(b(MISSING_BLOB_NAME), F.DUMMY_DIGEST_2, 10n),
  ];
  for (let i = 0; i < EXTRA_ROOTS; i++) {
    const digest = new Uint8Array(20);
    new DataView(digest.buffer).setUint32(0, 0x01000000 + i);
    nodes.push(makeNode.symlink(b(`${nixbase32(digest)}-extra-${i}`), b(`target-${i}`)));
  }
  return nodes;
}

function errCode(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
  return undefined;
}

Deno.test({
  name: "mount: upstream's FUSE scenarios (docs/compatibility.md#fuse-behaviour)",
  ignore: SKIP,
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  const store = await tempStore();
  const mounts: MountProcess[] = [];
  try {
    const svc = await store.open();
    try {
      for (const data of [F.BLOB_A, F.BLOB_B, F.HELLOWORLD_BLOB_CONTENTS, F.EMPTY_BLOB_CONTENTS]) {
        const w = svc.blob.openWrite();
        await w.write(data);
        await w.close();
      }
      await svc.directory.put(F.DIRECTORY_WITH_KEEP);
      await svc.directory.put(F.DIRECTORY_COMPLICATED);
    } finally {
      await svc.close();
    }
    // Straight into the table: two roots name a directory and a blob the
    // store does not hold (damage), which the store's commit point refuses.
    const infos = new SqlitePathInfoService(join(store.dir, "store.sqlite"));
    try {
      for (const node of roots()) {
        await infos.put({ node: { node }, references: [], narinfo: undefined });
      }
    } finally {
      await infos.close();
    }

    // As upstream: 4 threads, no listing. Second mount: listing on, xattrs off
    // (docs/compatibility.md#q17-the-show-xattr-flag-cannot-be-turned-off).
    const plain = await startMount({ addrs: store.addrs, args: ["--threads=4"] });
    mounts.push(plain);
    const listing = await startMount({
      addrs: store.addrs,
      args: ["--threads=2", "--list-root", "--no-show-xattr"],
    });
    mounts.push(listing);
    const p = (...parts: string[]) => join(plain.mountpoint, ...parts);

    await t.step("root: listing without --list-root fails with EPERM", () => {
      assertEquals(errCode(() => [...Deno.readDirSync(plain.mountpoint)]), "EPERM");
    });

    // docs/compatibility.md#q15-fuse-inode-keys-directory-sizes-and-root-listing
    await t.step("root_with_listing: every root entry, none skipped", () => {
      const entries = [...Deno.readDirSync(listing.mountpoint)];
      assertEquals(
        entries.map((e) => e.name).sort(),
        roots().map((n) => new TextDecoder().decode(n.value.name)).sort(),
      );
      const a = entries.find((e) => e.name === BLOB_A_NAME)!;
      assert(a.isFile);
      const st = Deno.lstatSync(join(listing.mountpoint, BLOB_A_NAME));
      assertEquals([st.mode, st.size], [0o100444, 2]);
    });

    await t.step("stat_file_at_root / read_file_at_root", () => {
      const st = Deno.statSync(p(BLOB_A_NAME));
      assert(st.isFile);
      assertEquals([st.mode! & 0o7777, st.size], [0o444, 2]);
      assertEquals(Deno.readFileSync(p(BLOB_A_NAME)), F.BLOB_A);
    });

    await t.step("read_large_file_at_root (several chunks)", () => {
      assertEquals(Deno.statSync(p(BLOB_B_NAME)).size, F.BLOB_B.length);
      assertEquals(Deno.readFileSync(p(BLOB_B_NAME)), F.BLOB_B);
      // A read in the middle fetches only the chunks covering it.
      const f = Deno.openSync(p(BLOB_B_NAME));
      try {
        f.seekSync(700_001, Deno.SeekMode.Start);
        const buf = new Uint8Array(1000);
        assertEquals(f.readSync(buf), 1000);
        assertEquals(buf, F.BLOB_B.subarray(700_001, 701_001));
      } finally {
        f.close();
      }
    });

    await t.step("symlink_readlink: dangling relative target", () => {
      assertEquals(Deno.readLinkSync(p(SYMLINK_NAME)), BLOB_A_NAME);
      assertEquals(errCode(() => Deno.statSync(p(DANGLING_SYMLINK_NAME))), "ENOENT");
      assert(Deno.lstatSync(p(DANGLING_SYMLINK_NAME)).isSymlink);
      assertEquals(errCode(() => Deno.readFileSync(p(DANGLING_SYMLINK_NAME))), "ENOENT");
    });

    await t.step("read_stat_through_symlink", () => {
      const viaLink = Deno.statSync(p(SYMLINK_NAME));
      const direct = Deno.statSync(p(BLOB_A_NAME));
      assertEquals([viaLink.ino, viaLink.size, viaLink.mode], [
        direct.ino,
        direct.size,
        direct.mode,
      ]);
      assertEquals(Deno.readFileSync(p(SYMLINK_NAME)), F.BLOB_A);
    });

    await t.step("read_stat_directory", () => {
      const st = Deno.statSync(p(DIRECTORY_WITH_KEEP_NAME));
      assert(st.isDirectory);
      assertEquals(st.mode! & 0o7777, 0o555);
    });

    await t.step("xattr", async () => {
      assertEquals((await listXattrs(p(DIRECTORY_WITH_KEEP_NAME))).names, [
        "user.tvix.castore.directory.digest",
      ]);
      assertEquals(
        await getXattr(p(DIRECTORY_WITH_KEEP_NAME), "user.tvix.castore.directory.digest"),
        "b3:i1tdZCtka7jtUEsIYsOUE+h+V0kUl9570HWVP3uDgQ4=",
      );
      assertEquals((await listXattrs(p(BLOB_A_NAME))).names, ["user.tvix.castore.blob.digest"]);
      assertEquals(
        await getXattr(p(BLOB_A_NAME), "user.tvix.castore.blob.digest"),
        "b3:e3AVu5LPCzGAN3AqbN2B3uQSJPc0aEwsEizWNZyx7mM=",
      );
      assertEquals(await getXattr(p(BLOB_A_NAME), "user.cheesecake"), undefined);
      assertEquals((await listXattrs(p(SYMLINK_NAME2))).names, []);
    });

    // docs/compatibility.md#q17-the-show-xattr-flag-cannot-be-turned-off
    await t.step("--no-show-xattr hides the digests", async () => {
      const r = await listXattrs(join(listing.mountpoint, BLOB_A_NAME));
      assertEquals(r.names, []);
      assertEquals(
        await getXattr(join(listing.mountpoint, BLOB_A_NAME), "user.tvix.castore.blob.digest"),
        undefined,
      );
    });

    await t.step("read_blob_inside_dir / read_blob_deep_inside_dir", () => {
      for (
        const path of [
          p(DIRECTORY_WITH_KEEP_NAME, ".keep"),
          p(DIRECTORY_COMPLICATED_NAME, "keep", ".keep"),
        ]
      ) {
        const st = Deno.statSync(path);
        assert(st.isFile);
        assertEquals([st.mode! & 0o7777, st.size], [0o444, 0]);
        assertEquals(Deno.readFileSync(path), new Uint8Array(0));
      }
    });

    await t.step("readdir: merged name order, no . and ..", () => {
      const entries = [...Deno.readDirSync(p(DIRECTORY_COMPLICATED_NAME))];
      assertEquals(entries.map((e) => [e.name, e.isFile, e.isSymlink, e.isDirectory]), [
        [".keep", true, false, false],
        ["aa", false, true, false],
        ["keep", false, false, true],
      ]);
      assertEquals(Deno.statSync(p(DIRECTORY_COMPLICATED_NAME, ".keep")).size, 0);
      assertEquals(
        [...Deno.readDirSync(p(DIRECTORY_COMPLICATED_NAME, "keep"))].map((e) => e.name),
        [
          ".keep",
        ],
      );
    });

    await t.step("check_attributes", async () => {
      const file = Deno.lstatSync(p(BLOB_A_NAME));
      const exe = Deno.lstatSync(p(HELLOWORLD_BLOB_NAME));
      const dir = Deno.lstatSync(p(DIRECTORY_WITH_KEEP_NAME));
      const link = Deno.lstatSync(p(SYMLINK_NAME));
      assertEquals(file.mode, 0o100444);
      assertEquals(exe.mode, 0o100555);
      assertEquals(dir.mode, 0o040555);
      assertEquals(link.mode, 0o120444);
      assertEquals(file.size, 2);
      assertEquals(dir.size, 1);
      for (const st of [file, exe, dir, link]) assertEquals([st.uid, st.gid], [0, 0]);
      const paths = [BLOB_A_NAME, HELLOWORLD_BLOB_NAME, DIRECTORY_WITH_KEEP_NAME, SYMLINK_NAME];
      const times = await run("stat", ["-c", "%X %Y %Z", ...paths.map((n) => p(n))]);
      assertEquals(times.stdout, "0 0 0\n".repeat(paths.length));
    });

    await t.step("compare_inodes_*: shared by content", () => {
      const ino = (path: string) => Deno.lstatSync(path).ino;
      assertEquals(ino(p(DIRECTORY_WITH_KEEP_NAME)), ino(p(DIRECTORY_COMPLICATED_NAME, "keep")));
      assertEquals(
        ino(p(DIRECTORY_COMPLICATED_NAME, ".keep")),
        ino(p(DIRECTORY_COMPLICATED_NAME, "keep", ".keep")),
      );
      assertEquals(ino(p(DIRECTORY_COMPLICATED_NAME, "aa")), ino(p(SYMLINK_NAME2)));
    });

    // docs/compatibility.md#q15-fuse-inode-keys-directory-sizes-and-root-listing
    await t.step("equal contents, different executable flag: separate inodes", () => {
      const exe = Deno.lstatSync(p(HELLOWORLD_BLOB_NAME));
      const plainFile = Deno.lstatSync(p(HELLOWORLD_PLAIN_NAME));
      assert(exe.ino !== plainFile.ino);
      assertEquals([exe.mode, plainFile.mode], [0o100555, 0o100444]);
      assertEquals(Deno.readFileSync(p(HELLOWORLD_PLAIN_NAME)), F.HELLOWORLD_BLOB_CONTENTS);
    });

    await t.step("read_wrong_paths_in_root", () => {
      assertEquals(
        errCode(() => Deno.lstatSync(p("00000000000000000000000000000000-tes"))),
        "ENOENT",
      );
      assertEquals(
        errCode(() => Deno.lstatSync(p("0000000000000000000000000000000-test"))),
        "ENOENT",
      );
      assert(Deno.lstatSync(p(BLOB_A_NAME)).isFile);
      assertEquals(
        errCode(() => Deno.lstatSync(p("00000000000000000000000000000000-tes"))),
        "ENOENT",
      );
      assertEquals(errCode(() => Deno.lstatSync(p("not a store path"))), "ENOENT");
    });

    await t.step("disallow_writes: EROFS", () => {
      assertEquals(errCode(() => Deno.writeFileSync(p("newfile"), new Uint8Array(1))), "EROFS");
      assertEquals(errCode(() => Deno.mkdirSync(p("newdir"))), "EROFS");
      assertEquals(errCode(() => Deno.writeFileSync(p(BLOB_A_NAME), new Uint8Array(1))), "EROFS");
    });

    await t.step("missing_directory: stat ok, listing and children fail", async () => {
      assert(Deno.statSync(p(MISSING_DIRECTORY_NAME)).isDirectory);
      // Deno's readDir drops getdents errors, so ask ls.
      const ls = await run("ls", [p(MISSING_DIRECTORY_NAME)]);
      assert(ls.code !== 0 && ls.stderr.includes("Input/output error"), ls.stderr);
      assertEquals(errCode(() => Deno.statSync(p(MISSING_DIRECTORY_NAME, "child"))), "EIO");
    });

    await t.step("missing_blob: stat ok, read fails", () => {
      assertEquals(Deno.statSync(p(MISSING_BLOB_NAME)).size, 10);
      assertEquals(errCode(() => Deno.readFileSync(p(MISSING_BLOB_NAME))), "EIO");
    });

    await t.step("mount: unmounts cleanly", async () => {
      for (const m of mounts.splice(0)) {
        const status = await m.stop();
        assertEquals(status.code, 0, m.log());
      }
    });
  } finally {
    for (const m of mounts) await m.stop();
    await store.remove();
  }
});

Deno.test({
  name: "mount: refuses in-memory services with a clear error naming the flag",
  ignore: SKIP,
}, async () => {
  const mnt = await Deno.makeTempDir();
  try {
    for (
      const [blob, meta] of [
        ["memory://", "memory://"],
        ["objectstore+memory://", "sqlite:///tmp/x.sqlite"],
        ["objectstore+file:///tmp/x", "sqlite://"],
      ]
    ) {
      const r = await runTvix([
        "mount",
        mnt,
        `--blob-service-addr=${blob}`,
        `--directory-service-addr=${meta}`,
        `--path-info-service-addr=${meta}`,
      ]);
      assertEquals(r.code, 1);
      assert(r.stderr.includes("in-memory services cannot be used by mount"), r.stderr);
      const flag = blob.includes("memory") ? "--blob-service-addr" : "--directory-service-addr";
      assert(r.stderr.includes(flag), r.stderr);
    }
  } finally {
    await Deno.remove(mnt);
  }
});
