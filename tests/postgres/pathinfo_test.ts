/**
 * The PostgreSQL path info backend against a real server: the conformance
 * suite, the rows as stored, listing in pages, delete, and corrupted rows.
 */
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { compareBytes, digestKey, toHex } from "../../src/castore/digest.ts";
import { StorageError } from "../../src/errors.ts";
import { StillReferencedError } from "../../src/store/pathinfo/service.ts";
import { PathInfo } from "../../src/proto/tvix/store/protos/pathinfo.ts";
import { pathInfoServiceFromUrl } from "../../src/store/pathinfo/from_url.ts";
import {
  ACCESS_LOCK,
  LIST_PAGE,
  PostgresPathInfoService,
} from "../../src/store/pathinfo/postgres.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { pathInfoServiceConformance } from "../conformance/pathinfo_suite.ts";
import { collect } from "../conformance/harness.ts";
import { pseudoRandom } from "../fixtures.ts";
import { referringPathInfo, symlinkPathInfo } from "../store/pathinfo_fixtures.ts";
import { freshDatabaseFactory, type PgCluster, pgSuite, pgTest } from "./harness.ts";

pgSuite("postgres path infos", () => {
  pathInfoServiceConformance("postgres", freshDatabaseFactory(pathInfoServiceFromUrl));
  pathInfoServiceConformance(
    "postgresql scheme",
    freshDatabaseFactory((url) => pathInfoServiceFromUrl(url.replace(/^postgres:/, "postgresql:"))),
  );
});

/** A fresh database and a path info service on it, closed after `fn`. */
async function withService(
  pg: PgCluster,
  fn: (s: PostgresPathInfoService, db: string) => Promise<void>,
): Promise<void> {
  const db = await pg.createDatabase();
  const s = await pathInfoServiceFromUrl(pg.url(db));
  assert(s instanceof PostgresPathInfoService, "postgres:// builds the postgres backend");
  try {
    await fn(s, db);
  } finally {
    await s.close();
  }
}

/** `n` PathInfos with distinct pseudo-random store paths. */
function manyInfos(n: number): { path: StorePath; info: PathInfo }[] {
  return Array.from({ length: n }, (_, i) => {
    const path = StorePath.fromParts(pseudoRandom(20, 1000 + i), `p${i}`);
    return { path, info: symlinkPathInfo(path.basename(), `target-${i}`) };
  });
}

pgTest("postgres pathinfo rows hold the protobuf under the raw store path digest", async (pg) => {
  await withService(pg, async (s, db) => {
    const [{ path, info }] = manyInfos(1);
    await s.put(info);
    const rows = await pg.psql(
      db,
      "SELECT encode(digest, 'hex'), encode(data, 'hex') FROM pathinfos",
    );
    assertEquals(rows, [[toHex(path.digest), toHex(PathInfo.encode(info).finish())]]);
    assertEquals(await pg.psql(db, "SELECT component, version FROM schema_version"), [[
      "pathinfos",
      "3",
    ]]);
  });
});

pgTest(
  "postgres pathinfo list walks several pages in digest order, each entry once",
  async (pg) => {
    await withService(pg, async (s) => {
      const all = manyInfos(2 * LIST_PAGE + 37);
      for (let i = 0; i < all.length; i += 50) {
        await Promise.all(all.slice(i, i + 50).map(({ info }) => s.put(info)));
      }
      const listed = await collect(s.list());
      const keys = listed.map((info) =>
        digestKey(StorePath.parseBasenameBytes(info.node!.node!.value.name).digest)
      );
      assertEquals(keys, all.map(({ path }) => digestKey(path.digest)).sort());
      // A page boundary exactly at the end is no special case.
      const exact = manyInfos(2 * LIST_PAGE + 37).slice(0, 37);
      for (const { path } of exact) assert(await s.delete(path.digest));
      assertEquals((await collect(s.list())).length, 2 * LIST_PAGE);
    });
  },
);

