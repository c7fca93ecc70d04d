/**
 * The PostgreSQL databases of the `postgres://` backends: one connection
 * pool per database and process (a daemon's directory and path info
 * services naming the same database share it), queries and transactions
 * whose failures become `StorageError`, and the schema migrations each
 * backend brings (docs/storage.md#postgresql).
 *
 * The driver is porsager's `postgres`: it pipelines queries on its
 * connections and reconnects on its own after the server went away, so a
 * restarted database is used again without restarting the service.
 *
 * @module
 */
import postgres from "postgres";
import { errorMessage, InvalidRequestError, StorageError, UnavailableError } from "../errors.ts";
import { log } from "../log.ts";
import { describePostgres, type PostgresConfig } from "./postgres_url.ts";

/** A result row: column name to value (`bytea` as `Uint8Array`, `bigint` as string). */
export type Row = Record<string, unknown>;

/** What can run a statement: the pool, or a transaction's connection. */
export interface Queryable {
  /** Runs one statement with `$1…` parameters; resolves to its rows. */
  query(text: string, params?: unknown[]): Promise<Row[]>;
}

/**
 * The schema a backend keeps in a database: `migrations[i]` takes its
 * tables from version `i` to `i + 1`. Versions are recorded per
 * `component` in the table `schema_version`, so backends sharing a
 * database migrate independently.
 */
export interface Schema {
  component: string;
  migrations: readonly (readonly string[])[];
}

/** SQLSTATEs after which a transaction may simply be run again. */
const RETRYABLE = new Set(["40001", "40P01"]); // serialization failure, deadlock
const MAX_ATTEMPTS = 5;
/** Any constant: serialises migrations of all processes starting at once. */
const MIGRATION_LOCK = 7_316_585_012;

interface SharedPool {
  sql: postgres.Sql;
  users: number;
}

/** Open pools by configuration; leases are counted, the last `close` ends the pool. */
const pools = new Map<string, SharedPool>();

/** `bytea` values come back as Buffers; hand out plain Uint8Array views of them. */
function plainBytes(rows: Row[]): Row[] {
  for (const row of rows) {
    for (const [k, v] of Object.entries(row)) {
      if (v instanceof Uint8Array && v.constructor !== Uint8Array) {
        row[k] = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
      }
    }
  }
  return rows;
}

/** A driver or server failure as one line: the server's message and SQLSTATE, or the socket error. */
export function postgresErrorText(err: unknown): string {
  if (err instanceof postgres.PostgresError) return `${err.message} (SQLSTATE ${err.code})`;
  return errorMessage(err);
}

/** The driver's own codes for a connection that could not be made or was lost. */
const CONNECTION_CODES = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_DESTROYED",
  "CONNECTION_ENDED",
  "CONNECT_TIMEOUT",
]);
/** SQLSTATEs saying the server is going away or cannot take a session now. */
const UNAVAILABLE_STATES = new Set(["57P01", "57P02", "57P03", "53300"]);

/**
 * Whether `err` says the server is out of reach (refused, reset or lost
 * connection, a timeout, a server shutting down) rather than that a
 * statement failed: the first may succeed later, the second will not.
 */
export function isConnectionFailure(err: unknown): boolean {
  if (err instanceof postgres.PostgresError) {
    return err.code.startsWith("08") || UNAVAILABLE_STATES.has(err.code);
  }
  const code = (err as { code?: unknown } | undefined)?.code;
  if (typeof code !== "string") return false;
  // Socket errors: ECONNREFUSED, ECONNRESET, ENOENT (no Unix socket), EPIPE, ETIMEDOUT, …
  return CONNECTION_CODES.has(code) || /^E[A-Z]+$/.test(code);
}

/**
 * `err` as a `StorageError` "postgres WHAT: …", an `UnavailableError` if
 * the server could not be reached (our own errors pass through).
 */
function storageError(what: string, err: unknown): Error {
  if (err instanceof StorageError || err instanceof InvalidRequestError) return err;
  const text = `postgres ${what}: ${postgresErrorText(err)}`;
  return isConnectionFailure(err) ? new UnavailableError(text) : new StorageError(text);
}

function isRetryable(err: unknown): boolean {
  return err instanceof postgres.PostgresError && RETRYABLE.has(err.code);
}

function queryable(sql: postgres.Sql | postgres.TransactionSql): Queryable {
  return {
    query: async (text, params = []) =>
      plainBytes(
        // deno-lint-ignore no-explicit-any
        Array.from(await sql.unsafe(text, params as any[], { prepare: true }) as Row[]),
      ),
  };
}

function newPool(config: PostgresConfig): postgres.Sql {
  return postgres({
    host: config.host,
    port: config.port,
    user: config.user,
    password: config.password,
    database: config.database,
    max: config.pool,
    connect_timeout: config.connectTimeout,
    ssl: config.sslmode === "disable" ? false : config.sslmode,
    // Idle connections go after a minute, so an idle daemon holds none.
    idle_timeout: 60,
    prepare: true,
    // "relation already exists, skipping" and the like: not for stdout.
    onnotice: (notice) => log.debug("postgres notice", { message: notice.message }),
    connection: { application_name: config.applicationName },
  });
}

