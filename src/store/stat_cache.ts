/**
 * The importer's stat cache: what it learnt about local files on earlier
 * imports into one store, so that re-importing an unchanged tree reads no
 * file contents.
 *
 * - A regular file is known by (device, inode) with its size, mtime,
 *   ctime and executable bit; while all of them are unchanged, its blob
 *   digest is the one recorded. Any write changes the ctime, and so does
 *   replacing the file (a new inode) or `chmod`.
 * - A directory is known by its listing key (`castore/import/listing_key.ts`:
 *   a hash over its entries' names, lstat identities and subdirectory
 *   digests) with its digest and size, so an unchanged directory costs one
 *   lookup, not one row per file and a rebuilt Directory message.
 * - A node (the root of an import) is known by its NAR cache key
 *   (`narCacheKey`): its NAR size and SHA-256, which give the store path.
 *
 * Timestamps here have millisecond precision, so a file changed twice
 * within one clock tick could keep its stat. Like git's "racy" rule, a file
 * whose ctime or mtime is within {@linkcode RACY_MS} of the moment it was
 * examined is not recorded, and is read again next time; nor is a
 * directory holding such a file or symlink.
 *
 * The cache is an SQLite file per store under
 * `$XDG_CACHE_HOME/tvix-store/` (else `~/.cache/tvix-store/`): what it
 * says holds for files as imported into that store, which is asked for
 * the resulting PathInfo before anything is skipped. It only ever saves
 * work: a corrupt file is replaced, an unusable directory means no cache,
 * and a failing cache is dropped for the rest of the run.
 *
 * @module
 */
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { createHash } from "node:crypto";
import { join } from "node:path";
import type { Digest } from "../castore/digest.ts";
import type { DirectoryRecord, FileIdentity } from "../castore/import/fs.ts";
import type { NarSummary } from "../nar/calculation.ts";
import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";
import type { ServiceAddrs } from "./services.ts";
import { inTransaction, statementsByCount } from "../castore/sqlite_db.ts";

/**
 * Files changed this recently (ms) when examined are not recorded: the
 * coarsest timestamps in use (FAT, some SMB servers) tick every 2 s.
 */
export const RACY_MS = 2000;

const SCHEMA_VERSION = "1";

/** Inodes asked for in one query (SQLite allows 32,766 parameters; far fewer keep it quick). */
const LOOKUP_BATCH = 500;

/** A row of the `files` table. */
interface FileRow {
  ino: number;
  size: number;
  mtime_ms: number;
  ctime_ms: number;
  executable: number;
  digest: Uint8Array;
}

/** A cache file of another version than this build's. */
class UnusableCache extends Error {}

/**
 * SQLite's messages for a damaged file and for one that is not a database
 * (SQLITE_CORRUPT, SQLITE_NOTADB): Deno's node:sqlite errors carry the
 * message, not the result code.
 */
const DAMAGED = /database disk image is malformed|file is not a database/;

/** Whether `err`, from opening a cache file, means the file should be replaced. */
function replaceable(err: unknown): boolean {
  return err instanceof UnusableCache || DAMAGED.test(errorMessage(err));
}

/** Where the caches live: `$XDG_CACHE_HOME/tvix-store`, else `~/.cache/tvix-store`. */
export function statCacheDir(): string | undefined {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "tvix-store");
  const home = Deno.env.get("HOME");
  return home ? join(home, ".cache", "tvix-store") : undefined;
}

/** The cache file for the store at `addrs` (one per store, whose PathInfos it vouches for). */
export function statCachePath(dir: string, addrs: ServiceAddrs): string {
  const id = createHash("sha256")
    .update(`${addrs.blobServiceAddr}\n${addrs.directoryServiceAddr}\n${addrs.pathInfoServiceAddr}`)
    .digest("hex")
    .slice(0, 32);
  return join(dir, `stat-${id}.sqlite`);
}