pgTest("postgres pathinfo delete removes one entry and reports absence", async (pg) => {
  await withService(pg, async (s, db) => {
    const [a, b] = manyInfos(2);
    await s.put(a.info);
    await s.put(b.info);
    assertEquals(await s.delete(a.path.digest), true);
    assertEquals(await s.delete(a.path.digest), false);
    assertEquals(await s.get(a.path.digest), undefined);
    assertEquals(await s.get(b.path.digest), b.info);
    assertEquals(await pg.psql(db, "SELECT count(*) FROM pathinfos"), [["1"]]);
    await assertRejects(() => s.delete(new Uint8Array(19)), Error, "invalid output digest length");
  });
});

pgTest("a corrupted postgres pathinfo row is a StorageError", async (pg) => {
  await withService(pg, async (s, db) => {
    const [a, b] = manyInfos(2);
    await s.put(a.info);
    await s.put(b.info);
    // b's PathInfo under a's key, and bytes that are no protobuf under b's.
    await pg.psql(
      db,
      `UPDATE pathinfos SET data = '\\x${toHex(PathInfo.encode(b.info).finish())}' ` +
        `WHERE digest = '\\x${toHex(a.path.digest)}'`,
    );
    await assertRejects(() => s.get(a.path.digest), StorageError, "belongs to");
    await pg.psql(
      db,
      `UPDATE pathinfos SET data = '\\xffffff' WHERE digest = '\\x${toHex(b.path.digest)}'`,
    );
    await assertRejects(() => s.get(b.path.digest), StorageError, "unable to decode");
    await assertRejects(() => collect(s.list()), StorageError);
    // For verify: both listed by key and skipped; removed only while still damaged.
    const reported: string[] = [];
    assertEquals(await collect(s.list((digest) => reported.push(toHex(digest)))), []);
    assertEquals(reported.sort(), [a, b].map(({ path }) => toHex(path.digest)).sort());
    await s.put(a.info); // stored anew, whole
    assertEquals(await s.deleteDamaged(a.path.digest), false);
    assertEquals(await s.deleteDamaged(b.path.digest), true);
    assertEquals(await collect(s.list()), [a.info]);
  });
});

pgTest(
  "a postgres pathinfos table from before access times gets them, counted from the migration",
  async (pg) => {
    const db = await pg.createDatabase();
    const [{ path, info }] = manyInfos(1);
    // Version 1 of the schema, with one path stored.
    await pg.psql(
      db,
      "CREATE TABLE schema_version (component text PRIMARY KEY, version integer NOT NULL); " +
        "INSERT INTO schema_version VALUES ('pathinfos', 1); " +
        "CREATE TABLE pathinfos (digest bytea PRIMARY KEY CHECK (length(digest) = 20), " +
        "data bytea NOT NULL); " +
        `INSERT INTO pathinfos VALUES ('\\x${toHex(path.digest)}', ` +
        `'\\x${toHex(PathInfo.encode(info).finish())}')`,
    );
    const before = Date.now();
    const s = await pathInfoServiceFromUrl(pg.url(db));
    try {
      const [a, ...rest] = await collect(s.listAccess!());
      assertEquals([a.digest, rest], [path.digest, []]);
      // The server's clock and ours: allow a second either way.
      assert(a.accessedMs >= before - 1000 && a.accessedMs <= Date.now() + 1000, `${a.accessedMs}`);
      assertEquals(await s.get(path.digest), info);
      assertEquals(await pg.psql(db, "SELECT version FROM schema_version"), [["3"]]);
    } finally {
      await s.close();
    }
  },
);

