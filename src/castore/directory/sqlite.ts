/**
 * DirectoryService on SQLite (`sqlite:///path`, `sqlite://` in memory).
 *
 * Table `directories`: key = raw 32-byte digest, value = canonical
 * encoding. Every read re-verifies digest and validity, so a corrupted row
 * surfaces as `StorageError` instead of wrong data. A single put only
 * stores a directory whose children are present; a multi-put stores its
 * whole closure in one transaction on close.
 *
 * @module
 */
import type { DatabaseSync, StatementSync } from "node:sqlite";
import { b3Display, blake3, checkDigestLength, type Digest } from "../digest.ts";
import { type Directory, encodeDirectory } from "../directory.ts";
import { StorageError } from "../../errors.ts";
import { inTransaction, openDatabase, storageCall } from "../sqlite_db.ts";
import { decodeStored, traverseClosure } from "./closure.ts";
import { checkSinglePut, ClosurePutter } from "./closure_putter.ts";
import type { DirectoryPutter, DirectoryService } from "./service.ts";

const SCHEMA = `CREATE TABLE IF NOT EXISTS directories (
  digest BLOB PRIMARY KEY NOT NULL,
  data BLOB NOT NULL
) WITHOUT ROWID`;

/** A DirectoryService storing rows in a SQLite database. */
export class SqliteDirectoryService implements DirectoryService {
  readonly #db: DatabaseSync;
  readonly #select: StatementSync;
  readonly #insert: StatementSync;
  #closed = false;

  /** Opens (creating) the database file at `path`, or an in-memory one if undefined. */
  constructor(path: string | undefined) {
    this.#db = openDatabase(path);
    try {
      this.#db.exec(SCHEMA);
      this.#select = this.#db.prepare("SELECT data FROM directories WHERE digest = ?");
      // Content-addressed: an existing row already holds these exact bytes.
      this.#insert = this.#db.prepare(
        "INSERT OR IGNORE INTO directories (digest, data) VALUES (?, ?)",
      );
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
        throw new StorageError(`directory ${b3Display(digest)}: stored value is not a blob`);
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

  /** Stores one valid directory whose children are already stored. */
  async put(directory: Directory): Promise<Digest> {
    const digest = await checkSinglePut(directory, (d) => this.get(d));
    storageCall("write", () => this.#insert.run(digest, encodeDirectory(directory)));
    return digest;
  }

  /** A putter storing the whole closure in one transaction on close. */
  putMultiple(): DirectoryPutter {
    return new ClosurePutter((closure) => {
      try {
        storageCall("write", () =>
          inTransaction(this.#db, () => {
            for (const d of closure.leavesToRoot) {
              const bytes = encodeDirectory(d);
              this.#insert.run(blake3(bytes), bytes);
            }
          }));
        return Promise.resolve();
      } catch (err) {
        return Promise.reject(err);
      }
    });
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
