/**
 * A real PostgreSQL server for the tests: a throw-away cluster
 * (scripts/postgres_test_server.sh) started the first time a test file
 * asks for it, listening on a Unix socket in its own temp dir, a fresh
 * database for each test, and the cluster stopped and removed when the
 * test process exits.
 *
 * Without the server binaries every test using it fails, saying so,
 * unless TVIX_TEST_SKIP_POSTGRES=1, which ignores those tests instead.
 *
 * @module
 */
import type { ServiceFactory } from "../conformance/harness.ts";

const SCRIPT = new URL("../../scripts/postgres_test_server.sh", import.meta.url).pathname;
/** Set to 1 to ignore the PostgreSQL tests where the server is not installed. */
export const SKIP_ENV = "TVIX_TEST_SKIP_POSTGRES";
const td = new TextDecoder();

/** The directory of the server binaries, or why there is none. */
const bindir: { path: string } | { missing: string } = (() => {
  const out = new Deno.Command("sh", { args: [SCRIPT, "bindir"], stdout: "piped", stderr: "piped" })
    .outputSync();
  return out.success
    ? { path: td.decode(out.stdout).trim() }
    : { missing: td.decode(out.stderr).trim() };
})();

/** True when the tests are to be ignored: no server binaries, and TVIX_TEST_SKIP_POSTGRES=1. */
export const skipPostgres = "missing" in bindir && Deno.env.get(SKIP_ENV) === "1";

/** A running throw-away cluster. */
export interface PgCluster {
  /** The cluster's directory (data, socket, logs). */
  dir: string;
  /** The directory holding the server's Unix socket. */
  socketDir: string;
  /** The `postgres://` URL of `database` as the superuser, with `options` as its query. */
  url(database: string, options?: Record<string, string>): string;
  /** Creates an empty database and returns its name. */
  createDatabase(): Promise<string>;
  /** Runs SQL in `database` through psql; returns the rows, each a list of text fields. */
  psql(database: string, sql: string): Promise<string[][]>;
  /** Stops the server (ending open sessions); `start` brings it back with the same data. */
  stop(): Promise<void>;
  start(): Promise<void>;
}

async function script(...args: string[]): Promise<string> {
  const out = await new Deno.Command("sh", {
    args: [SCRIPT, ...args],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (!out.success) {
    throw new Error(`postgres_test_server.sh ${args[0]} failed:\n${td.decode(out.stderr)}`);
  }
  return td.decode(out.stdout).trim();
}

let running: Promise<PgCluster> | undefined;
let databases = 0;

/** The cluster of this test file, started on first use. */
export function cluster(): Promise<PgCluster> {
  running ??= startCluster();
  return running;
}

async function startCluster(): Promise<PgCluster> {
  if ("missing" in bindir) {
    throw new Error(`${bindir.missing}; set ${SKIP_ENV}=1 to skip the PostgreSQL tests`);
  }
  const psqlPath = `${bindir.path}/psql`;
  const dir = await Deno.makeTempDir({ prefix: "tvix-pg-" });
  globalThis.addEventListener("unload", () => {
    // Synchronous: nothing asynchronous runs once the process is exiting.
    new Deno.Command("sh", { args: [SCRIPT, "stop", dir], stdout: "null", stderr: "null" })
      .outputSync();
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch { /* already gone */ }
  });
  const socketDir = await script("start", dir);
  const psql = async (database: string, sql: string): Promise<string[][]> => {
    const out = await new Deno.Command(psqlPath, {
      args: ["-h", socketDir, "-U", "postgres", "-d", database, "-X", "-A", "-t", "-q"].concat(
        ["-F", "\x1f", "-v", "ON_ERROR_STOP=1", "-c", sql],
      ),
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(`psql: ${td.decode(out.stderr).trim()}`);
    const text = td.decode(out.stdout).replace(/\n$/, "");
    return text === "" ? [] : text.split("\n").map((line) => line.split("\x1f"));
  };
  return {
    dir,
    socketDir,
    url: (database, options = {}) => {
      const query = new URLSearchParams(options).toString();
      return `postgres://postgres@${encodeURIComponent(socketDir)}/${database}` +
        (query ? `?${query}` : "");
    },
    createDatabase: async () => {
      const name = `t${++databases}_${crypto.randomUUID().slice(0, 8)}`;
      await psql("postgres", `CREATE DATABASE ${name}`);
      return name;
    },
    psql,
    stop: () => script("stop", dir).then(() => {}),
    start: () => script("start", dir).then(() => {}),
  };
}

/**
 * Registers a test that needs the cluster: ignored under
 * TVIX_TEST_SKIP_POSTGRES=1 without binaries, failing without binaries
 * otherwise.
 */
export function pgTest(name: string, fn: (pg: PgCluster) => Promise<void>): void {
  Deno.test({ name, ignore: skipPostgres, fn: async () => await fn(await cluster()) });
}

/**
 * A conformance-suite factory: each service opened by `open` on the URL of
 * a fresh database; cleanup closes it.
 */
export function freshDatabaseFactory<S extends { close(): Promise<void> }>(
  open: (url: string) => Promise<S>,
): ServiceFactory<S> {
  return async () => {
    const pg = await cluster();
    const service = await open(pg.url(await pg.createDatabase()));
    return { service, cleanup: () => service.close() };
  };
}

/**
 * Runs `register` (which registers a conformance suite) unless the tests
 * are skipped; then registers one ignored test in its place, so the skip
 * shows.
 */
export function pgSuite(label: string, register: () => void): void {
  if (skipPostgres) Deno.test({ name: label, ignore: true, fn: () => {} });
  else register();
}

/**
 * The service flags of a store whose directories and path infos live at
 * the postgres `url` and whose blobs are packs under `packs`.
 */
export function postgresStoreArgs(url: string, packs: string): string[] {
  return [
    "--blob-service-addr",
    `pack://${packs}`,
    "--directory-service-addr",
    url,
    "--path-info-service-addr",
    url,
  ];
}
