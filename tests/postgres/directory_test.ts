/**
 * The PostgreSQL directory backend against a real server: the conformance
 * suite, the rows as stored, `touched` (set on insert, on re-put, and on
 * the closures a single put relies on) and garbage collection's sweep,
 * including its re-check of `touched` inside the DELETE.
 */
import postgres from "postgres";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { PostgresDirectoryService } from "../../src/castore/directory/postgres.ts";
import { type Digest, digestKey, toHex } from "../../src/castore/digest.ts";
import {
  type Directory,
  directoryDigest,
  directorySize,
  encodeDirectory,
} from "../../src/castore/directory.ts";
import { StorageError } from "../../src/errors.ts";
import { directoryServiceConformance, putAll } from "../conformance/directory_suite.ts";
import { collect } from "../conformance/harness.ts";
import * as F from "../fixtures.ts";
import { freshDatabaseFactory, type PgCluster, pgSuite, pgTest } from "./harness.ts";

pgSuite("postgres directories", () => {
  directoryServiceConformance("postgres", freshDatabaseFactory(directoryServiceFromUrl));
});

const A = directoryDigest(F.DIRECTORY_A);
const B = directoryDigest(F.DIRECTORY_B);
const C = directoryDigest(F.DIRECTORY_C);
const KEEP = directoryDigest(F.DIRECTORY_WITH_KEEP);
const COMPLICATED = directoryDigest(F.DIRECTORY_COMPLICATED);

/** A fresh database and a directory service on it, closed after `fn`. */
async function withService(
  pg: PgCluster,
  fn: (s: PostgresDirectoryService, db: string) => Promise<void>,
): Promise<void> {
  const db = await pg.createDatabase();
  const s = await directoryServiceFromUrl(pg.url(db));
  assert(s instanceof PostgresDirectoryService, "postgres:// builds the postgres backend");
  try {
    await fn(s, db);
  } finally {
    await s.close();
  }
}

/** `touched` of each row, by hex digest. */
async function touchedTimes(pg: PgCluster, db: string): Promise<Map<string, number>> {
  const rows = await pg.psql(db, "SELECT encode(digest, 'hex'), touched FROM directories");
  return new Map(rows.map(([d, t]) => [d, Number(t)]));
}

function leaf(i: number): Directory {
  return { directories: [], files: [], symlinks: [{ name: F.b("l"), target: F.b(`t-${i}`) }] };
}

function parentOf(children: Directory[]): Directory {
  return {
    directories: children.map((c, i) => ({
      name: F.b(`d${String(i).padStart(5, "0")}`),
      digest: directoryDigest(c),
      size: directorySize(c),
    })),
    files: [],
    symlinks: [],
  };
}

pgTest("postgres directory rows hold the canonical encoding under the raw digest", async (pg) => {
  await withService(pg, async (s, db) => {
    const before = Date.now();
    await putAll(s, [F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]);
    const rows = await pg.psql(
      db,
      "SELECT encode(digest, 'hex'), encode(data, 'hex'), touched FROM directories ORDER BY digest",
    );
    const expected = [F.DIRECTORY_COMPLICATED, F.DIRECTORY_WITH_KEEP]
      .map((d) => [toHex(directoryDigest(d)), toHex(encodeDirectory(d))])
      .sort();
    assertEquals(rows.map(([d, v]) => [d, v]), expected);
    for (const [, , t] of rows) {
      assert(Number(t) >= before && Number(t) <= Date.now(), `touched ${t} is the time of the put`);
    }
    const versions = await pg.psql(db, "SELECT component, version FROM schema_version");
    assertEquals(versions, [["directories", "1"]]);
  });
});

