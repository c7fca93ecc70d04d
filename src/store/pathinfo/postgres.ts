/**
 * PathInfoService on PostgreSQL (`postgres://…`, docs/storage.md#postgresql).
 *
 * Table `pathinfos`: the protobuf encoding of each PathInfo under the raw
 * 20-byte digest of its store path, as the SQLite backend keeps it, with
 * its last access time in ms (`accessed`, docs/gc.md#access-times). Put
 * validates and overwrites (and counts as an access); list walks the keys in pages (keyset
 * pagination: no cursor or transaction stays open while the caller
 * consumes them); delete serves `delete` and `verify --repair`. Reads
 * check that a row decodes, validates and belongs to its key.
 *
 * Table `pathinfo_refs` lists who refers to whom (docs/gc.md#referrers).
 * A put locks the rows of the paths it refers to (`FOR KEY SHARE`) while
 * it writes its own rows, and a deletion locks its row (`FOR UPDATE`)
 * before it looks for referrers: whichever comes second sees what the
 * first committed, so a referrer stored while a deletion runs keeps the
 * path. Access times take `FOR NO KEY UPDATE`, which a put's lock does not
 * wait for (nor the other way round): with `FOR SHARE` and `FOR UPDATE`
 * there, a put and a batch of access times locking the same two rows in
 * opposite orders deadlocked.
 *
 * @module
 */
import { PostgresDb, type Queryable, type Schema } from "../../castore/postgres_db.ts";
import type { PostgresConfig } from "../../castore/postgres_url.ts";
import { PathInfo } from "../../proto/tvix/store/protos/pathinfo.ts";
import {
  blockingReferrers,
  checkPathInfoDigest,
  decodeStoredPathInfo,
  isDamagedRow,
  listedPathInfo,
  otherReferences,
  referrerRowsToRead,
  sameInfo,
  storedReferences,
  validateForPut,
} from "./put_check.ts";
import {
  type DamagedRowHandler,
  type PathAccess,
  type PathInfoService,
  StillReferencedError,
} from "./service.ts";
import { compareBytes, digestKey } from "../../castore/digest.ts";

/**
 * The row lock access times take: one a put's `FOR KEY SHARE` on the
 * paths it refers to does not wait for (see the module doc).
 */
export const ACCESS_LOCK = "FOR NO KEY UPDATE";

/** Access times written by one statement (and locked by one before it). */
const ACCESS_BATCH = 1000;

/** The `pathinfos` table, version by version (docs/storage.md#postgresql). */
export const PATHINFO_SCHEMA: Schema = {
  component: "pathinfos",
  migrations: [
    [
      `CREATE TABLE pathinfos (
        digest bytea PRIMARY KEY CHECK (length(digest) = 20),
        data bytea NOT NULL
      )`,
    ],
    // Access times; paths already stored count as accessed when migrated.
    [
      "ALTER TABLE pathinfos ADD COLUMN accessed bigint NOT NULL DEFAULT 0",
      "UPDATE pathinfos SET accessed = (extract(epoch FROM now()) * 1000)::bigint",
    ],
    // Who refers to whom. SQL cannot read the references out of the stored
    // protobuf, so the rows of paths already stored are added when a
    // process of this version first opens the database (the flag row).
    [
      `CREATE TABLE pathinfo_refs (
        reference bytea NOT NULL,
        referrer bytea NOT NULL,
        PRIMARY KEY (reference, referrer)
      )`,
      "CREATE INDEX pathinfo_refs_by_referrer ON pathinfo_refs (referrer)",
      "CREATE TABLE pathinfo_refs_backfill (pending boolean PRIMARY KEY)",
      "INSERT INTO pathinfo_refs_backfill VALUES (true)",
    ],
  ],
};

/** Up to `$2` stored referrers of `$1` (a row left by a process that kept no such table holds nothing). */
const REFERRERS_SQL =
  "SELECT r.referrer FROM pathinfo_refs AS r JOIN pathinfos AS p ON p.digest = r.referrer " +
  "WHERE r.reference = $1 LIMIT $2";

/** Rows fetched per query while listing. */
export const LIST_PAGE = 256;

/** Deletes a path's row and its references, in the caller's transaction. */
async function removeWithRefs(tx: Queryable, digest: Uint8Array): Promise<void> {
  await tx.query("DELETE FROM pathinfos WHERE digest = $1", [digest]);
  await tx.query("DELETE FROM pathinfo_refs WHERE referrer = $1", [digest]);
}

/** Stored paths indexed per transaction when filling `pathinfo_refs`. */
const BACKFILL_PAGE = 1000;

