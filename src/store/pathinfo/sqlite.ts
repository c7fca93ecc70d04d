/**
 * PathInfoService on SQLite (`sqlite:///path`, `sqlite://` in memory).
 *
 * Table `pathinfos`: key = raw 20-byte store path digest, value = protobuf
 * encoding of the PathInfo, and `accessed`, the path's last access time in
 * ms (docs/gc.md#access-times). Put validates and overwrites (and counts
 * as an access); list walks the keys in order. Reads check that a row still decodes, validates and
 * belongs to its key, so corruption surfaces as `StorageError`.
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
  sameInfo,
  validateForPut,
} from "./put_check.ts";
import type { PathAccess, PathInfoService } from "./service.ts";

const SCHEMA = `CREATE TABLE IF NOT EXISTS pathinfos (
  digest BLOB PRIMARY KEY NOT NULL,
  data BLOB NOT NULL,
  accessed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID`;

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
  #closed = false;

  /** Opens (creating) the database file at `path`, or an in-memory one if undefined. */
  constructor(path: string | undefined) {
    this.#db = openDatabase(path);
    try {
      this.#db.exec(SCHEMA);
      migrate(this.#db);
      this.#select = this.#db.prepare("SELECT data FROM pathinfos WHERE digest = ?");
      this.#upsert = this.#db.prepare(
        "INSERT INTO pathinfos (digest, data, accessed) VALUES (?, ?, ?) " +
          "ON CONFLICT (digest) DO UPDATE SET data = excluded.data, " +
          "accessed = max(accessed, excluded.accessed)",
      );
      this.#access = this.#db.prepare(
        "UPDATE pathinfos SET accessed = ? WHERE digest = ? AND accessed < ?",
      );
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

  /** Validates and stores (replacing an entry for the same store path). */
  put(info: PathInfo): Promise<PathInfo> {
    try {
      const path = validateForPut(info);
      const bytes = PathInfo.encode(info).finish();
      storageCall("write", () => this.#upsert.run(path.digest, bytes, Date.now()));
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

  /** Removes the PathInfo with this digest (if still `expected`); false if there was none. */
  delete(digest: Uint8Array, expected?: PathInfo): Promise<boolean> {
    try {
      checkPathInfoDigest(digest);
      const changes = storageCall("delete", () =>
        inTransaction(this.#db, () => {
          if (expected) {
            const row = this.#db.prepare("SELECT data FROM pathinfos WHERE digest = ?").get(digest);
            if (!row || !sameInfo(row.data as Uint8Array, expected)) return 0;
          }
          return this.#db.prepare("DELETE FROM pathinfos WHERE digest = ?").run(digest).changes;
        }));
      return Promise.resolve(Number(changes) > 0);
    } catch (err) {
      return Promise.reject(err);
    }
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

  /** Removes the PathInfo unless accessed at or after `cutoffMs`. */
  deleteUnaccessed(digest: Uint8Array, cutoffMs: number): Promise<boolean> {
    try {
      checkPathInfoDigest(digest);
      const changes = storageCall(
        "delete",
        () =>
          this.#db.prepare("DELETE FROM pathinfos WHERE digest = ? AND accessed < ?")
            .run(digest, cutoffMs).changes,
      );
      return Promise.resolve(Number(changes) > 0);
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