/**
 * A lease on the pool of one database. Backends run their statements
 * through it; {@linkcode close} gives the lease back.
 */
export class PostgresDb implements Queryable {
  readonly #sql: postgres.Sql;
  readonly #key: string;
  readonly #where: string;
  #closed = false;

  private constructor(sql: postgres.Sql, key: string, where: string) {
    this.#sql = sql;
    this.#key = key;
    this.#where = where;
  }

  /**
   * Opens (or joins) the pool for `config` and brings `schema` up to date.
   * Connects at once, so an unreachable server, a refused login or a
   * database newer than this build fails here, with one line naming the
   * database: `StorageError` "unable to open postgres database …".
   */
  static async open(config: PostgresConfig, schema: Schema): Promise<PostgresDb> {
    const key = JSON.stringify(config);
    let shared = pools.get(key);
    if (!shared) {
      shared = { sql: newPool(config), users: 0 };
      pools.set(key, shared);
    }
    shared.users++;
    const db = new PostgresDb(shared.sql, key, describePostgres(config));
    try {
      await migrate(shared.sql, schema);
      return db;
    } catch (err) {
      await db.close().catch(() => {});
      const text = err instanceof StorageError ? err.message : postgresErrorText(err);
      const unreachable = err instanceof UnavailableError || isConnectionFailure(err);
      throw new (unreachable ? UnavailableError : StorageError)(
        `unable to open postgres ${db.#where}: ${text}`,
      );
    }
  }

  /** Runs one statement; failures become `StorageError` "postgres WHAT: …". */
  async run(what: string, text: string, params: unknown[] = []): Promise<Row[]> {
    try {
      return await queryable(this.#sql).query(text, params);
    } catch (err) {
      throw storageError(what, err);
    }
  }

  /** {@linkcode Queryable.query} on the pool, failing as {@linkcode run} does. */
  query(text: string, params: unknown[] = []): Promise<Row[]> {
    return this.run("query", text, params);
  }

  /**
   * Runs `fn` in a transaction on one connection: committed if it
   * resolves, rolled back if it throws. A deadlock or serialization
   * failure runs it again (a few times), so `fn` must only act through
   * the `Queryable` it is given. Failures become `StorageError`.
   */
  async transaction<T>(what: string, fn: (tx: Queryable) => Promise<T>): Promise<T> {
    for (let attempt = 1;; attempt++) {
      try {
        return await this.#sql.begin((tx) => fn(queryable(tx))) as T;
      } catch (err) {
        if (attempt < MAX_ATTEMPTS && isRetryable(err)) {
          log.debug("postgres transaction retried", { what, error: postgresErrorText(err) });
          continue;
        }
        throw storageError(what, err);
      }
    }
  }

  /** Gives the lease back; the last one closes the pool's connections. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const shared = pools.get(this.#key);
    if (!shared || --shared.users > 0) return;
    pools.delete(this.#key);
    await shared.sql.end({ timeout: 5 });
  }
}

/**
 * Brings `schema` to its latest version. Without anything to do it only
 * reads (a role without DDL rights can use a migrated database); otherwise
 * it migrates in one transaction under an advisory lock, so processes
 * starting together neither race nor see a half-migrated schema. A
 * version newer than `schema` knows is refused: an older build must not
 * write into tables whose meaning changed.
 */
async function migrate(sql: postgres.Sql, schema: Schema): Promise<void> {
  const latest = schema.migrations.length;
  const check = (version: number): boolean => {
    if (version > latest) {
      throw new StorageError(
        `its ${schema.component} schema is at version ${version}, newer than this build ` +
          `knows (${latest}); use a newer tvix-store`,
      );
    }
    return version === latest;
  };
  const current = async (q: Queryable): Promise<number> => {
    const rows = await q.query("SELECT version FROM schema_version WHERE component = $1", [
      schema.component,
    ]);
    return rows.length === 0 ? 0 : Number(rows[0].version);
  };
  try {
    if (check(await current(queryable(sql)))) return;
  } catch (err) {
    // 42P01: no schema_version table yet, a fresh database.
    if (!(err instanceof postgres.PostgresError && err.code === "42P01")) throw err;
  }
  await sql.begin(async (txSql) => {
    const tx = queryable(txSql);
    await tx.query("SELECT pg_advisory_xact_lock($1)", [MIGRATION_LOCK]);
    await tx.query(
      "CREATE TABLE IF NOT EXISTS schema_version " +
        "(component text PRIMARY KEY, version integer NOT NULL)",
    );
    const from = await current(tx);
    if (check(from)) return;
    for (let v = from; v < latest; v++) {
      for (const statement of schema.migrations[v]) await tx.query(statement);
      log.info("postgres schema migrated", { component: schema.component, version: v + 1 });
    }
    await tx.query(
      "INSERT INTO schema_version (component, version) VALUES ($1, $2) " +
        "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
      [schema.component, latest],
    );
  });
}