/**
 * Adds the references of the paths stored before `pathinfo_refs` existed.
 * Until one process has indexed every path (and removed the flag row),
 * every process that opens the database does so before it serves anything;
 * inserting a row twice is harmless. Each page is its own short
 * transaction, so other processes go on writing: they are of this version
 * and write their own rows. A page locks its rows (`FOR SHARE`), so a put
 * of one of them that is under way commits first and the page indexes what
 * it wrote.
 */
async function indexStoredReferences(db: PostgresDb): Promise<void> {
  if ((await db.run("read", "SELECT 1 FROM pathinfo_refs_backfill")).length === 0) return;
  let after: Uint8Array = new Uint8Array(0);
  for (let done = false; !done;) {
    done = await db.transaction("index references", async (tx) => {
      const rows = await tx.query(
        "SELECT digest, data FROM pathinfos WHERE digest > $1 ORDER BY digest " +
          `LIMIT ${BACKFILL_PAGE} FOR SHARE`,
        [after],
      );
      const references: Uint8Array[] = [], referrers: Uint8Array[] = [];
      for (const row of rows) {
        const digest = row.digest as Uint8Array;
        for (const ref of storedReferences(digest, row.data)) {
          references.push(ref);
          referrers.push(digest);
        }
      }
      if (references.length > 0) {
        await tx.query(
          "INSERT INTO pathinfo_refs (reference, referrer) " +
            "SELECT * FROM unnest($1::bytea[], $2::bytea[]) ON CONFLICT DO NOTHING",
          [references, referrers],
        );
      }
      if (rows.length === BACKFILL_PAGE) {
        after = rows[rows.length - 1].digest as Uint8Array;
        return false;
      }
      await tx.query("DELETE FROM pathinfo_refs_backfill");
      return true;
    });
  }
}

/** A PathInfoService storing rows in a PostgreSQL database. */
export class PostgresPathInfoService implements PathInfoService {
  readonly #db: PostgresDb;

  private constructor(db: PostgresDb) {
    this.#db = db;
  }

  /**
   * Connects and migrates the schema. Throws `StorageError` "unable to
   * open postgres database …" when the server cannot be reached, refuses
   * the login, or holds a newer schema.
   */
  static async open(config: PostgresConfig): Promise<PostgresPathInfoService> {
    const db = await PostgresDb.open(config, PATHINFO_SCHEMA);
    try {
      await indexStoredReferences(db);
    } catch (err) {
      await db.close();
      throw err;
    }
    return new PostgresPathInfoService(db);
  }

