/**
 * Directory listings shared by the FUSE Workers (`src/fuse/shared_listings.ts`):
 * the table itself, and a real mount whose Workers all answer from a
 * listing one of them fetched.
 */
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { SharedListings } from "../../src/fuse/shared_listings.ts";
import { StoreFs } from "../../src/fuse/filesystem.ts";
import { InodeTable } from "../../src/fuse/inodes.ts";
import { addrFlags, run, runTvix, SKIP, startMount, tempStore } from "./harness.ts";
import { startDaemon } from "../grpc/daemon_harness.ts";

const enc = new TextEncoder();
const names = (...s: string[]) => s.map((x) => enc.encode(x));

Deno.test("shared listings: what one view publishes another reads, unchanged", () => {
  const a = SharedListings.create({ maxInodes: 100, arenaBytes: 4096 });
  const b = SharedListings.attach(a.buffer);
  assertEquals(b.get(7), undefined);
  const listing = { names: names("a", "b\u00e4", "c".repeat(255)), inos: [9, 12, 2 ** 31 + 5] };
  assert(a.publish(7, listing));
  const got = b.get(7)!;
  assertEquals(got.inos, listing.inos);
  assertEquals(got.names, listing.names);
  // An empty directory is a listing too.
  assert(a.publish(8, { names: [], inos: [] }));
  assertEquals(b.get(8), { names: [], inos: [] });
});

Deno.test("shared listings: a name too long for its length field is not shared (the Worker keeps its own)", () => {
  const a = SharedListings.create({ maxInodes: 100, arenaBytes: 1 << 20 });
  const b = SharedListings.attach(a.buffer);
  const long = new Uint8Array(65_539).fill(0x61);
  assert(!a.publish(7, { names: [long, enc.encode("x")], inos: [7, 8] }));
  assertEquals(b.get(7), undefined);
  // The longest a length field holds still round-trips, and the table goes on working.
  const longest = new Uint8Array(0xffff).fill(0x62);
  assert(a.publish(9, { names: [longest, enc.encode("y")], inos: [3, 4] }));
  assertEquals(b.get(9), { names: [longest, enc.encode("y")], inos: [3, 4] });
});

Deno.test("shared listings: the first publication stays; a full arena or a bad inode refuses", () => {
  const t = SharedListings.create({ maxInodes: 10, arenaBytes: 64 });
  assert(t.publish(1, { names: names("first"), inos: [3] }));
  assert(t.publish(1, { names: names("second"), inos: [4] }), "already there is fine");
  assertEquals(t.get(1)!.names, names("first"));
  // 4 + 6 + 40 bytes > what is left of 64.
  assert(!t.publish(2, { names: names("x".repeat(40)), inos: [5] }));
  assertEquals(t.get(2), undefined);
  assert(!t.publish(10, { names: [], inos: [] }));
  assert(!t.publish(-1, { names: [], inos: [] }));
  assertEquals(t.get(10), undefined);
  // The counter does not run away after refusals: small listings still fit.
  for (let i = 0; i < 1000; i++) t.publish(3, { names: names("y".repeat(40)), inos: [1] });
  assert(t.publish(4, { names: names("z"), inos: [6] }));
  assertEquals(t.get(4)!.names, names("z"));
});

Deno.test({
  name: "mount: every Worker lists a directory another Worker fetched, without the backend",
  ignore: SKIP,
}, async () => {
  const store = await tempStore();
  const src = await Deno.makeTempDir();
  try {
    for (let i = 0; i < 30; i++) await Deno.writeTextFile(join(src, `f${i}`), `${i}\n`);
    await Deno.mkdir(join(src, "sub"));
    await Deno.writeTextFile(join(src, "sub", "x"), "x");
    const imported = await runTvix(["import", src, ...addrFlags(store.addrs)]);
    assertEquals(imported.code, 0, imported.stderr);
    const m = await startMount({ addrs: store.addrs, args: ["--threads=4"] });
    try {
      const root = join(m.mountpoint, imported.stdout.trim().slice("/nix/store/".length));
      const first = await run("ls", [root]);
      assertEquals(first.code, 0, first.stderr);
      // From now on no Worker can fetch the directory from the store.
      const db = new DatabaseSync(join(store.dir, "store.sqlite"));
      db.exec("DELETE FROM directories");
      db.close();
      // The kernel does not cache listings: each ls goes to some Worker.
      for (let i = 0; i < 24; i++) {
        const r = await run("ls", [root]);
        assertEquals(r.code, 0, r.stderr);
        assertEquals(r.stdout, first.stdout);
      }
      // A directory nobody listed yet is gone for real.
      const sub = await run("ls", [join(root, "sub")]);
      assert(sub.code !== 0, "sub was never listed, so it must come from the (emptied) store");
    } finally {
      await m.stop();
    }
  } finally {
    await Deno.remove(src, { recursive: true });
    await store.remove();
  }
});

