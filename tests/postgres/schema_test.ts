/**
 * Opening `postgres://` services: the URL and its options, the PG*
 * environment, schema migrations (applied once, concurrently safe, a newer
 * schema refused), the pool size, and the one-line errors for an
 * unreachable server or a refused login.
 */
import { assert, assertEquals, assertMatch, assertRejects, assertThrows } from "../assert.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import {
  DEFAULT_POOL,
  describePostgres,
  postgresConfigFromUrl,
} from "../../src/castore/postgres_url.ts";
import { StorageError } from "../../src/errors.ts";
import { pathInfoServiceFromUrl } from "../../src/store/pathinfo/from_url.ts";
import * as F from "../fixtures.ts";
import { pgTest } from "./harness.ts";

const config = (url: string, env: Record<string, string> = {}) =>
  postgresConfigFromUrl(new URL(url), (name) => env[name]);

Deno.test("postgres url: parts, options and defaults", () => {
  assertEquals(config("postgres://alice:s%40cret@db.example:6543/store?pool=8&sslmode=require"), {
    host: "db.example",
    port: 6543,
    user: "alice",
    password: "s@cret",
    database: "store",
    pool: 8,
    connectTimeout: 10,
    sslmode: "require",
    applicationName: "tvix-store",
  });
  // A socket directory, percent-encoded or as ?host=; no TLS over a socket.
  const socket = config("postgresql://bob@%2Frun%2Fpostgresql/x");
  assertEquals([socket.host, socket.port, socket.sslmode], ["/run/postgresql", 5432, "disable"]);
  assertEquals(config("postgres:///x?host=/tmp/s&port=7").host, "/tmp/s");
  assertEquals(config("postgres://[::1]:5433/x").host, "::1");
  assertEquals(config("postgres://h/x").pool, DEFAULT_POOL);
  assertEquals(config("postgres://h/x").sslmode, "prefer");
  // No database: libpq's default, the user name.
  assertEquals(config("postgres://carol@h").database, "carol");
  assertEquals(config("postgres://h?dbname=d&user=u&connect_timeout=3").database, "d");
  assertEquals(
    describePostgres(config("postgres://u@%2Ftmp/d")),
    'database "d" as "u" on socket /tmp/.s.PGSQL.5432',
  );
  assertEquals(
    describePostgres(config("postgres://u@[::1]/d")),
    'database "d" as "u" on [::1]:5432',
  );
});

Deno.test("postgres url: what the url leaves out comes from the PG* environment", () => {
  const env = {
    PGHOST: "/var/run/pg",
    PGPORT: "5999",
    PGUSER: "envuser",
    PGPASSWORD: "envpass",
    PGDATABASE: "envdb",
    PGSSLMODE: "require",
    PGCONNECT_TIMEOUT: "4",
    PGAPPNAME: "app",
  };
  assertEquals(config("postgres://", env), {
    host: "/var/run/pg",
    port: 5999,
    user: "envuser",
    password: "envpass",
    database: "envdb",
    pool: DEFAULT_POOL,
    connectTimeout: 4,
    sslmode: "require",
    applicationName: "app",
  });
  // The url wins.
  const c = config("postgres://u:p@h:1/d?sslmode=disable", env);
  assertEquals([c.host, c.port, c.user, c.password, c.database, c.sslmode], [
    "h",
    1,
    "u",
    "p",
    "d",
    "disable",
  ]);
});

Deno.test("postgres url: bad options are refused with a clear StorageError", () => {
  const bad: [string, string][] = [
    ["postgres://h/d?pol=8", 'unknown option "pol"'],
    ["postgres://h/d?pool=0", 'invalid pool size "0"'],
    ["postgres://h/d?pool=101", 'invalid pool size "101"'],
    ["postgres://h/d?pool=eight", 'invalid pool size "eight"'],
    ["postgres://h/d?pool=2&pool=3", "option pool given twice"],
    ["postgres://h:0/d", 'invalid port "0"'],
    ["postgres://h/d?sslmode=sometimes", 'unknown sslmode "sometimes"'],
    ["postgres://h/a/b", 'invalid database name "a/b"'],
    ["postgres://h/d#x", "no #fragment"],
    ["postgres://h/d?connect_timeout=-1", "invalid connect_timeout"],
  ];
  for (const [url, message] of bad) assertThrows(() => config(url), StorageError, message);
});