pgTest(
  "postgres: a re-put marks the directory again, a multi-put its whole closure",
  async (pg) => {
    await withService(pg, async (s, db) => {
      await s.put(F.DIRECTORY_A);
      await putAll(s, [F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]);
      await pg.psql(db, "UPDATE directories SET touched = 0");
      const t0 = Date.now();
      await s.put(F.DIRECTORY_A);
      let touched = await touchedTimes(pg, db);
      assert(touched.get(toHex(A))! >= t0, "single re-put marks");
      assertEquals(touched.get(toHex(KEEP)), 0);
      await putAll(s, [F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]);
      touched = await touchedTimes(pg, db);
      assert(touched.get(toHex(KEEP))! >= t0 && touched.get(toHex(COMPLICATED))! >= t0);
      // A mark never goes back in time.
      await pg.psql(db, `UPDATE directories SET touched = ${t0 + 3_600_000}`);
      await s.put(F.DIRECTORY_A);
      assertEquals((await touchedTimes(pg, db)).get(toHex(A)), t0 + 3_600_000);
    });
  },
);

pgTest("postgres: a single put marks the closures of the children it refers to", async (pg) => {
  await withService(pg, async (s, db) => {
    await putAll(s, [F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]);
    await s.put(F.DIRECTORY_A);
    await pg.psql(db, "UPDATE directories SET touched = 0");
    const t0 = Date.now();
    const parent = parentOf([F.DIRECTORY_COMPLICATED]);
    await s.put(parent);
    const touched = await touchedTimes(pg, db);
    for (const d of [COMPLICATED, KEEP, directoryDigest(parent)]) {
      assert(touched.get(toHex(d))! >= t0, `${toHex(d)} marked`);
    }
    assertEquals(touched.get(toHex(A)), 0, "an unrelated directory keeps its mark");
  });
});

pgTest(
  "postgres sweep removes what is neither live nor recent, dry run changes nothing",
  async (pg) => {
    await withService(pg, async (s, db) => {
      await putAll(s, [F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]);
      await putAll(s, [F.DIRECTORY_A, F.DIRECTORY_B]);
      await s.put(F.DIRECTORY_C);
      const cutoff = Date.now() + 1;
      // C was written "after the cutoff": an upload in flight relies on it.
      await pg.psql(
        db,
        `UPDATE directories SET touched = ${cutoff + 60_000} WHERE digest = '\\x${toHex(C)}'`,
      );
      const live = new Set([COMPLICATED, KEEP].map(digestKey));
      const isLive = (d: Digest) => live.has(digestKey(d));
      const deadBytes = encodeDirectory(F.DIRECTORY_A).length +
        encodeDirectory(F.DIRECTORY_B).length;

      const dry = await s.sweep(isLive, { cutoff, dryRun: true });
      assertEquals(dry, { removed: 2, removedBytes: deadBytes, kept: 3, reclaimedBytes: 0 });
      assertEquals((await touchedTimes(pg, db)).size, 5);

      const real = await s.sweep(isLive, { cutoff, dryRun: false });
      assertEquals(real, { removed: 2, removedBytes: deadBytes, kept: 3, reclaimedBytes: 0 });
      assertEquals(await s.get(A), undefined);
      assertEquals(await s.get(B), undefined);
      assertEquals(await s.get(C), F.DIRECTORY_C);
      assertEquals(await collect(s.getRecursive(COMPLICATED)), [
        F.DIRECTORY_COMPLICATED,
        F.DIRECTORY_WITH_KEEP,
      ]);
    });
  },
);

pgTest(
  "postgres sweep re-checks touched inside the DELETE: a mark landing meanwhile keeps the row",
  async (pg) => {
    await withService(pg, async (s, db) => {
      await putAll(s, [F.DIRECTORY_A, F.DIRECTORY_B]);
      await s.put(F.DIRECTORY_WITH_KEEP);
      const cutoff = Date.now() + 1;
      // Another session marks A (as a put reusing it would) but has not
      // committed when the sweep, which still sees the old mark, deletes.
      const other = postgres({ host: pg.socketDir, user: "postgres", database: db, max: 1 });
      let commit!: () => void;
      const committing = new Promise<void>((r) => (commit = r));
      let marked!: () => void;
      const isMarked = new Promise<void>((r) => (marked = r));
      const holder = other.begin(async (tx) => {
        await tx.unsafe("UPDATE directories SET touched = $1 WHERE digest = $2", [
          cutoff + 60_000,
          A,
        ]);
        marked();
        await committing;
      });
      try {
        await isMarked;
        const sweeping = s.sweep(() => false, { cutoff, dryRun: false });
        // Wait until the sweep's DELETE waits for the marking session's lock.
        for (let i = 0;; i++) {
          const waiting = await pg.psql(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' " +
              "AND query LIKE 'DELETE FROM directories%'",
          );
          if (waiting[0][0] === "1") break;
          assert(i < 200, "the sweep's DELETE never waited for the lock");
          await new Promise((r) => setTimeout(r, 25));
        }
        commit();
        await holder;
        const report = await sweeping;
        assertEquals(report.removed, 2);
        assertEquals(report.kept, 1);
        assertEquals(await s.get(A), F.DIRECTORY_A);
        assertEquals(await s.get(B), undefined);
        assertEquals(await s.get(KEEP), undefined);
      } finally {
        commit();
        await holder.catch(() => {});
        await other.end();
      }
    });
  },
);