Deno.test({
  name: "mount over grpc+http: a small subtree comes in one fetch, every listing from it",
  ignore: SKIP,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const store = await tempStore();
  const src = await Deno.makeTempDir();
  try {
    // 3 levels, 7 directories, 21 files: far below the prefetch limit.
    for (const d of ["a", "a/b", "a/b/c", "d", "d/e", "d/f"]) {
      await Deno.mkdir(join(src, d), { recursive: true });
      for (let i = 0; i < 3; i++) await Deno.writeTextFile(join(src, d, `f${i}`), `${d}${i}`);
    }
    for (let i = 0; i < 3; i++) await Deno.writeTextFile(join(src, `top${i}`), `${i}`);
    const imported = await runTvix(["import", src, ...addrFlags(store.addrs)]);
    assertEquals(imported.code, 0, imported.stderr);
    const tree = (dir: string) =>
      run("sh", ["-c", `cd '${dir}' && find . -printf '%y %P\\n' | sort`]);
    const expected = await tree(src);
    const daemon = await startDaemon({ home: store.dir, args: addrFlags(store.addrs) });
    try {
      const url = `grpc+http://${daemon.address}`;
      const m = await startMount({
        addrs: { blobServiceAddr: url, directoryServiceAddr: url, pathInfoServiceAddr: url },
        args: ["--threads=2"],
      });
      try {
        const root = join(m.mountpoint, imported.stdout.trim().slice("/nix/store/".length));
        assertEquals((await run("ls", [root])).code, 0);
        // The daemon's store loses every directory: whatever is listed now
        // must come from the one recursive fetch the first listing made.
        const db = new DatabaseSync(join(store.dir, "store.sqlite"));
        db.exec("DELETE FROM directories");
        db.close();
        const listed = await tree(root);
        assertEquals(listed.code, 0, listed.stderr);
        assertEquals(listed.stdout, expected.stdout);
        assertEquals(listed.stdout.split("\n").filter((l) => l.startsWith("d ")).length, 7);
      } finally {
        await m.stop();
      }
    } finally {
      await daemon.stop();
    }
  } finally {
    await Deno.remove(src, { recursive: true });
    await store.remove();
  }
});

Deno.test("filesystem: only subtrees within the limit are fetched whole", async () => {
  const store = await tempStore();
  const src = await Deno.makeTempDir();
  try {
    // big (12 elements in all) > limit 5 >= small (3: dir "inner" + 2 files in it)
    await Deno.mkdir(join(src, "small", "inner"), { recursive: true });
    await Deno.writeTextFile(join(src, "small", "inner", "x"), "x");
    await Deno.writeTextFile(join(src, "small", "inner", "y"), "y");
    for (let i = 0; i < 8; i++) await Deno.writeTextFile(join(src, `f${i}`), `${i}`);
    const imported = await runTvix(["import", src, ...addrFlags(store.addrs)]);
    assertEquals(imported.code, 0, imported.stderr);
    const services = await store.open();
    try {
      const inodes = InodeTable.create({ maxInodes: 1024 });
      const listings = SharedListings.create({ maxInodes: 1024, arenaBytes: 1 << 16 });
      const fs = new StoreFs(services, inodes, {
        listRoot: false,
        showXattr: false,
        listings,
        subtreePrefetch: 5,
      });
      const name = enc.encode(imported.stdout.trim().slice("/nix/store/".length));
      const root = await fs.lookup(1, name);
      assertEquals(root.size, 12);
      const top = await fs.readdir(root.ino, 0, 0);
      const small = await fs.lookup(root.ino, enc.encode("small"));
      assertEquals(small.size, 3);
      // The root was too big to take its subtree along.
      assertEquals(listings.get(small.ino), undefined);
      assertEquals(top.names.length, 9);
      await fs.readdir(small.ino, 0, 0);
      const inner = await fs.lookup(small.ino, enc.encode("inner"));
      // Listed along with "small", before anyone asked for it.
      assertEquals(listings.get(inner.ino)?.names, names("x", "y"));
    } finally {
      await services.close();
    }
  } finally {
    await Deno.remove(src, { recursive: true });
    await store.remove();
  }
});
