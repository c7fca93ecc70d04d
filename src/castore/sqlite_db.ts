/**
 * Opening the SQLite databases the `sqlite://` backends keep their rows in,
 * and the URL form that names them.
 *
 * `sqlite:///abs/path` is a database file (created with its parent
 * directories); `sqlite://` or `sqlite:` is a private in-memory database,
 * gone when the service closes.
 *
 * @module
 */
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { dirname } from "node:path";
import { errorMessage, InvalidRequestError, StorageError } from "../errors.ts";

/** How long a connection waits for another writer's lock before failing. */
const BUSY_TIMEOUT_MS = 10_000;

/**
 * The database file a `sqlite:` URL names, or `undefined` for an in-memory
 * database. Throws `StorageError` for a host or for `/`.
 */
export function sqlitePathFromUrl(url: URL): string | undefined {
  if (url.host !== "") throw new StorageError("no host allowed");
  const path = decodeURIComponent(url.pathname);
  if (path === "") return undefined;
  if (path === "/") throw new StorageError("cowardly refusing to open / with sqlite");
  return path;
}

/** Blocks the calling thread for `ms` milliseconds. */
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Switches a file database to WAL. The switch needs the file to itself for a
 * moment, and SQLite reports "database is locked" at once instead of using
 * the busy timeout when another connection opens the same fresh file at the
 * same time (seen with FUSE Workers starting together): retry until the
 * timeout.
 */
function enableWal(db: DatabaseSync): void {
  const deadline = Date.now() + BUSY_TIMEOUT_MS;
  for (let delay = 1;; delay = Math.min(2 * delay, 50)) {
    try {
      db.exec("PRAGMA journal_mode = WAL");
      return;
    } catch (err) {
      if (!/locked|busy/i.test(String(err)) || Date.now() > deadline) throw err;
      sleepSync(delay);
    }
  }
}

/**
 * Opens (creating if needed) a database file, or an in-memory database when
 * `path` is undefined, in WAL mode with a busy timeout so several
 * connections (and processes) can share one file.
 */
export function openDatabase(path: string | undefined): DatabaseSync {
  try {
    if (path !== undefined) Deno.mkdirSync(dirname(path), { recursive: true });
    const db = new DatabaseSync(path ?? ":memory:");
    db.exec(`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`);
    if (path !== undefined) {
      enableWal(db);
      // With WAL, NORMAL keeps committed transactions atomic and consistent;
      // only the last ones may be lost on power failure.
      db.exec("PRAGMA synchronous = NORMAL");
    }
    return db;
  } catch (err) {
    throw new StorageError(`unable to open sqlite database ${path ?? ":memory:"}: ${err}`);
  }
}

/**
 * The statements of one query for each number of items it is asked with
 * (an `IN` or `VALUES` list of `n`), prepared on first use and kept:
 * batched lookups ask with a few sizes again and again. `setup` adjusts a
 * statement once, when it is prepared.
 */
export function statementsByCount(
  db: DatabaseSync,
  sql: (n: number) => string,
  setup: (stmt: StatementSync) => void = () => {},
): (n: number) => StatementSync {
  const prepared = new Map<number, StatementSync>();
  return (n) => {
    let stmt = prepared.get(n);
    if (!stmt) {
      stmt = db.prepare(sql(n));
      setup(stmt);
      prepared.set(n, stmt);
    }
    return stmt;
  };
}

/**
 * Runs `fn` in a write transaction (taking the write lock up front), rolling
 * back if it throws.
 */
export function inTransaction<T>(db: DatabaseSync, fn: () => T): T {
  db.exec("BEGIN IMMEDIATE");
  try {
    const result = fn();
    db.exec("COMMIT");
    return result;
  } catch (err) {
    // Some failures (a full disk, I/O errors) make SQLite roll back by
    // itself; a second ROLLBACK would then fail and hide the real cause.
    if (db.isTransaction) db.exec("ROLLBACK");
    throw err;
  }
}

/**
 * Runs `fn`, a write, so that it is durable once it returns: its commit
 * runs with `synchronous = FULL`, which in WAL mode syncs the log, and with
 * it every commit before. The connection's own setting applies again
 * afterwards (NORMAL, under which the last commits may be lost on a power
 * failure). For removals that garbage collection acts on: the data goes
 * only after what referred to it can no longer come back.
 */
export function durably<T>(db: DatabaseSync, fn: () => T): T {
  // SQLite refuses to change the setting inside a transaction.
  if (db.isTransaction) throw new Error("durably() called inside a transaction");
  const previous = Number(db.prepare("PRAGMA synchronous").get()?.synchronous ?? 1);
  db.exec("PRAGMA synchronous = FULL");
  try {
    return fn();
  } finally {
    db.exec(`PRAGMA synchronous = ${previous}`);
  }
}

/**
 * Runs a database call, turning SQLite failures into `StorageError` (our
 * own `InvalidRequestError`/`StorageError` pass through unchanged).
 */
export function storageCall<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof StorageError || err instanceof InvalidRequestError) throw err;
    throw new StorageError(`sqlite ${what}: ${errorMessage(err)}`);
  }
}
