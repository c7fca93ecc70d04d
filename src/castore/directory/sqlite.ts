/**
 * DirectoryService on SQLite (`sqlite:///path`, `sqlite://` in memory).
 *
 * Table `directories`: key = raw 32-byte digest, value = canonical
 * encoding, and when the row was last written or reused (`touched`, for
 * garbage collection, docs/gc.md). Every read re-verifies digest and
 * validity, so a corrupted row surfaces as `StorageError` instead of wrong
 * data. A single put only stores a directory whose children are present
 * (and marks their closures as used); a multi-put stores its whole closure
 * in one transaction on close.
 *
 * @module
 */
import type { DatabaseSync, StatementSync } from "node:sqlite";
import { b3Display, blake3, checkDigestLength, type Digest } from "../digest.ts";
import { type Directory, encodeDirectory } from "../directory.ts";
import { CorruptionError, StorageError } from "../../errors.ts";
import { inTransaction, openDatabase, storageCall } from "../sqlite_db.ts";
import { decodeStored, traverseClosure } from "./closure.ts";
import {
  checkSinglePut,
  childClosures,
  ClosurePutter,
  closureRemovedError,
} from "./closure_putter.ts";
import type { DirectoryPutter, DirectoryService } from "./service.ts";
import type { SweepOptions, SweepReport } from "../sweep.ts";

const SCHEMA = `CREATE TABLE IF NOT EXISTS directories (
  digest BLOB PRIMARY KEY NOT NULL,
  data BLOB NOT NULL,
  touched INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID`;

/** Adds `touched` to a table created before garbage collection existed. */
function migrate(db: DatabaseSync): void {
  const columns = db.prepare("PRAGMA table_info(directories)").all().map((c) => c.name);
  if (!columns.includes("touched")) {
    db.exec("ALTER TABLE directories ADD COLUMN touched INTEGER NOT NULL DEFAULT 0");
  }
}

/** A DirectoryService storing rows in a SQLite database. */
export class SqliteDirectoryService implements DirectoryService {
  readonly #db: DatabaseSync;
  readonly #select: StatementSync;
  readonly #insert: StatementSync;
  readonly #touch: StatementSync;
  #closed = false;

  /** Opens (creating) the database file at `path`, or an in-memory one if undefined. */
  constructor(path: string | undefined) {
    this.#db = openDatabase(path);
    try {
      this.#db.exec(SCHEMA);
      migrate(this.#db);
      this.#select = this.#db.prepare("SELECT data FROM directories WHERE digest = ?");
      // Content-addressed: an existing row already holds these exact bytes;
      // it is only marked as used.
      this.#insert = this.#db.prepare(
        "INSERT INTO directories (digest, data, touched) VALUES (?, ?, ?) " +
          "ON CONFLICT (digest) DO UPDATE SET touched = max(touched, excluded.touched)",
      );
      this.#touch = this.#db.prepare("UPDATE directories SET touched = ? WHERE digest = ?");
    } catch (err) {
      this.#db.close();
      throw new StorageError(`unable to set up sqlite directory table: ${err}`);
    }
  }

  /** Reads a row, verified against its digest and validated; `undefined` if absent. */
  #load(digest: Digest): Promise<Directory | undefined> {
    try {
      const row = storageCall("read", () => this.#select.get(digest));
      if (!row) return Promise.resolve(undefined);
      const data = row.data;
      if (!(data instanceof Uint8Array)) {
        throw new CorruptionError(`directory ${b3Display(digest)}: stored value is not a blob`);
      }
      return Promise.resolve(decodeStored(digest, data));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** One directory, verified against its digest, or `undefined`. */
  get(digest: Digest): Promise<Directory | undefined> {
    try {
      checkDigestLength(digest);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#load(digest);
  }

  /** The closure of `digest`, root first then breadth-first; empty if unknown. */
  getRecursive(digest: Digest): AsyncIterable<Directory> {
    return traverseClosure((d) => this.#load(d), digest, true);
  }

  /**
   * Stores one valid directory whose children are already stored. The
   * children's closures are marked as used in the same transaction that
   * stores it: the new directory relies on them, and a garbage collection
   * running meanwhile must keep them. If gc (in another process) removed
   * one of them after it was read and before the mark, the put fails
   * instead of storing a dangling reference.
   */
  async put(directory: Directory): Promise<Digest> {
    const digest = await checkSinglePut(directory, (d) => this.get(d));
    const closure = await childClosures(directory, (d) => this.getRecursive(d));
    const now = Date.now();
    storageCall("write", () =>
      inTransaction(this.#db, () => {
        for (const d of closure.values()) {
          if (Number(this.#touch.run(now, d).changes) !== 1) throw closureRemovedError(digest);
        }
        this.#insert.run(digest, encodeDirectory(directory), now);
      }));
    return digest;
  }

  /** A putter storing the whole closure in one transaction on close. */
  putMultiple(): DirectoryPutter {
    return new ClosurePutter((closure) => {
      try {
        storageCall("write", () =>
          inTransaction(this.#db, () => {
            const now = Date.now();
            for (const d of closure.leavesToRoot) {
              const bytes = encodeDirectory(d);
              this.#insert.run(blake3(bytes), bytes, now);
            }
          }));
        return Promise.resolve();
      } catch (err) {
        return Promise.reject(err);
      }
    });
  }

  /**
   * Garbage collection's sweep (docs/gc.md): deletes every directory that
   * is not live and was last stored before the cutoff.
   */
  sweep(isLive: (digest: Digest) => boolean, options: SweepOptions): Promise<SweepReport> {
    try {
      const dead: Digest[] = [];
      let removedBytes = 0;
      let kept = 0;
      const rows = this.#db.prepare(
        "SELECT digest, length(data) AS size, touched FROM directories",
      ).iterate();
      for (const row of rows) {
        const digest = row.digest as Uint8Array;
        if (isLive(digest) || Number(row.touched) >= options.cutoff) {
          kept++;
        } else {
          dead.push(digest);
          removedBytes += Number(row.size);
        }
      }
      if (!options.dryRun) {
        storageCall("sweep", () =>
          inTransaction(this.#db, () => {
            // Checked again here: a put that reused one since keeps it.
            const drop = this.#db.prepare(
              "DELETE FROM directories WHERE digest = ? AND touched < ?",
            );
            for (const d of dead) drop.run(d, options.cutoff);
          }));
      }
      // Rows freed inside the file are reused by SQLite, not given back.
      return Promise.resolve({ removed: dead.length, removedBytes, kept, reclaimedBytes: 0 });
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
