/**
 * What a `postgres://` (or `postgresql://`) service URL means: where to
 * connect, as whom, to which database, and the pool's size
 * (docs/architecture.md#service-urls).
 *
 * `postgres://[user[:password]@][host][:port][/database][?option=value&…]`.
 * The host may be a directory holding the server's Unix socket, written
 * percent-encoded (`%2Frun%2Fpostgresql`) or as `?host=/run/postgresql`.
 * Whatever the URL leaves out comes from libpq's environment variables
 * (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE,
 * PGCONNECT_TIMEOUT, PGAPPNAME), then from libpq's defaults. Options this
 * build does not know are refused rather than ignored, so a typo in `pool`
 * cannot silently give the default.
 *
 * @module
 */
import { userInfo } from "node:os";
import { StorageError } from "../errors.ts";

/** TLS modes, as libpq's `sslmode` (`allow` and `prefer` fall back to plain). */
export const SSL_MODES = ["disable", "allow", "prefer", "require", "verify-full"] as const;
/** One of {@linkcode SSL_MODES}. */
export type SslMode = typeof SSL_MODES[number];

/** Connections per pool unless `?pool=` says otherwise. */
export const DEFAULT_POOL = 4;
/** The largest `?pool=` accepted (PostgreSQL's default `max_connections` is 100). */
export const MAX_POOL = 100;

/** Everything needed to open a pool of connections to one database. */
export interface PostgresConfig {
  /** Host name or address, or (starting with `/`) the directory of the Unix socket. */
  host: string;
  port: number;
  user: string;
  /** Absent: the server must not ask, or `~/.pgpass` answers. */
  password?: string;
  database: string;
  /** Most connections open at once. */
  pool: number;
  /** Seconds to wait for a connection to be established. */
  connectTimeout: number;
  sslmode: SslMode;
  applicationName: string;
}

/** The query options a URL may carry. */
const OPTIONS = [
  "pool",
  "host",
  "port",
  "user",
  "password",
  "dbname",
  "sslmode",
  "connect_timeout",
  "application_name",
] as const;

/** Reads an environment variable; `undefined` when unset or not readable. */
function processEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env: behave as if unset
  }
}

/** The login name of this process, libpq's default user. */
function osUser(): string {
  try {
    return userInfo().username;
  } catch {
    return "postgres";
  }
}

function decode(part: string, what: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new StorageError(`invalid percent-encoding in the ${what} of the postgres url`);
  }
}

function integer(text: string, what: string, min: number, max: number): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(n >= min && n <= max)) {
    throw new StorageError(`invalid ${what} ${JSON.stringify(text)}: want ${min}…${max}`);
  }
  return n;
}

/**
 * The configuration a `postgres:` URL names, completed from `env` (the
 * process environment by default). Throws `StorageError` naming the bad
 * part: an unknown or repeated option, a fragment, a database name with a
 * `/`, a pool size or port out of range, an unknown `sslmode`.
 */
export function postgresConfigFromUrl(
  url: URL,
  env: (name: string) => string | undefined = processEnv,
): PostgresConfig {
  if (url.hash !== "") throw new StorageError("a postgres url takes no #fragment");
  const query = new Map<string, string>();
  for (const [key, value] of url.searchParams) {
    if (!(OPTIONS as readonly string[]).includes(key)) {
      throw new StorageError(
        `unknown option ${JSON.stringify(key)} in postgres url (known: ${OPTIONS.join(", ")})`,
      );
    }
    if (query.has(key)) throw new StorageError(`option ${key} given twice in postgres url`);
    query.set(key, value);
  }
  const pick = (fromUrl: string, option: string, variable: string): string | undefined =>
    fromUrl !== "" ? fromUrl : query.get(option) ?? env(variable) ?? undefined;

  // A bracketed IPv6 address keeps no brackets; a socket directory comes
  // percent-encoded, as `/` cannot appear in a host otherwise.
  const urlHost = decode(url.hostname.replace(/^\[(.*)\]$/, "$1"), "host");
  const host = pick(urlHost, "host", "PGHOST") || "localhost";
  const port = integer(pick(url.port, "port", "PGPORT") || "5432", "port", 1, 65535);
  const user = pick(decode(url.username, "user"), "user", "PGUSER") || osUser();
  const password = pick(decode(url.password, "password"), "password", "PGPASSWORD");
  const path = decode(url.pathname.replace(/^\//, ""), "database");
  if (path.includes("/")) {
    throw new StorageError(`invalid database name ${JSON.stringify(path)} in postgres url`);
  }
  const database = pick(path, "dbname", "PGDATABASE") || user;
  const pool = integer(query.get("pool") ?? String(DEFAULT_POOL), "pool size", 1, MAX_POOL);
  const connectTimeout = integer(
    query.get("connect_timeout") ?? env("PGCONNECT_TIMEOUT") ?? "10",
    "connect_timeout",
    1,
    3600,
  );
  // As libpq: TLS is tried, not required, over TCP; a Unix socket has none.
  const sslmode = query.get("sslmode") ?? env("PGSSLMODE") ??
    (host.startsWith("/") ? "disable" : "prefer");
  if (!(SSL_MODES as readonly string[]).includes(sslmode)) {
    throw new StorageError(`unknown sslmode ${JSON.stringify(sslmode)} (known: ${SSL_MODES})`);
  }
  return {
    host,
    port,
    user,
    password: password || undefined,
    database,
    pool,
    connectTimeout,
    sslmode: sslmode as SslMode,
    applicationName: query.get("application_name") ?? env("PGAPPNAME") ?? "tvix-store",
  };
}

/** Where `config` connects, for messages: `database "d" as "u" on socket /dir` or `… on host:port`. */
export function describePostgres(config: PostgresConfig): string {
  const at = config.host.startsWith("/")
    ? `socket ${config.host}/.s.PGSQL.${config.port}`
    : `${config.host.includes(":") ? `[${config.host}]` : config.host}:${config.port}`;
  return `database ${JSON.stringify(config.database)} as ${JSON.stringify(config.user)} on ${at}`;
}
