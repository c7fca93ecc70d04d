/**
 * The shared inode table: content-based deduplication
 * (docs/compatibility.md#inodes; upstream's inode tracker tests, with the
 * file keys of docs/compatibility.md#q15-fuse-inode-keys-directory-sizes-and-root-listing)
 * and agreement between Workers interning concurrently.
 */
import { assert, assertEquals } from "../assert.ts";
import * as F from "../fixtures.ts";
import { makeNode, type NodeVariant } from "../../src/castore/node.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import { InodeTable, InodeTableFullError, Kind, ROOT_INO } from "../../src/fuse/inodes.ts";

const b = F.b;

Deno.test("inodes: get_nonexistent and the root", () => {
  const t = InodeTable.create({ maxInodes: 16 });
  assertEquals(t.info(ROOT_INO)?.kind, Kind.Root);
  assertEquals(t.info(2), undefined);
  assertEquals(t.info(0), undefined);
  assertEquals(t.info(1 << 30), undefined);
});

Deno.test("inodes: put_regular: same blob → same inode, other blob → new inode", () => {
  const t = InodeTable.create({ maxInodes: 16 });
  const a = t.intern(makeNode.file(b("x"), F.BLOB_A_DIGEST, 2n));
  assertEquals(a, 2);
  assertEquals(t.intern(makeNode.file(b("other name"), F.BLOB_A_DIGEST, 2n)), a);
  const other = t.intern(makeNode.file(b("x"), F.BLOB_B_DIGEST, BigInt(F.BLOB_B.length)));
  assert(other !== a);
  assertEquals(t.info(a), { kind: Kind.File, executable: false, size: 2 });
  assertEquals(t.digest(a), F.BLOB_A_DIGEST);
});

Deno.test("inodes: executable flag and size are part of a file's key (docs/compatibility.md#q15-fuse-inode-keys-directory-sizes-and-root-listing)", () => {
  const t = InodeTable.create({ maxInodes: 16 });
  const plain = t.intern(makeNode.file(b("x"), F.BLOB_A_DIGEST, 2n));
  const exec = t.intern(makeNode.file(b("x"), F.BLOB_A_DIGEST, 2n, true));
  const sized = t.intern(makeNode.file(b("x"), F.BLOB_A_DIGEST, 3n));
  assertEquals(new Set([plain, exec, sized]).size, 3);
  assertEquals(t.info(exec), { kind: Kind.File, executable: true, size: 2 });
});

Deno.test("inodes: put_symlink: same target → same inode", () => {
  const t = InodeTable.create({ maxInodes: 16 });
  const s = t.intern(makeNode.symlink(b("a"), b("/nix/store/somewhereelse")));
  assertEquals(t.intern(makeNode.symlink(b("b"), b("/nix/store/somewhereelse"))), s);
  assert(t.intern(makeNode.symlink(b("a"), b("/nix/store/other"))) !== s);
  assertEquals(t.symlinkTarget(s), b("/nix/store/somewhereelse"));
  assertEquals(t.info(s), { kind: Kind.Symlink, executable: false, size: 24 });
});

Deno.test("inodes: directories by digest; kinds never share an inode", () => {
  const t = InodeTable.create({ maxInodes: 16 });
  const digest = directoryDigest(F.DIRECTORY_WITH_KEEP);
  const d = t.intern(makeNode.directory(b("d"), digest, 1n));
  assertEquals(t.intern(makeNode.directory(b("e"), digest, 1n)), d);
  assert(t.intern(makeNode.file(b("d"), digest, 1n)) !== d);
  assertEquals(t.info(d), { kind: Kind.Directory, executable: false, size: 1 });
});

Deno.test("inodes: a full table throws InodeTableFullError", () => {
  const t = InodeTable.create({ maxInodes: 4 });
  t.intern(makeNode.symlink(b("a"), b("1")));
  t.intern(makeNode.symlink(b("a"), b("2")));
  let err: unknown;
  try {
    t.intern(makeNode.symlink(b("a"), b("3")));
  } catch (e) {
    err = e;
  }
  assert(err instanceof InodeTableFullError);
});