pgTest(
  "two daemons recording access times of the same paths in opposite orders never deadlock",
  async (pg) => {
    const db = await pg.createDatabase();
    const infos = manyInfos(100);
    // Two services, two connection pools: two daemons on one database.
    const [a, b] = [
      await pathInfoServiceFromUrl(pg.url(db)),
      await pathInfoServiceFromUrl(pg.url(db)),
    ];
    try {
      for (const { info } of infos) await a.put(info);
      const deadlocks = async () =>
        Number(
          (await pg.psql(
            db,
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
          ))[0][0],
        );
      const before = await deadlocks();
      const base = Date.now() + 60_000;
      const batches = Array.from({ length: 16 }, (_, i) => {
        const entries = infos.map(({ path }, j) => ({
          digest: path.digest,
          accessedMs: base + i * 1000 + j,
        }));
        return i % 2 === 0 ? entries : entries.reverse();
      });
      await Promise.all(batches.map((entries, i) => (i % 2 === 0 ? a : b).recordAccess!(entries)));
      // Statistics reach pg_stat_database a moment after the transactions.
      await new Promise((r) => setTimeout(r, 1000));
      assertEquals(await deadlocks(), before, "deadlocks between the two");
      // Every path ends at the latest time any batch recorded for it.
      const latest = new Map(
        infos.map(({ path }, j) => [digestKey(path.digest), base + 15 * 1000 + j]),
      );
      for (const access of await collect(a.listAccess!())) {
        assertEquals(access.accessedMs, latest.get(digestKey(access.digest)));
      }
    } finally {
      await a.close();
      await b.close();
    }
  },
);

const DEPENDENCY = "00000000000000000000000000000000-dep";
const APP = "11111111111111111111111111111111-app";
const digestOf = (name: string) => StorePath.parseBasename(name).digest;
/** APP, a PathInfo referring to DEPENDENCY. */
const appInfo = () => referringPathInfo(APP, [DEPENDENCY]);
const bytea = (bytes: Uint8Array) => `'\\x${toHex(bytes)}'::bytea`;

pgTest(
  "postgres path infos stored before the referrer table get it filled when a process first opens the database",
  async (pg) => {
    const db = await pg.createDatabase();
    // The database as the previous schema version left it.
    await pg.psql(
      db,
      "CREATE TABLE schema_version (component text PRIMARY KEY, version integer NOT NULL); " +
        "INSERT INTO schema_version VALUES ('pathinfos', 2); " +
        "CREATE TABLE pathinfos (digest bytea PRIMARY KEY CHECK (length(digest) = 20), " +
        "data bytea NOT NULL, accessed bigint NOT NULL DEFAULT 0); " +
        `INSERT INTO pathinfos (digest, data) VALUES (${bytea(digestOf(DEPENDENCY))}, ${
          bytea(PathInfo.encode(symlinkPathInfo(DEPENDENCY)).finish())
        }), (${bytea(digestOf(APP))}, ${bytea(PathInfo.encode(appInfo()).finish())}), ` +
        `(${bytea(new Uint8Array(20).fill(9))}, '\\xffff'::bytea)`,
    );
    // Two processes opening it at once: one fills the table.
    const [a, b] = await Promise.all([
      pathInfoServiceFromUrl(pg.url(db)),
      pathInfoServiceFromUrl(pg.url(db)),
    ]);
    try {
      assertEquals(
        await pg.psql(
          db,
          "SELECT encode(reference, 'hex'), encode(referrer, 'hex') FROM pathinfo_refs",
        ),
        [[toHex(digestOf(DEPENDENCY)), toHex(digestOf(APP))]],
      );
      const err = await assertRejects(() => b.delete!(digestOf(DEPENDENCY)), StillReferencedError);
      assertEquals(err.referrers, [digestOf(APP)]);
      assertEquals(await a.delete!(digestOf(APP)), true);
      assertEquals(await b.delete!(digestOf(DEPENDENCY)), true);
    } finally {
      await a.close();
      await b.close();
    }
  },
);

/** Makes every insert into `pathinfo_refs` (a put's last step) hold its transaction for 1.5 s. */
const SLOW_PUTS = "CREATE FUNCTION slow() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(1.5); " +
  "RETURN NULL; END $$ LANGUAGE plpgsql; CREATE TRIGGER slow AFTER INSERT ON pathinfo_refs " +
  "FOR EACH STATEMENT EXECUTE FUNCTION slow()";