pgTest(
  "postgres: closures larger than a batch are stored, traversed and swept in pages",
  async (pg) => {
    await withService(pg, async (s) => {
      const leaves = Array.from({ length: 2400 }, (_, i) => leaf(i));
      const mids = Array.from(
        { length: 24 },
        (_, m) => parentOf(leaves.slice(m * 100, m * 100 + 100)),
      );
      const root = parentOf(mids);
      const rootDigest = await putAll(s, [...leaves, ...mids, root]);
      assertEquals(rootDigest, directoryDigest(root));
      const got = await collect(s.getRecursive(rootDigest));
      assertEquals(got.length, 2425);
      assertEquals(directoryDigest(got[0]), rootDigest);
      assertEquals(
        new Set(got.map((d) => digestKey(directoryDigest(d)))).size,
        2425,
      );
      // Only the first half of the mids (and their leaves) stays live.
      const live = new Set(
        [root, ...mids.slice(0, 12), ...leaves.slice(0, 1200)].map((d) =>
          digestKey(directoryDigest(d))
        ),
      );
      const report = await s.sweep((d) => live.has(digestKey(d)), {
        cutoff: Date.now() + 1,
        dryRun: false,
      });
      assertEquals([report.removed, report.kept], [1212, 1213]);
      assertEquals(await s.get(directoryDigest(leaves[1200])), undefined);
      assertEquals(await s.get(directoryDigest(leaves[1199])), leaves[1199]);
    });
  },
);

pgTest("postgres: concurrent uploads of overlapping closures all succeed", async (pg) => {
  await withService(pg, async (s) => {
    const shared = Array.from({ length: 200 }, (_, i) => leaf(i));
    const uploads = Array.from({ length: 8 }, (_, u) => {
      const own = Array.from({ length: 20 }, (_, i) => leaf(10_000 + u * 100 + i));
      // Each upload sends the shared leaves in a different order.
      const order = u % 2 ? [...shared].reverse() : shared;
      const mid = parentOf([...order.slice(u * 10), ...own]);
      return [...order.slice(u * 10), ...own, mid];
    });
    const roots = await Promise.all(uploads.map((dirs) => putAll(s, dirs)));
    for (const [u, root] of roots.entries()) {
      assertEquals(root, directoryDigest(uploads[u].at(-1)!));
      assertEquals((await collect(s.getRecursive(root))).length, uploads[u].length);
    }
  });
});

pgTest("a corrupted postgres directory row is a StorageError", async (pg) => {
  await withService(pg, async (s, db) => {
    await putAll(s, [F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]);
    await pg.psql(
      db,
      `UPDATE directories SET data = '\\x${toHex(encodeDirectory(F.DIRECTORY_A))}' ` +
        `WHERE digest = '\\x${toHex(KEEP)}'`,
    );
    await assertRejects(() => s.get(KEEP), StorageError, "requested directory");
    await assertRejects(() => collect(s.getRecursive(COMPLICATED)), StorageError);
    await pg.psql(db, `DELETE FROM directories WHERE digest = '\\x${toHex(KEEP)}'`);
    await assertRejects(
      () => collect(s.getRecursive(COMPLICATED)),
      StorageError,
      "does not exist",
    );
  });
});