Deno.test("inodes: a size of 2^63 or more finds its own inode again", () => {
  const t = InodeTable.create({ maxInodes: 16 });
  const digest = new Uint8Array(32).fill(7);
  for (const size of [2n ** 62n, 2n ** 63n, 2n ** 64n - 1n]) {
    const ino = t.intern(makeNode.file(b("f"), digest, size));
    assertEquals(t.intern(makeNode.file(b("g"), digest, size)), ino, `size ${size}`);
    assertEquals(
      t.intern(makeNode.directory(b("d"), digest, size)),
      t.intern(makeNode.directory(b("e"), digest, size)),
    );
  }
  assertEquals(t.allocated, 1 + 2 * 3);
});

Deno.test("inodes: the hash set grows from two slots and keeps every inode", () => {
  const t = InodeTable.create({ maxInodes: 50_000, initialSlots: 2 });
  const nodes: NodeVariant[] = [];
  for (let i = 0; i < 20_000; i++) {
    const digest = new Uint8Array(32);
    new DataView(digest.buffer).setUint32(28, i);
    nodes.push(
      i % 3 === 0
        ? makeNode.symlink(b(`s${i}`), b(`t${i}`))
        : i % 3 === 1
        ? makeNode.directory(b(`d${i}`), digest, 1n)
        : makeNode.file(b(`f${i}`), digest, 5n, false),
    );
  }
  const inos = nodes.map((n) => t.intern(n));
  assertEquals(new Set(inos).size, nodes.length);
  assertEquals(t.allocated, nodes.length + 1);
  // After 14 doublings each node still finds its own inode, allocating nothing.
  assertEquals(nodes.map((n) => t.intern(n)), inos);
  assertEquals(t.allocated, nodes.length + 1);
  assertEquals(t.symlinkTarget(inos[3]), b("t3"));
});

Deno.test("inodes: Workers interning concurrently agree on every inode", async () => {
  // Two slots at first: the set doubles many times while the Workers intern.
  const table = InodeTable.create({ maxInodes: 100_000, initialSlots: 2 });
  const nodes: NodeVariant[] = [];
  for (let i = 0; i < 20_000; i++) {
    const digest = new Uint8Array(32);
    new DataView(digest.buffer).setUint32(0, i % 5000);
    if (i % 4 === 0) nodes.push(makeNode.symlink(b(`s${i}`), b(`target-${i % 3000}`)));
    else if (i % 4 === 1) nodes.push(makeNode.directory(b(`d${i}`), digest, 3n));
    else nodes.push(makeNode.file(b(`f${i}`), digest, BigInt(i % 7), i % 2 === 0));
  }
  const workers = [0, 1, 2].map(() =>
    new Worker(new URL("./inode_worker.ts", import.meta.url), { type: "module" })
  );
  // A barrier: each Worker starts interning once all three have their nodes.
  const arrived = new Int32Array(new SharedArrayBuffer(4));
  try {
    const results = await Promise.all(
      workers.map((w, k) =>
        new Promise<number[]>((resolve, reject) => {
          w.onerror = (e) => reject(new Error(e.message));
          w.onmessage = (e) => {
            if (e.data === "ready") {
              // Each Worker walks the nodes in a different order.
              const order = k === 1 ? [...nodes].reverse() : nodes;
              w.postMessage({ buffer: table.buffer, nodes: order, arrived, parties: 3 });
            } else resolve(k === 1 ? [...e.data].reverse() : e.data);
          };
        })
      ),
    );
    assertEquals(results[1], results[0]);
    assertEquals(results[2], results[0]);
    // The main thread's own view agrees too, without allocating anything new.
    const before = table.allocated;
    assertEquals(nodes.map((n) => table.intern(n)), results[0]);
    assertEquals(table.allocated, before);
    // Distinct contents got distinct inodes.
    const distinct = new Set(
      nodes.map((n) =>
        JSON.stringify(
          n,
          (_, v) => typeof v === "bigint" ? String(v) : v instanceof Uint8Array ? [...v] : v,
        )
          .replace(/"name":\[[^\]]*\],?/, "")
      ),
    );
    assertEquals(new Set(results[0]).size, distinct.size);
  } finally {
    workers.forEach((w) => w.terminate());
  }
});