pgTest(
  "a postgres deletion waits for a referrer being stored, then keeps the path",
  async (pg) => {
    await withService(pg, async (s, db) => {
      await s.put(symlinkPathInfo(DEPENDENCY));
      // The put of APP is caught between its writes and its commit.
      await pg.psql(db, SLOW_PUTS);
      const put = s.put(appInfo());
      await new Promise((r) => setTimeout(r, 500));
      const started = Date.now();
      const [deleted, unaccessed] = await Promise.allSettled([
        s.delete(digestOf(DEPENDENCY)),
        s.deleteUnaccessed!(digestOf(DEPENDENCY), Date.now() + 3_600_000),
      ]);
      await put;
      assert(Date.now() - started >= 500, "the deletions waited for the put's commit");
      assert(deleted.status === "rejected" && deleted.reason instanceof StillReferencedError);
      assertEquals(unaccessed, { status: "fulfilled", value: false });
      assert(await s.get(digestOf(DEPENDENCY)), "the path stays");
      assert(await s.get(digestOf(APP)));
    });
  },
);

pgTest(
  "a postgres put does not deadlock with access times locking the same rows the other way round",
  async (pg) => {
    await withService(pg, async (s, db) => {
      // The referrer sorts first: access times lock it, then the path it refers to.
      const [referrer, reference] = compareBytes(digestOf(DEPENDENCY), digestOf(APP)) < 0
        ? [DEPENDENCY, APP]
        : [APP, DEPENDENCY];
      await s.put(symlinkPathInfo(reference));
      await s.put(symlinkPathInfo(referrer));
      const deadlocks = async () =>
        (await pg.psql(
          db,
          "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        ))[0][0];
      const before = await deadlocks();
      // A batch of access times, as recordAccess locks it, slowed between the two rows.
      const access = pg.psql(
        db,
        `BEGIN; SELECT 1 FROM pathinfos WHERE digest = ${
          bytea(digestOf(referrer))
        } ${ACCESS_LOCK}; SELECT pg_sleep(1); SELECT 1 FROM pathinfos WHERE digest = ${
          bytea(digestOf(reference))
        } ${ACCESS_LOCK}; COMMIT;`,
      );
      await new Promise((r) => setTimeout(r, 300));
      // Stored again, now referring to the other: it locks that one, then writes its own row.
      await s.put(referringPathInfo(referrer, [reference]));
      await access;
      await new Promise((r) => setTimeout(r, 1000)); // statistics arrive a moment later
      assertEquals(await deadlocks(), before);
    });
  },
);

pgTest("postgres: paths that refer to each other are deleted together", async (pg) => {
  await withService(pg, async (s) => {
    await s.put(referringPathInfo(APP, [DEPENDENCY]));
    await s.put(referringPathInfo(DEPENDENCY, [APP]));
    await assertRejects(() => s.delete(digestOf(APP)), StillReferencedError);
    const both = new Set([APP, DEPENDENCY].map((n) => digestKey(digestOf(n))));
    assertEquals(await s.delete(digestOf(APP), undefined, both), true);
    assertEquals(await s.delete(digestOf(DEPENDENCY), undefined, both), true);
  });
});

pgTest(
  "a postgres reference index that fails part way is done again by the next process",
  async (pg) => {
    const db = await pg.createDatabase();
    const first = await pathInfoServiceFromUrl(pg.url(db));
    await first.put(symlinkPathInfo(DEPENDENCY));
    await first.put(appInfo());
    await first.close();
    // As a store from before the table: empty, and to be filled.
    await pg.psql(
      db,
      "DELETE FROM pathinfo_refs; INSERT INTO pathinfo_refs_backfill VALUES (true); " +
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$ " +
        "LANGUAGE plpgsql; CREATE TRIGGER refuse BEFORE INSERT ON pathinfo_refs " +
        "FOR EACH STATEMENT EXECUTE FUNCTION refuse()",
    );
    await assertRejects(() => pathInfoServiceFromUrl(pg.url(db)), StorageError, "disk full");
    assertEquals(await pg.psql(db, "SELECT count(*) FROM pathinfo_refs_backfill"), [["1"]]);
    await pg.psql(db, "DROP TRIGGER refuse ON pathinfo_refs");
    const s = await pathInfoServiceFromUrl(pg.url(db));
    try {
      assertEquals(await pg.psql(db, "SELECT count(*) FROM pathinfo_refs_backfill"), [["0"]]);
      await assertRejects(() => s.delete!(digestOf(DEPENDENCY)), StillReferencedError);
    } finally {
      await s.close();
    }
  },
);
