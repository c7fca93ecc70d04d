/**
 * DirectoryService on PostgreSQL (`postgres://…`, docs/storage.md#postgresql).
 *
 * The same rows as the SQLite backend, so the two behave alike: table
 * `directories` holds the canonical encoding under the raw 32-byte digest
 * and `touched`, when the row was last written or reused (ms since the
 * epoch, for garbage collection, docs/gc.md). Reads re-verify every row. A
 * single put only stores a directory whose children are present and marks
 * their closures as used, in one transaction; a multi-put stores its whole
 * closure in one transaction on close. Several processes may share the
 * database: what one commits, the others read at once.
 *
 * @module
 */
import { b3Display, blake3, checkDigestLength, type Digest, digestKey } from "../digest.ts";
import { type Directory, encodeDirectory } from "../directory.ts";
import { CorruptionError } from "../../errors.ts";
import { PostgresDb, type Row, type Schema } from "../postgres_db.ts";
import type { PostgresConfig } from "../postgres_url.ts";
import type { SweepOptions, SweepReport } from "../sweep.ts";
import { decodeStored, traverseClosure } from "./closure.ts";
import {
  checkSinglePut,
  childClosures,
  ClosurePutter,
  closureRemovedError,
} from "./closure_putter.ts";
import type { DirectoryPutter, DirectoryService } from "./service.ts";

/** The `directories` table, version by version (docs/storage.md#postgresql). */
export const DIRECTORY_SCHEMA: Schema = {
  component: "directories",
  migrations: [[
    `CREATE TABLE directories (
      digest bytea PRIMARY KEY CHECK (length(digest) = 32),
      data bytea NOT NULL,
      touched bigint NOT NULL
    )`,
  ]],
};

/** Rows per statement: bounds message sizes and the parameter arrays. */
const BATCH = 1000;

// Content-addressed: an existing row already holds these exact bytes; it
// is only marked as used. Rows go in digest order, so two closures sharing
// directories lock them in the same order instead of deadlocking.
const INSERT = `INSERT INTO directories (digest, data, touched)
  SELECT d, v, $3 FROM unnest($1::bytea[], $2::bytea[]) AS t(d, v) ORDER BY d
  ON CONFLICT (digest) DO UPDATE SET touched = GREATEST(directories.touched, excluded.touched)`;

/** A DirectoryService storing rows in a PostgreSQL database. */
export class PostgresDirectoryService implements DirectoryService {
  readonly #db: PostgresDb;

  private constructor(db: PostgresDb) {
    this.#db = db;
  }

  /**
   * Connects and migrates the schema. Throws `StorageError` "unable to
   * open postgres database …" when the server cannot be reached, refuses
   * the login, or holds a newer schema.
   */
  static async open(config: PostgresConfig): Promise<PostgresDirectoryService> {
    return new PostgresDirectoryService(await PostgresDb.open(config, DIRECTORY_SCHEMA));
  }

