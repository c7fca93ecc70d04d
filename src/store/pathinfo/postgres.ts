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
 * @module
 */
import { PostgresDb, type Schema } from "../../castore/postgres_db.ts";
import type { PostgresConfig } from "../../castore/postgres_url.ts";
import { PathInfo } from "../../proto/tvix/store/protos/pathinfo.ts";
import {
  checkPathInfoDigest,
  decodeStoredPathInfo,
  sameInfo,
  validateForPut,
} from "./put_check.ts";
import type { PathAccess, PathInfoService } from "./service.ts";
import { compareBytes, digestKey } from "../../castore/digest.ts";

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
  ],
};

/** Rows fetched per query while listing. */
export const LIST_PAGE = 256;

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
    return new PostgresPathInfoService(await PostgresDb.open(config, PATHINFO_SCHEMA));
  }

  /** The PathInfo stored under this 20-byte digest, or `undefined`. */
  async get(digest: Uint8Array): Promise<PathInfo | undefined> {
    checkPathInfoDigest(digest);
    const rows = await this.#db.run("read", "SELECT data FROM pathinfos WHERE digest = $1", [
      digest,
    ]);
    return rows.length === 0 ? undefined : decodeStoredPathInfo(digest, rows[0].data);
  }

  /** Validates and stores (replacing an entry for the same store path). */
  async put(info: PathInfo): Promise<PathInfo> {
    const path = validateForPut(info);
    await this.#db.run(
      "write",
      "INSERT INTO pathinfos (digest, data, accessed) VALUES ($1, $2, $3) " +
        "ON CONFLICT (digest) DO UPDATE SET data = excluded.data, " +
        "accessed = greatest(pathinfos.accessed, excluded.accessed)",
      [path.digest, PathInfo.encode(info).finish(), Date.now()],
    );
    return info;
  }

  /** Every stored PathInfo, ascending by digest, {@linkcode LIST_PAGE} rows per query. */
  async *list(): AsyncGenerator<PathInfo> {
    let after: Uint8Array = new Uint8Array(0);
    while (true) {
      const rows = await this.#db.run(
        "list",
        `SELECT digest, data FROM pathinfos WHERE digest > $1 ORDER BY digest LIMIT ${LIST_PAGE}`,
        [after],
      );
      for (const row of rows) {
        after = row.digest as Uint8Array;
        yield decodeStoredPathInfo(after, row.data);
      }
      if (rows.length < LIST_PAGE) return;
    }
  }

  /** Removes the PathInfo with this digest (if still `expected`); false if there was none. */
  async delete(digest: Uint8Array, expected?: PathInfo): Promise<boolean> {
    checkPathInfoDigest(digest);
    if (!expected) {
      const gone = await this.#db.run(
        "delete",
        "DELETE FROM pathinfos WHERE digest = $1 RETURNING digest",
        [digest],
      );
      return gone.length > 0;
    }
    return await this.#db.transaction("delete", async (tx) => {
      const rows = await tx.query("SELECT data FROM pathinfos WHERE digest = $1 FOR UPDATE", [
        digest,
      ]);
      if (rows.length === 0 || !sameInfo(rows[0].data as Uint8Array, expected)) return false;
      await tx.query("DELETE FROM pathinfos WHERE digest = $1", [digest]);
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
          "SELECT 1 FROM pathinfos WHERE digest = ANY($1::bytea[]) ORDER BY digest FOR UPDATE",
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

  /** Removes the PathInfo unless accessed at or after `cutoffMs`. */
  async deleteUnaccessed(digest: Uint8Array, cutoffMs: number): Promise<boolean> {
    checkPathInfoDigest(digest);
    const gone = await this.#db.run(
      "delete",
      "DELETE FROM pathinfos WHERE digest = $1 AND accessed < $2 RETURNING digest",
      [digest, cutoffMs],
    );
    return gone.length > 0;
  }

  /** Gives the connection pool back. */
  close(): Promise<void> {
    return this.#db.close();
  }
}
