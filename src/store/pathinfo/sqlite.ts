/**
 * PathInfoService on SQLite (`sqlite:///path`, `sqlite://` in memory).
 *
 * Table `pathinfos`: key = raw 20-byte store path digest, value = protobuf
 * encoding of the PathInfo, and `accessed`, the path's last access time in
 * ms (docs/gc.md#access-times). Put validates and overwrites (and counts
 * as an access); list walks the keys in order. Reads check that a row still decodes, validates and
 * belongs to its key, so corruption surfaces as `StorageError`.
 *
 * Table `pathinfo_refs` lists who refers to whom (docs/gc.md#referrers),
 * written in the put's transaction, so a deletion can refuse a path that
 * a stored path refers to in the same transaction as it removes it.
 *
 * @module
 */
import type { DatabaseSync, StatementSync } from "node:sqlite";
import { StorageError } from "../../errors.ts";
import { durably, inTransaction, openDatabase, storageCall } from "../../castore/sqlite_db.ts";
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

const SCHEMA = `CREATE TABLE IF NOT EXISTS pathinfos (
  digest BLOB PRIMARY KEY NOT NULL,
  data BLOB NOT NULL,
  accessed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID`;

/** Referrers by reference, and a referrer's own rows found by the second index. */
const REFS_SCHEMA = `CREATE TABLE pathinfo_refs (
  reference BLOB NOT NULL,
  referrer BLOB NOT NULL,
  PRIMARY KEY (reference, referrer)
) WITHOUT ROWID;
CREATE INDEX pathinfo_refs_by_referrer ON pathinfo_refs (referrer)`;

/** Stored paths indexed per transaction when filling `pathinfo_refs`. */
const BACKFILL_PAGE = 2000;

/**
 * Creates `pathinfo_refs` in a database from before it existed and fills it
 * from the stored PathInfos. A flag table (`pathinfo_refs_backfill`) is
 * created with it and dropped once a process has indexed every path; until
 * then every process that opens the file indexes them, before it serves
 * anything (inserting a row twice is harmless). Each page is its own short
 * transaction, so other processes' writes go on meanwhile: they are of
 * this version and write their own rows, and a page reads the rows as they
 * are when it runs.
 */
function addReferenceIndex(db: DatabaseSync): void {
  const exists = (table: string) =>
    db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(table) !==
      undefined;
  if (!exists("pathinfo_refs")) {
    inTransaction(db, () => {
      if (exists("pathinfo_refs")) return;
      db.exec(REFS_SCHEMA);
      if (db.prepare("SELECT 1 FROM pathinfos LIMIT 1").get()) {
        db.exec("CREATE TABLE pathinfo_refs_backfill (pending INTEGER PRIMARY KEY)");
      }
    });
  }
  if (!exists("pathinfo_refs_backfill")) return;
  const page = db.prepare(
    `SELECT digest, data FROM pathinfos WHERE digest > ? ORDER BY digest LIMIT ${BACKFILL_PAGE}`,
  );
  const insert = db.prepare(
    "INSERT OR IGNORE INTO pathinfo_refs (reference, referrer) VALUES (?, ?)",
  );
  let after: Uint8Array = new Uint8Array(0);
  for (let done = false; !done;) {
    done = inTransaction(db, () => {
      const rows = page.all(after);
      for (const row of rows) {
        after = row.digest as Uint8Array;
        for (const ref of storedReferences(after, row.data)) insert.run(ref, after);
      }
      if (rows.length === BACKFILL_PAGE) return false;
      db.exec("DROP TABLE IF EXISTS pathinfo_refs_backfill");
      return true;
    });
  }
}

/**
 * Adds `accessed` to a table created before access times existed. Paths
 * already stored count as accessed now, so upgrading does not make them
 * look unused to `gc --older-than`.
 */
function migrate(db: DatabaseSync): void {
  const columns = db.prepare("PRAGMA table_info(pathinfos)").all().map((c) => c.name);
  if (columns.includes("accessed")) return;
  inTransaction(db, () => {
    db.exec("ALTER TABLE pathinfos ADD COLUMN accessed INTEGER NOT NULL DEFAULT 0");
    db.prepare("UPDATE pathinfos SET accessed = ?").run(Date.now());
  });
}