pgTest("postgres: opening migrates a fresh database once; both backends share it", async (pg) => {
  const db = await pg.createDatabase();
  // Several processes (here: pools with different sizes) starting together.
  const opened = await Promise.all([
    ...[1, 2, 3].map((n) => directoryServiceFromUrl(pg.url(db, { pool: String(n) }))),
    ...[1, 2, 3].map((n) => pathInfoServiceFromUrl(pg.url(db, { pool: String(n) }))),
  ]);
  try {
    assertEquals(
      await pg.psql(db, "SELECT component, version FROM schema_version ORDER BY component"),
      [["directories", "1"], ["pathinfos", "3"]],
    );
    assertEquals(
      await pg.psql(
        db,
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
      ),
      [["directories"], ["pathinfo_refs"], ["pathinfo_refs_backfill"], ["pathinfos"], [
        "schema_version",
      ]],
    );
  } finally {
    await Promise.all(opened.map((s) => s.close()));
  }
});

pgTest("postgres: a database whose schema is newer than this build is refused", async (pg) => {
  const db = await pg.createDatabase();
  const first = await directoryServiceFromUrl(pg.url(db));
  await first.put(F.DIRECTORY_A);
  await first.close();
  await pg.psql(db, "UPDATE schema_version SET version = 2 WHERE component = 'directories'");
  const err = await assertRejects(() => directoryServiceFromUrl(pg.url(db)), StorageError);
  assertMatch(
    err.message,
    new RegExp(
      `^unable to open postgres database "${db}" as "postgres" on socket .*: its directories ` +
        "schema is at version 2, newer than this build knows \\(1\\); use a newer tvix-store$",
    ),
  );
  assert(!err.message.includes("\n"), "one line");
  // Nothing was touched; path infos (still at version 1) open fine.
  assertEquals(await pg.psql(db, "SELECT count(*) FROM directories"), [["1"]]);
  await (await pathInfoServiceFromUrl(pg.url(db))).close();
});

pgTest("postgres: ?pool= bounds the connections a service opens", async (pg) => {
  const db = await pg.createDatabase();
  const connections = async () =>
    Number(
      (await pg.psql(
        "postgres",
        `SELECT count(*) FROM pg_stat_activity WHERE datname = '${db}' AND application_name = 'tvix-store'`,
      ))[0][0],
    );
  for (const pool of [2, 6]) {
    const s = await directoryServiceFromUrl(pg.url(db, { pool: String(pool) }));
    try {
      await s.put(F.DIRECTORY_A);
      const digest = directoryDigest(F.DIRECTORY_A);
      // Hold many reads in flight at once, then count while they run.
      const reads = Array.from({ length: 400 }, () => s.get(digest));
      const during = await connections();
      await Promise.all(reads);
      const after = await connections();
      assert(during <= pool && after <= pool, `pool=${pool}: ${during}, ${after} connections`);
      assert(Math.max(during, after) > 1 || pool === 1, `pool=${pool} used more than one`);
    } finally {
      await s.close();
    }
    assertEquals(await connections(), 0, "close ends the connections");
  }
});

pgTest(
  "postgres: an unreachable server or a refused login fails when the service is built",
  async (pg) => {
    const db = await pg.createDatabase();
    const nowhere = `postgres://postgres@${encodeURIComponent(pg.dir + "/nowhere")}/${db}`;
    const unreachable = await assertRejects(() => directoryServiceFromUrl(nowhere), StorageError);
    assertMatch(
      unreachable.message,
      /^unable to open postgres database "t\d+_\w+" as "postgres" on socket .*\/nowhere\/\.s\.PGSQL\.5432: .*ENOENT/,
    );
    await pg.psql(db, "CREATE ROLE tvix_password LOGIN PASSWORD 'right'").catch(() => {});
    const wrong = pg.url(db).replace("postgres@", "tvix_password:wrong@");
    const refused = await assertRejects(() => pathInfoServiceFromUrl(wrong), StorageError);
    assertMatch(refused.message, /password authentication failed for user "tvix_password"/);
    // A role without DDL rights uses a database the owner migrated.
    await (await pathInfoServiceFromUrl(pg.url(db))).close();
    await pg.psql(
      db,
      "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO tvix_password",
    );
    const right = await pathInfoServiceFromUrl(
      pg.url(db).replace("postgres@", "tvix_password:right@"),
    );
    assertEquals(await right.get(new Uint8Array(20)), undefined);
    await right.close();
    const noDb = await assertRejects(
      () => directoryServiceFromUrl(pg.url("nosuchdb")),
      StorageError,
    );
    assertMatch(noDb.message, /database "nosuchdb" does not exist/);
    for (const e of [unreachable, refused, noDb]) assert(!e.message.includes("\n"), e.message);
  },
);