/** File digests and NAR summaries remembered from earlier imports into one store. */
export class StatCache {
  readonly #db: DatabaseSync;
  /** The lookup of `n` inodes of one device. */
  readonly #lookup: (n: number) => StatementSync;
  readonly #putFile: StatementSync;
  readonly #getDirectory: StatementSync;
  readonly #putDirectory: StatementSync;
  readonly #getNar: StatementSync;
  readonly #putNar: StatementSync;
  /** Set once a call failed; see {@linkcode StatCache.use}. */
  #broken = false;

  private constructor(db: DatabaseSync) {
    this.#db = db;
    this.#lookup = statementsByCount(
      db,
      (n) =>
        "SELECT ino, size, mtime_ms, ctime_ms, executable, digest FROM files " +
        `WHERE dev = ? AND ino IN (${new Array(n).fill("?").join(", ")})`,
    );
    this.#putFile = db.prepare(
      "INSERT OR REPLACE INTO files (dev, ino, size, mtime_ms, ctime_ms, executable, digest) " +
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
    );
    this.#getDirectory = db.prepare("SELECT digest, size FROM directories WHERE listing_key = ?");
    this.#putDirectory = db.prepare(
      "INSERT OR REPLACE INTO directories (listing_key, digest, size) VALUES (?, ?, ?)",
    );
    this.#getNar = db.prepare("SELECT nar_size, nar_sha256 FROM nars WHERE node_key = ?");
    this.#putNar = db.prepare(
      "INSERT OR REPLACE INTO nars (node_key, nar_size, nar_sha256) VALUES (?, ?, ?)",
    );
  }

  /**
   * Opens (creating) the cache file at `path`. A file that is not a usable
   * cache is replaced; if none can be opened, returns `undefined` (imports
   * then simply read everything).
   */
  static open(path: string): StatCache | undefined {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        Deno.mkdirSync(join(path, ".."), { recursive: true });
        const db = new DatabaseSync(path);
        try {
          // The wait first: switching to WAL already needs the lock that
          // another import's write may hold.
          db.exec(
            "PRAGMA busy_timeout = 2000; PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF",
          );
          db.exec(`
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS files (
              dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
              mtime_ms INTEGER NOT NULL, ctime_ms INTEGER NOT NULL, executable INTEGER NOT NULL,
              digest BLOB NOT NULL, PRIMARY KEY (dev, ino)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS directories (
              listing_key BLOB PRIMARY KEY, digest BLOB NOT NULL, size INTEGER NOT NULL
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS nars (
              node_key TEXT PRIMARY KEY, nar_size INTEGER NOT NULL, nar_sha256 BLOB NOT NULL
            ) WITHOUT ROWID;
            INSERT OR IGNORE INTO meta (key, value) VALUES ('version', '${SCHEMA_VERSION}');
          `);
          const row = db.prepare("SELECT value FROM meta WHERE key = 'version'").get() as
            | { value: string }
            | undefined;
          if (row?.value !== SCHEMA_VERSION) {
            throw new UnusableCache(`cache version ${row?.value}`);
          }
          return new StatCache(db);
        } catch (err) {
          db.close();
          throw err;
        }
      } catch (err) {
        log.debug("stat cache unusable", { path, error: errorMessage(err) });
        // Busy (another import holds it), unreadable, a full disk: this run
        // goes without. Only a damaged file, or one of another version, is
        // replaced (a busy one never is).
        if (attempt > 0 || !replaceable(err)) return undefined;
        // Only speed is at stake: start afresh.
        for (const suffix of ["", "-wal", "-shm"]) {
          try {
            Deno.removeSync(path + suffix);
          } catch { /* absent */ }
        }
      }
    }
    return undefined;
  }

  /** The recorded digest of the file with this stat, if nothing about it changed. */
  fileDigest(stat: FileIdentity): Digest | undefined {
    return this.fileDigests([stat])[0];
  }

  /**
   * {@linkcode StatCache.fileDigest} of each file, asked with one query per
   * device and {@linkcode LOOKUP_BATCH} inodes: a re-import asks for every
   * file of a directory at once, and one query per file was the largest
   * cost of re-importing an unchanged tree.
   */
  fileDigests(stats: FileIdentity[]): (Digest | undefined)[] {
    const rows = new Map<string, FileRow>();
    const byDev = new Map<number, number[]>();
    for (const s of stats) {
      const inos = byDev.get(s.dev);
      if (inos) inos.push(s.ino);
      else byDev.set(s.dev, [s.ino]);
    }
    for (const [dev, inos] of byDev) {
      for (let at = 0; at < inos.length; at += LOOKUP_BATCH) {
        const batch = inos.slice(at, at + LOOKUP_BATCH);
        const found = this.#lookup(batch.length).all(dev, ...batch) as unknown as FileRow[];
        for (const row of found) {
          rows.set(`${dev}:${row.ino}`, row);
        }
      }
    }
    return stats.map((stat) => {
      const row = rows.get(`${stat.dev}:${stat.ino}`);
      if (
        !row || row.size !== stat.size || row.mtime_ms !== stat.mtimeMs ||
        row.ctime_ms !== stat.ctimeMs || Boolean(row.executable) !== stat.executable
      ) {
        return undefined;
      }
      return new Uint8Array(row.digest);
    });
  }

  /**
   * Records `digest` for a file examined at `examinedAt` (ms) with `stat`,
   * unless it changed too recently to trust its stat ({@linkcode RACY_MS}).
   */
  rememberFile(stat: FileIdentity, digest: Digest, examinedAt: number): boolean {
    // Where lstat gave no inode or times (the walk records -1), nothing
    // identifies the file's contents.
    if (stat.ino < 0 || stat.mtimeMs < 0 || stat.ctimeMs < 0) return false;
    if (Math.max(stat.mtimeMs, stat.ctimeMs) >= examinedAt - RACY_MS) return false;
    this.#putFile.run(
      stat.dev,
      stat.ino,
      stat.size,
      stat.mtimeMs,
      stat.ctimeMs,
      stat.executable ? 1 : 0,
      digest,
    );
    return true;
  }

  /** The digest and size recorded for a directory with this listing key. */
  directory(listingKey: Digest): { digest: Digest; size: bigint } | undefined {
    const row = this.#getDirectory.get(listingKey) as
      | { digest: Uint8Array; size: number | bigint }
      | undefined;
    return row && { digest: new Uint8Array(row.digest), size: BigInt(row.size) };
  }

  /**
   * Records a directory, unless one of its files or symlinks changed too
   * recently to trust its stat ({@linkcode RACY_MS}) or its size does not
   * fit an SQLite integer.
   */
  rememberDirectory(record: DirectoryRecord): boolean {
    if (record.newestChange >= record.examinedAt - RACY_MS) return false;
    if (record.size > BigInt(Number.MAX_SAFE_INTEGER)) return false;
    this.#putDirectory.run(record.key, record.digest, record.size);
    return true;
  }

  /** The NAR size and SHA-256 recorded for a node key (`narCacheKey`). */
  narSummary(nodeKey: string): NarSummary | undefined {
    const row = this.#getNar.get(nodeKey) as
      | { nar_size: number | bigint; nar_sha256: Uint8Array }
      | undefined;
    return row && { narSize: BigInt(row.nar_size), narSha256: new Uint8Array(row.nar_sha256) };
  }

  /** Records the NAR size and SHA-256 of a node key. */
  rememberNar(nodeKey: string, summary: NarSummary): void {
    this.#putNar.run(nodeKey, summary.narSize, summary.narSha256);
  }

  /**
   * Runs `fn` on the cache, which only ever saves work: if it throws (a
   * locked, full or damaged cache file), the cache is off for the rest of
   * this process and `fn`'s result is `undefined`.
   */
  use<T>(fn: () => T): T | undefined {
    if (this.#broken) return undefined;
    try {
      return fn();
    } catch (err) {
      this.#broken = true;
      log.warn("stat cache turned off after an error", { error: errorMessage(err) });
      return undefined;
    }
  }

  /** Runs `fn` in one transaction (many records at once). */
  batch(fn: () => void): void {
    inTransaction(this.#db, fn);
  }

  /** Closes the file. */
  close(): void {
    this.#db.close();
  }
}
