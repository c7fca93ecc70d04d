/**
 * The scale-out deployment (README "Deployment"): blobs in one S3 bucket
 * (radosgw), directories and path infos in one PostgreSQL database, shared
 * by several daemons and a standalone binary cache, and `gc` on that store.
 * Everything through real processes: `tvix-store` daemons, `nar-bridge`,
 * `import`, `gc`, `verify`, with `nix-store --dump` as the oracle.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertRejects } from "../assert.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { isSweepable } from "../../src/castore/sweep.ts";
import { InvalidRequestError, StorageError } from "../../src/errors.ts";
import { startServer, tvixStore } from "../cli/helpers.ts";
import { serviceAddrArgs } from "../../src/cli/common.ts";
import { bytesEqual, concatBytes } from "../../src/castore/digest.ts";
import { blobIndexPath } from "../../src/castore/blob/objectstore.ts";
import type { ServiceAddrs } from "../../src/store/services.ts";
import { damageLastIndexEntry, pseudoRandom } from "../fixtures.ts";
import { nixOracle } from "../store/tree_gen.ts";
import { cluster } from "../postgres/harness.ts";
import { fetchNar, importThrough, type S3Daemon, startS3Daemon } from "./daemon.ts";
import { s3Test, type S3TestContext } from "./harness.ts";

const BLOBS = "store/blobs";

/** Blobs in the test's bucket, directories and path infos in the PostgreSQL database `pgUrl`. */
function sharedAddrs(t: S3TestContext, pgUrl: string): ServiceAddrs {
  return { blobServiceAddr: t.url(BLOBS), directoryServiceAddr: pgUrl, pathInfoServiceAddr: pgUrl };
}

/** Writes `files` (name → bytes) below a new directory `root`. */
async function writeTree(root: string, files: Record<string, Uint8Array>): Promise<string> {
  for (const [name, data] of Object.entries(files)) {
    await Deno.mkdir(join(root, name, ".."), { recursive: true });
    await Deno.writeFile(join(root, name), data);
  }
  return root;
}

/** `tvix-store ARGS` with the S3 credentials; fails the test unless it succeeds. */
async function ok(t: S3TestContext, args: string[]): Promise<string> {
  const r = await tvixStore(args, t.env);
  assertEquals(r.code, 0, `tvix-store ${args.join(" ")}:\n${r.stderr}`);
  return r.stdout;
}

/** Every key in the bucket below the blob prefix. */
async function blobKeys(t: S3TestContext): Promise<Set<string>> {
  return new Set(await t.client.listKeys(`${BLOBS}/`));
}