  /** The PathInfo stored under this 20-byte digest, or `undefined`. */
  async get(digest: Uint8Array): Promise<PathInfo | undefined> {
    checkPathInfoDigest(digest);
    const rows = await this.#db.run("read", "SELECT data FROM pathinfos WHERE digest = $1", [
      digest,
    ]);
    return rows.length === 0 ? undefined : decodeStoredPathInfo(digest, rows[0].data);
  }

  /** Validates and stores (replacing an entry for the same store path) with its references. */
  async put(info: PathInfo): Promise<PathInfo> {
    const path = validateForPut(info);
    const refs = otherReferences(info, path.digest);
    await this.#db.transaction("write", async (tx) => {
      if (refs.length > 0) {
        // Held until commit: a deletion of one of them waits, then sees this path.
        await tx.query(
          "SELECT 1 FROM pathinfos WHERE digest = ANY($1::bytea[]) ORDER BY digest FOR KEY SHARE",
          [refs],
        );
      }
      await tx.query(
        "INSERT INTO pathinfos (digest, data, accessed) VALUES ($1, $2, $3) " +
          "ON CONFLICT (digest) DO UPDATE SET data = excluded.data, " +
          "accessed = greatest(pathinfos.accessed, excluded.accessed)",
        [path.digest, PathInfo.encode(info).finish(), Date.now()],
      );
      await tx.query("DELETE FROM pathinfo_refs WHERE referrer = $1", [path.digest]);
      if (refs.length > 0) {
        await tx.query(
          "INSERT INTO pathinfo_refs (reference, referrer) SELECT unnest($1::bytea[]), $2 " +
            "ON CONFLICT DO NOTHING",
          [refs, path.digest],
        );
      }
    });
    return info;
  }

  /**
   * Every stored PathInfo, ascending by digest, {@linkcode LIST_PAGE} rows
   * per query (damaged rows: see the interface).
   */
  async *list(onDamaged?: DamagedRowHandler): AsyncGenerator<PathInfo> {
    let after: Uint8Array = new Uint8Array(0);
    while (true) {
      const rows = await this.#db.run(
        "list",
        `SELECT digest, data FROM pathinfos WHERE digest > $1 ORDER BY digest LIMIT ${LIST_PAGE}`,
        [after],
      );
      for (const row of rows) {
        after = row.digest as Uint8Array;
        const info = listedPathInfo(after, row.data, onDamaged);
        if (info) yield info;
      }
      if (rows.length < LIST_PAGE) return;
    }
  }

  /** Removes the row under `digest`, and its references, if it is still damaged. */
  async deleteDamaged(digest: Uint8Array): Promise<boolean> {
    checkPathInfoDigest(digest);
    return await this.#db.transaction("delete", async (tx) => {
      const rows = await tx.query("SELECT data FROM pathinfos WHERE digest = $1 FOR UPDATE", [
        digest,
      ]);
      if (rows.length === 0 || !isDamagedRow(digest, rows[0].data)) return false;
      await removeWithRefs(tx, digest);
      return true;
    });
  }

  /**
   * Removes the PathInfo with this digest (if still `expected`); false if
   * there was none. Without `expected`, refuses a path that a stored path
   * not in `alongWith` refers to ({@linkcode StillReferencedError}).
   */
  async delete(
    digest: Uint8Array,
    expected?: PathInfo,
    alongWith?: ReadonlySet<string>,
  ): Promise<boolean> {
    checkPathInfoDigest(digest);
    return await this.#db.transaction("delete", async (tx) => {
      const rows = await tx.query("SELECT data FROM pathinfos WHERE digest = $1 FOR UPDATE", [
        digest,
      ]);
      if (rows.length === 0) return false;
      if (expected) {
        if (!sameInfo(rows[0].data as Uint8Array, expected)) return false;
      } else {
        const rows = await tx.query(REFERRERS_SQL, [
          digest,
          referrerRowsToRead(alongWith),
        ]);
        const referrers = blockingReferrers(rows.map((r) => r.referrer as Uint8Array), alongWith);
        if (referrers.length > 0) throw new StillReferencedError(digest, referrers);
      }
      await removeWithRefs(tx, digest);
      return true;
    });
  }

  /**
   * Moves access times forward, all in one transaction. Rows are locked in
   * digest order, whatever order the caller gives: two daemons recording
   * the same busy paths in different orders deadlocked, and a batch that
   * failed five times was lost.
   */
  async recordAccess(entries: readonly PathAccess[]): Promise<void> {
    if (entries.length === 0) return;
    const latest = new Map<string, PathAccess>();
    for (const e of entries) {
      const key = digestKey(e.digest);
      const seen = latest.get(key);
      if (!seen || seen.accessedMs < e.accessedMs) latest.set(key, e);
    }
    const sorted = [...latest.values()].sort((a, b) => compareBytes(a.digest, b.digest));
    await this.#db.transaction("record access", async (tx) => {
      for (let i = 0; i < sorted.length; i += ACCESS_BATCH) {
        const part = sorted.slice(i, i + ACCESS_BATCH);
        const digests = part.map((e) => e.digest);
        await tx.query(
          `SELECT 1 FROM pathinfos WHERE digest = ANY($1::bytea[]) ORDER BY digest ${ACCESS_LOCK}`,
          [digests],
        );
        await tx.query(
          "UPDATE pathinfos AS p SET accessed = t.a " +
            "FROM unnest($1::bytea[], $2::bigint[]) AS t(d, a) " +
            "WHERE p.digest = t.d AND p.accessed < t.a",
          [digests, part.map((e) => e.accessedMs)],
        );
      }
    });
  }

  /** Every stored path's last access time, {@linkcode LIST_PAGE} rows per query. */
  async *listAccess(): AsyncGenerator<PathAccess> {
    let after: Uint8Array = new Uint8Array(0);
    while (true) {
      const rows = await this.#db.run(
        "list access",
        "SELECT digest, accessed FROM pathinfos WHERE digest > $1 ORDER BY digest " +
          `LIMIT ${LIST_PAGE}`,
        [after],
      );
      for (const row of rows) {
        after = row.digest as Uint8Array;
        yield { digest: after, accessedMs: Number(row.accessed) };
      }
      if (rows.length < LIST_PAGE) return;
    }
  }

  /** Removes the PathInfo unless accessed at or after `cutoffMs` or referred to. */
  async deleteUnaccessed(digest: Uint8Array, cutoffMs: number): Promise<boolean> {
    checkPathInfoDigest(digest);
    return await this.#db.transaction("delete", async (tx) => {
      const rows = await tx.query(
        "SELECT 1 FROM pathinfos WHERE digest = $1 AND accessed < $2 FOR UPDATE",
        [digest, cutoffMs],
      );
      if (rows.length === 0) return false;
      if ((await tx.query(REFERRERS_SQL, [digest, 1])).length > 0) return false;
      await removeWithRefs(tx, digest);
      return true;
    });
  }

  /** Gives the connection pool back. */
  close(): Promise<void> {
    return this.#db.close();
  }
}
