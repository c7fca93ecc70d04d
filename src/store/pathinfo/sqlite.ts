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
  checkPathInfoDigest,
  decodeStoredPathInfo,
  otherReferences,
  sameInfo,
  validateForPut,
} from "./put_check.ts";
import {
  type PathAccess,
  type PathInfoService,
  REFERRERS_NAMED,
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

/**
 * Creates `pathinfo_refs` in a database from before it existed, filled from
 * the stored PathInfos, in one transaction (so two processes opening the
 * file at once fill it once). A row that does not decode is left out:
 * `verify` reports it as damaged.
 */
function addReferenceIndex(db: DatabaseSync): void {
  const exists = () =>
    db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pathinfo_refs'")
      .get() !== undefined;
  if (exists()) return;
  inTransaction(db, () => {
    if (exists()) return;
    db.exec(REFS_SCHEMA);
    const insert = db.prepare(
      "INSERT OR IGNORE INTO pathinfo_refs (reference, referrer) VALUES (?, ?)",
    );
    for (const row of db.prepare("SELECT digest, data FROM pathinfos").iterate()) {
      const digest = row.digest as Uint8Array;
      let info: PathInfo;
      try {
        info = PathInfo.decode(row.data as Uint8Array);
      } catch {
        continue;
      }
      for (const ref of otherReferences(info, digest)) insert.run(ref, digest);
    }
  });
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
          `WHERE r.reference = ? LIMIT ${REFERRERS_NAMED}`,
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

  /** Every stored PathInfo, ascending by digest. */
  async *list(): AsyncGenerator<PathInfo> {
    let after: Uint8Array | undefined;
    while (true) {
      const rows = storageCall(
        "list",
        () => after ? this.#nextPage.all(after) : this.#firstPage.all(),
      );
      for (const row of rows) {
        const key = row.digest as Uint8Array;
        yield decodeStoredPathInfo(key, row.data);
        after = key;
      }
      if (rows.length < LIST_PAGE) return;
    }
  }

  /**
   * Removes the PathInfo with this digest (if still `expected`); false if
   * there was none. Without `expected`, refuses a path that a stored path
   * refers to ({@linkcode StillReferencedError}).
   */
  delete(digest: Uint8Array, expected?: PathInfo): Promise<boolean> {
    try {
      checkPathInfoDigest(digest);
      const removed = storageCall("delete", () =>
        inTransaction(this.#db, () => {
          if (expected) {
            const row = this.#select.get(digest);
            if (!row || !sameInfo(row.data as Uint8Array, expected)) return false;
          } else {
            const referrers = this.#referrersOf(digest);
            if (referrers.length > 0) throw new StillReferencedError(digest, referrers);
          }
          return this.#removeWithRefs(digest);
        }));
      return Promise.resolve(removed);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Up to {@linkcode REFERRERS_NAMED} stored paths that refer to `digest`. */
  #referrersOf(digest: Uint8Array): Uint8Array[] {
    return this.#referrers.all(digest).map((r) => r.referrer as Uint8Array);
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