/** Rows fetched per query while listing, so no statement stays open across awaits. */
const LIST_PAGE = 256;

/** A PathInfoService storing rows in a SQLite database. */
export class SqlitePathInfoService implements PathInfoService {
  readonly #db: DatabaseSync;
  readonly #select: StatementSync;
  readonly #upsert: StatementSync;
  readonly #firstPage: StatementSync;
  readonly #nextPage: StatementSync;
  readonly #access: StatementSync;
  readonly #dropRefs: StatementSync;
  readonly #addRef: StatementSync;
  readonly #referrers: StatementSync;
  readonly #remove: StatementSync;
  #closed = false;

  /** Opens (creating) the database file at `path`, or an in-memory one if undefined. */
  constructor(path: string | undefined) {
    this.#db = openDatabase(path);
    try {
      this.#db.exec(SCHEMA);
      migrate(this.#db);
      addReferenceIndex(this.#db);
      this.#select = this.#db.prepare("SELECT data FROM pathinfos WHERE digest = ?");
      this.#upsert = this.#db.prepare(
        "INSERT INTO pathinfos (digest, data, accessed) VALUES (?, ?, ?) " +
          "ON CONFLICT (digest) DO UPDATE SET data = excluded.data, " +
          "accessed = max(accessed, excluded.accessed)",
      );
      this.#access = this.#db.prepare(
        "UPDATE pathinfos SET accessed = ? WHERE digest = ? AND accessed < ?",
      );
      this.#dropRefs = this.#db.prepare("DELETE FROM pathinfo_refs WHERE referrer = ?");
      this.#addRef = this.#db.prepare(
        "INSERT OR IGNORE INTO pathinfo_refs (reference, referrer) VALUES (?, ?)",
      );
      this.#referrers = this.#db.prepare(
        // Only referrers still stored count: a row left behind by a process
        // of an older version, which did not keep this table, holds nothing.
        "SELECT r.referrer FROM pathinfo_refs AS r JOIN pathinfos AS p ON p.digest = r.referrer " +
          "WHERE r.reference = ? LIMIT ?",
      );
      this.#remove = this.#db.prepare("DELETE FROM pathinfos WHERE digest = ?");
      this.#firstPage = this.#db.prepare(
        `SELECT digest, data FROM pathinfos ORDER BY digest LIMIT ${LIST_PAGE}`,
      );
      this.#nextPage = this.#db.prepare(
        `SELECT digest, data FROM pathinfos WHERE digest > ? ORDER BY digest LIMIT ${LIST_PAGE}`,
      );
    } catch (err) {
      this.#db.close();
      throw new StorageError(`unable to set up sqlite pathinfo table: ${err}`);
    }
  }

  /** The PathInfo stored under this 20-byte digest, or `undefined`. */
  get(digest: Uint8Array): Promise<PathInfo | undefined> {
    try {
      checkPathInfoDigest(digest);
      const row = storageCall("read", () => this.#select.get(digest));
      return Promise.resolve(row ? decodeStoredPathInfo(digest, row.data) : undefined);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Validates and stores (replacing an entry for the same store path) with its references. */
  put(info: PathInfo): Promise<PathInfo> {
    try {
      const path = validateForPut(info);
      const bytes = PathInfo.encode(info).finish();
      storageCall("write", () =>
        inTransaction(this.#db, () => {
          this.#upsert.run(path.digest, bytes, Date.now());
          this.#dropRefs.run(path.digest);
          for (const ref of otherReferences(info, path.digest)) this.#addRef.run(ref, path.digest);
        }));
      return Promise.resolve(info);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Every stored PathInfo, ascending by digest (damaged rows: see the interface). */
  async *list(onDamaged?: DamagedRowHandler): AsyncGenerator<PathInfo> {
    let after: Uint8Array | undefined;
    while (true) {
      const rows = storageCall(
        "list",
        () => after ? this.#nextPage.all(after) : this.#firstPage.all(),
      );
      for (const row of rows) {
        const key = row.digest as Uint8Array;
        const info = listedPathInfo(key, row.data, onDamaged);
        if (info) yield info;
        after = key;
      }
      if (rows.length < LIST_PAGE) return;
    }
  }

  /** Removes the row under `digest`, and its references, if it is still damaged. */
  deleteDamaged(digest: Uint8Array): Promise<boolean> {
    try {
      checkPathInfoDigest(digest);
      const removed = storageCall("delete", () =>
        inTransaction(this.#db, () => {
          const row = this.#select.get(digest);
          return row !== undefined && isDamagedRow(digest, row.data) &&
            this.#removeWithRefs(digest);
        }));
      return Promise.resolve(removed);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Removes the PathInfo with this digest (if still `expected`); false if
   * there was none. Without `expected`, refuses a path that a stored path
   * not in `alongWith` refers to ({@linkcode StillReferencedError}).
   */
  delete(
    digest: Uint8Array,
    expected?: PathInfo,
    alongWith?: ReadonlySet<string>,
  ): Promise<boolean> {
    try {
      checkPathInfoDigest(digest);
      const removed = storageCall("delete", () =>
        inTransaction(this.#db, () => {
          if (expected) {
            const row = this.#select.get(digest);
            if (!row || !sameInfo(row.data as Uint8Array, expected)) return false;
          } else {
            const referrers = this.#referrersOf(digest, alongWith);
            if (referrers.length > 0) throw new StillReferencedError(digest, referrers);
          }
          return this.#removeWithRefs(digest);
        }));
      return Promise.resolve(removed);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Up to `REFERRERS_NAMED` (service.ts) stored paths that refer to `digest`,
   * not counting those in `alongWith` (enough rows are read to leave that
   * many after dropping them).
   */
  #referrersOf(digest: Uint8Array, alongWith?: ReadonlySet<string>): Uint8Array[] {
    const rows = this.#referrers.all(digest, referrerRowsToRead(alongWith));
    return blockingReferrers(rows.map((r) => r.referrer as Uint8Array), alongWith);
  }

  /** Deletes the row and its references (inside the caller's transaction). */
  #removeWithRefs(digest: Uint8Array): boolean {
    if (Number(this.#remove.run(digest).changes) === 0) return false;
    this.#dropRefs.run(digest);
    return true;
  }

  /**
   * Makes every commit so far durable: the database runs with `synchronous
   * = NORMAL`, under which the last commits may be lost on a power failure,
   * so one write is committed with FULL, which syncs the log and with it
   * everything before (deleting N paths then costs one sync, not N). The
   * write sets the schema's user version to what it is.
   */
  sync(): Promise<void> {
    try {
      storageCall("sync", () => {
        const version = Number(this.#db.prepare("PRAGMA user_version").get()?.user_version ?? 0);
        durably(this.#db, () => this.#db.exec(`PRAGMA user_version = ${version}`));
      });
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Moves access times forward, all in one transaction. */
  recordAccess(entries: readonly PathAccess[]): Promise<void> {
    try {
      storageCall("record access", () =>
        inTransaction(this.#db, () => {
          for (const e of entries) this.#access.run(e.accessedMs, e.digest, e.accessedMs);
        }));
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Every stored path's last access time. */
  async *listAccess(): AsyncGenerator<PathAccess> {
    const rows = storageCall(
      "list access",
      () => this.#db.prepare("SELECT digest, accessed FROM pathinfos").all(),
    );
    for (const row of rows) {
      yield { digest: row.digest as Uint8Array, accessedMs: Number(row.accessed) };
    }
  }

  /** Removes the PathInfo unless accessed at or after `cutoffMs` or referred to. */
  deleteUnaccessed(digest: Uint8Array, cutoffMs: number): Promise<boolean> {
    try {
      checkPathInfoDigest(digest);
      const removed = storageCall("delete", () =>
        inTransaction(this.#db, () => {
          const row = this.#db.prepare("SELECT accessed FROM pathinfos WHERE digest = ?")
            .get(digest);
          if (!row || Number(row.accessed) >= cutoffMs) return false;
          if (this.#referrersOf(digest).length > 0) return false;
          return this.#removeWithRefs(digest);
        }));
      return Promise.resolve(removed);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Closes the database connection. */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#db.close();
    }
    return Promise.resolve();
  }
}