  /** One directory, verified against its digest, or `undefined`. */
  async get(digest: Digest): Promise<Directory | undefined> {
    checkDigestLength(digest);
    const rows = await this.#db.run("read", "SELECT data FROM directories WHERE digest = $1", [
      digest,
    ]);
    return rows.length === 0 ? undefined : decodeRow(digest, rows[0]);
  }

  /**
   * The closure of `digest`, root first then breadth-first; empty if
   * unknown. Each level of the tree is fetched with one query (in batches
   * of {@linkcode BATCH}) instead of one per directory: a remote database
   * then costs a round trip per level.
   */
  getRecursive(digest: Digest): AsyncIterable<Directory> {
    // Loaded, not yet handed to the traversal.
    const loaded = new Map<string, Directory | undefined>();
    // Every digest queried or about to be: each is fetched once.
    const seen = new Set<string>();
    // Children of loaded directories not queried yet: the next level.
    const frontier = new Map<string, Digest>();
    const load = async (d: Digest): Promise<Directory | undefined> => {
      const key = digestKey(d);
      if (!loaded.has(key)) {
        frontier.delete(key);
        seen.add(key);
        const wanted = [d];
        for (const [k, w] of frontier) {
          if (wanted.length === BATCH) break;
          frontier.delete(k);
          wanted.push(w);
        }
        const rows = await this.#db.run(
          "read",
          "SELECT digest, data FROM directories WHERE digest = ANY($1::bytea[])",
          [wanted],
        );
        for (const w of wanted) loaded.set(digestKey(w), undefined);
        for (const row of rows) {
          const rowDigest = row.digest as Uint8Array;
          loaded.set(digestKey(rowDigest), decodeRow(rowDigest, row));
        }
      }
      const directory = loaded.get(key);
      loaded.delete(key); // traverseClosure asks for each digest once
      for (const child of directory?.directories ?? []) {
        const childKey = digestKey(child.digest);
        if (!seen.has(childKey)) {
          seen.add(childKey);
          frontier.set(childKey, child.digest);
        }
      }
      return directory;
    };
    return traverseClosure(load, digest, true);
  }

  /**
   * Stores one valid directory whose children are already stored. The
   * children's closures are marked as used in the same transaction: the
   * new directory relies on them, and a garbage collection running
   * meanwhile must keep them. If gc removed one of them before the mark
   * landed, the put fails instead of storing a dangling reference.
   */
  async put(directory: Directory): Promise<Digest> {
    const digest = await checkSinglePut(directory, (d) => this.get(d));
    const closure = await childClosures(directory, (d) => this.getRecursive(d));
    const now = Date.now();
    await this.#db.transaction("write", async (tx) => {
      const digests = [...closure.entries()].sort(([a], [b]) => a < b ? -1 : 1).map(([, d]) => d);
      for (let i = 0; i < digests.length; i += BATCH) {
        const part = digests.slice(i, i + BATCH);
        const touched = await tx.query(
          "UPDATE directories SET touched = GREATEST(touched, $2) " +
            "WHERE digest = ANY($1::bytea[]) RETURNING digest",
          [part, now],
        );
        if (touched.length !== part.length) throw closureRemovedError(digest);
      }
      await tx.query(INSERT, [[digest], [encodeDirectory(directory)], now]);
    });
    return digest;
  }

  /** A putter storing the whole closure in one transaction on close. */
  putMultiple(): DirectoryPutter {
    return new ClosurePutter(async (closure) => {
      const rows = closure.leavesToRoot.map((d) => {
        const bytes = encodeDirectory(d);
        const digest = blake3(bytes);
        return { key: digestKey(digest), digest, bytes };
      }).sort((a, b) => a.key < b.key ? -1 : 1);
      const now = Date.now();
      await this.#db.transaction("write", async (tx) => {
        for (let i = 0; i < rows.length; i += BATCH) {
          const part = rows.slice(i, i + BATCH);
          await tx.query(INSERT, [part.map((r) => r.digest), part.map((r) => r.bytes), now]);
        }
      });
    });
  }

  /**
   * Garbage collection's sweep (docs/gc.md): deletes every directory that
   * is not live and was last stored before the cutoff. Rows are listed in
   * pages by digest, never all at once.
   */
  async sweep(isLive: (digest: Digest) => boolean, options: SweepOptions): Promise<SweepReport> {
    const dead: Digest[] = [];
    let deadBytes = 0;
    let kept = 0;
    let after: Uint8Array = new Uint8Array(0);
    while (true) {
      const rows = await this.#db.run(
        "sweep",
        "SELECT digest, length(data) AS size, touched < $2 AS old FROM directories " +
          `WHERE digest > $1 ORDER BY digest LIMIT ${BATCH}`,
        [after, options.cutoff],
      );
      for (const row of rows) {
        const digest = row.digest as Uint8Array;
        if (row.old !== true || isLive(digest)) {
          kept++;
        } else {
          dead.push(digest);
          deadBytes += Number(row.size);
        }
      }
      if (rows.length < BATCH) break;
      after = rows[rows.length - 1].digest as Uint8Array;
    }
    if (options.dryRun) {
      return { removed: dead.length, removedBytes: deadBytes, kept, reclaimedBytes: 0 };
    }
    let removed = 0;
    let removedBytes = 0;
    await this.#db.transaction("sweep", async (tx) => {
      removed = removedBytes = 0; // a retried transaction starts over
      for (let i = 0; i < dead.length; i += BATCH) {
        // Checked again here: a put that reused one since keeps it (it
        // holds the row's lock until it commits, and this re-reads it).
        const gone = await tx.query(
          "DELETE FROM directories WHERE digest = ANY($1::bytea[]) AND touched < $2 " +
            "RETURNING length(data) AS size",
          [dead.slice(i, i + BATCH), options.cutoff],
        );
        removed += gone.length;
        for (const row of gone) removedBytes += Number(row.size);
      }
    });
    // Freed space stays in the table for new rows (VACUUM's business).
    return { removed, removedBytes, kept: kept + dead.length - removed, reclaimedBytes: 0 };
  }

  /** Gives the connection pool back. */
  close(): Promise<void> {
    return this.#db.close();
  }
}

/** Decodes a row's `data`, verified against `digest`. Throws `StorageError`. */
function decodeRow(digest: Digest, row: Row): Directory {
  if (!(row.data instanceof Uint8Array)) {
    throw new CorruptionError(`directory ${b3Display(digest)}: stored value is not bytes`);
  }
  return decodeStored(digest, row.data);
}