s3Test(
  "gc on objectstore+s3 + postgres: a deleted path's own objects go, shared ones stay",
  async (t) => {
    const pg = await cluster();
    const db = await pg.createDatabase();
    const S = serviceAddrArgs(sharedAddrs(t, pg.url(db)));
    const work = await Deno.makeTempDir({ prefix: "tvix-s3-gc-" });
    try {
      // A multi-chunk blob both share, one of a's own, small files of each.
      const shared = {
        "lib/big": pseudoRandom(1536 * 1024, 1),
        "lib/readme": pseudoRandom(300, 2),
      };
      const a = await writeTree(join(work, "a"), {
        ...shared,
        "own/a-big": pseudoRandom(1200 * 1024, 3),
        "own/a-small": pseudoRandom(400, 4),
      });
      const b = await writeTree(join(work, "b"), { ...shared, "b.txt": pseudoRandom(500, 5) });
      const pb = (await ok(t, ["import", ...S, b])).trim();
      const ofB = await blobKeys(t);
      const pa = (await ok(t, ["import", ...S, a])).trim();
      const all = await blobKeys(t);
      const ownOfA = [...all].filter((k) => !ofB.has(k));
      assert(ownOfA.some((k) => k.includes("/blobs/b3/")), "a's own blob index");
      assert(ownOfA.filter((k) => k.includes("/chunks/b3/")).length >= 3, "a's own chunks");
      const dirRows = async () =>
        Number((await pg.psql(db, "SELECT count(*) FROM directories"))[0][0]);
      const dirsBefore = await dirRows();

      assertMatch(await ok(t, ["delete", ...S, pa]), new RegExp(`deleted ${pa}`));
      // Within the default grace period nothing is collected.
      assertMatch(await ok(t, ["gc", ...S]), /removed 0 directories .* 0 blobs and chunks/);
      assertEquals(await blobKeys(t), all);
      // A grace period too short for the writers' touch rule is refused, with the reason.
      const short = await tvixStore(["gc", "--grace", "5m", ...S], t.env);
      assert(short.code !== 0, "gc --grace 5m on S3 must fail");
      assertMatch(short.stderr, /grace period under 15 minutes is unsafe on an object store/);
      assertEquals(await blobKeys(t), all);
      // A dry run reports a's objects and changes nothing.
      const dry = await ok(t, ["gc", "--dry-run", "--grace", "0", ...S]);
      assertMatch(
        dry,
        new RegExp(`would remove \\d+ directories .* ${ownOfA.length} blobs and chunks`),
      );
      assertEquals(await blobKeys(t), all);
      assertEquals(await dirRows(), dirsBefore);

      const done = await ok(t, ["gc", "--grace", "0", ...S]);
      assertMatch(
        done,
        new RegExp(`removed \\d+ directories .* ${ownOfA.length} blobs and chunks`),
      );
      assertEquals(await blobKeys(t), ofB, "a's own objects are gone, b's (shared ones too) stay");
      assert(await dirRows() < dirsBefore, "a's own directories are gone");
      assertMatch(await ok(t, ["verify", ...S]), /1 store paths checked, 0 damaged/);
      // A second run finds nothing more.
      assertMatch(await ok(t, ["gc", "--grace", "0", ...S]), /removed 0 directories .* 0 blobs/);

      // b still serves as nix-store --dump does, through a binary cache on the same store.
      const bridge = await startServer(["nar-bridge", "--listen-address=127.0.0.1:0", ...S], {
        name: "nar-bridge",
        env: t.env,
      });
      try {
        const want = (await nixOracle(b)).nar;
        assert(bytesEqual(await fetchNar({ http: bridge.address }, pb), want), "b's NAR");
      } finally {
        await bridge.stop();
      }

      // Reuse is recorded by touching: a copy onto itself moves LastModified, keeps the bytes.
      const key = [...ofB][0];
      const before = (await t.client.statObject(key))!;
      const bytes = await t.client.getObject(key);
      await new Promise((r) => setTimeout(r, 1100)); // LastModified counts whole seconds
      await t.client.touchObject(key);
      const after = (await t.client.statObject(key))!;
      assert(after.lastModified > before.lastModified, "touched");
      assertEquals(after.size, before.size);
      assertEquals(await t.client.getObject(key), bytes);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
);

s3Test(
  "two daemons and a bridge on one bucket and database; a daemon killed mid-import",
  async (t) => {
    const pg = await cluster();
    const db = await pg.createDatabase();
    const addrs = sharedAddrs(t, pg.url(db));
    const work = await Deno.makeTempDir({ prefix: "tvix-s3-nodes-" });
    const nodes: S3Daemon[] = [];
    const node = async (name: string) => {
      const dir = join(work, name);
      await Deno.mkdir(dir);
      const d = await startS3Daemon(t, dir, { addrs });
      nodes.push(d);
      return d;
    };
    let bridge: Awaited<ReturnType<typeof startServer>> | undefined;
    try {
      const a = await node("a");
      const b = await node("b");
      bridge = await startServer(
        ["nar-bridge", "--listen-address=127.0.0.1:0", ...serviceAddrArgs(addrs)],
        { name: "nar-bridge", env: t.env },
      );
      const cache = { http: bridge.address };

      // A tree imported through A is served by B's binary cache and the standalone bridge.
      const small = await writeTree(join(work, "small"), {
        "bin/tool": pseudoRandom(900 * 1024, 11),
        "share/doc/README": new TextEncoder().encode("hello from node a\n"),
        "share/empty": new Uint8Array(0),
      });
      const r = await importThrough(a, [small]);
      assertEquals(r.code, 0, r.stderr);
      const smallPath = r.stdout.trim();
      const smallNar = (await nixOracle(small)).nar;
      assert(bytesEqual(await fetchNar(b, smallPath), smallNar), "B's cache serves A's import");
      assert(bytesEqual(await fetchNar(cache, smallPath), smallNar), "the bridge serves it");
      // The data really is in the bucket and the database.
      assert((await t.client.listKeys(`${BLOBS}/chunks/`)).length >= 3, "chunks in the bucket");
      assertEquals(await pg.psql(db, "SELECT count(*) FROM pathinfos"), [["1"]]);
      assert(Number((await pg.psql(db, "SELECT count(*) FROM directories"))[0][0]) >= 3);

      // A large import through A; A is killed once some of its chunks are in the bucket.
      const files: Record<string, Uint8Array> = {};
      for (let i = 0; i < 24; i++) {
        files[`part${i % 4}/f${i}`] = pseudoRandom(
          4 * 1024 * 1024,
          100 + i,
        );
      }
      const big = await writeTree(join(work, "big"), files);
      const chunksBefore = (await t.client.listKeys(`${BLOBS}/chunks/`)).length;
      const running = importThrough(a, [big]);
      for (
        let i = 0;
        (await t.client.listKeys(`${BLOBS}/chunks/`)).length < chunksBefore + 8;
        i++
      ) {
        assert(i < 1200, "no chunk of the large import reached the bucket");
        await new Promise((r) => setTimeout(r, 25));
      }
      const killed = await a.daemon.stop("SIGKILL");
      assertEquals(killed.status.signal, "SIGKILL");
      const failed = await running;
      assert(failed.code !== 0, `the import survived its daemon:\n${failed.stderr}`);
      // No PathInfo for the half-imported tree: only complete closures are ever named.
      assertEquals(await pg.psql(db, "SELECT count(*) FROM pathinfos"), [["1"]]);

      // A new daemon finishes the same import; everyone serves it byte for byte.
      const c = await node("c");
      const again = await importThrough(c, [big]);
      assertEquals(again.code, 0, again.stderr);
      const bigPath = again.stdout.trim();
      const bigNar = (await nixOracle(big)).nar;
      for (const [who, at] of [["B", b], ["C", c], ["the bridge", cache]] as const) {
        assert(bytesEqual(await fetchNar(at, bigPath), bigNar), `${who} serves the large NAR`);
        assert(bytesEqual(await fetchNar(at, smallPath), smallNar), `${who} serves the small NAR`);
      }
      assertEquals(await pg.psql(db, "SELECT count(*) FROM pathinfos"), [["2"]]);
      // Every PathInfo's closure is complete and renders to its recorded NAR.
      assertMatch(
        await ok(t, ["verify", ...serviceAddrArgs(addrs)]),
        /2 store paths checked, 0 damaged/,
      );
      assertEquals(b.daemon.exitStatus(), undefined, "B kept serving throughout");
    } finally {
      await bridge?.stop();
      for (const d of nodes) await d.stop();
      await Deno.remove(work, { recursive: true });
    }
  },
);

s3Test(
  "gc on objectstore+s3 judges the grace period it was given, not the time marking took",
  async (t) => {
    const blob = await blobServiceFromUrl(t.url("grace-test"));
    try {
      assert(isSweepable(blob));
      // Grace 0 (a store nothing writes to, and verify's orphan count), with
      // listing and marking that took 5 s: allowed.
      const report = await blob.sweep(() => false, {
        cutoff: Date.now() - 5000,
        dryRun: true,
        graceMs: 0,
      });
      assertEquals(report.removed, 0);
      // 5 minutes is too short on an object store, however long marking took.
      await assertRejects(
        () =>
          blob.sweep(() => false, {
            cutoff: Date.now() - 3600_000,
            dryRun: true,
            graceMs: 300_000,
          }),
        InvalidRequestError,
        "unsafe on an object store",
      );
    } finally {
      await blob.close();
    }
  },
);

s3Test(
  "objectstore+s3: a blob this process wrote, then swept by gc, is refused at the commit point",
  async (t) => {
    const blob = await blobServiceFromUrl(t.url("swept-commit"));
    try {
      assert(isSweepable(blob));
      const w = blob.openWrite();
      await w.write(pseudoRandom(10_000, 5));
      const digest = await w.close();
      await blob.sync?.([digest]); // written here: accepted
      // Objects are compared with the cutoff by their LastModified, in whole seconds.
      await new Promise((r) => setTimeout(r, 1100));
      const report = await blob.sweep(() => false, {
        cutoff: Date.now(),
        graceMs: 0,
        dryRun: false,
      });
      assertEquals(report.removed, 1);
      await assertRejects(() => blob.sync!([digest]), InvalidRequestError, "is not in the store");
    } finally {
      await blob.close();
    }
  },
);

s3Test(
  "gc on objectstore+s3: a damaged blob index that still decodes stops the sweep, which removes none of its chunks",
  async (t) => {
    const prefix = "damaged-index";
    const blob = await blobServiceFromUrl(t.url(prefix));
    try {
      assert(isSweepable(blob));
      const w = blob.openWrite();
      const data = pseudoRandom(3 << 20, 9);
      await w.write(data);
      const digest = await w.close();
      const chunks = (await blob.chunks(digest))!;
      assert(chunks.length >= 3, `a blob of several chunks (${chunks.length})`);
      const key = `${prefix}/${blobIndexPath(digest)}`;
      const good = (await t.client.getObject(key))!;
      // Decoding alone would list one chunk fewer, and a sweep would take
      // that chunk for unused.
      const flipped = damageLastIndexEntry(good);
      await t.client.putObject(key, flipped);
      // Objects are compared with the cutoff by their LastModified, in whole seconds.
      await new Promise((r) => setTimeout(r, 1100));
      await assertRejects(
        () =>
          blob.sweep((d) => bytesEqual(d, digest), {
            cutoff: Date.now(),
            graceMs: 0,
            dryRun: false,
          }),
        StorageError,
        "does not encode back",
      );
      await t.client.putObject(key, good);
      const reader = await blob.openRead(digest);
      const parts: Uint8Array[] = [];
      for await (const part of reader!) parts.push(part);
      assert(bytesEqual(concatBytes(parts), data), "the blob reads back whole");
    } finally {
      await blob.close();
    }
  },
);
