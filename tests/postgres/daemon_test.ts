/**
 * Daemons on PostgreSQL (directories and path infos) and packs (blobs), as
 * real processes: what one daemon writes, another on the same database
 * serves at once, byte-equal to `nix-store --dump`; an unreachable
 * database or a refused login stops `daemon` with one line.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../assert.ts";
import { startServer, tvixStore } from "../cli/helpers.ts";
import { collectBytes } from "../conformance/harness.ts";
import { bytesEqual, toHex } from "../../src/castore/digest.ts";
import { serviceAddrArgs } from "../../src/cli/common.ts";
import { renderNar } from "../../src/nar/render.ts";
import { constructServices } from "../../src/store/services.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { nixOracle, writeEdgeCaseTree } from "../store/tree_gen.ts";
import { pgTest, postgresStoreArgs } from "./harness.ts";

function grpcAddrs(url: string) {
  return { blobServiceAddr: url, directoryServiceAddr: url, pathInfoServiceAddr: url };
}

/** The directories under `root` (itself included), not following symlinks. */
async function countDirectories(root: string): Promise<number> {
  let n = 1;
  for await (const e of Deno.readDir(root)) {
    if (e.isDirectory) n += await countDirectories(join(root, e.name));
  }
  return n;
}

pgTest(
  "what one daemon on postgres writes, a second daemon on the same database serves",
  async (pg) => {
    const work = await Deno.makeTempDir({ prefix: "tvix-pg-daemon-" });
    const daemons: { stop(): Promise<unknown> }[] = [];
    try {
      const db = await pg.createDatabase();
      const packs = join(work, "packs");
      const writer = await startServer(
        ["daemon", "-l", join(work, "a.sock"), ...postgresStoreArgs(pg.url(db), packs)],
        { name: "daemon a" },
      );
      daemons.push(writer);
      // The second daemon finds the server through the PG* environment.
      const reader = await startServer(
        ["daemon", "-l", join(work, "b.sock"), ...postgresStoreArgs(`postgres:///${db}`, packs)],
        { name: "daemon b", env: { PGHOST: pg.socketDir, PGUSER: "postgres" } },
      );
      daemons.push(reader);

      const tree = join(work, "tree");
      await writeEdgeCaseTree(tree);
      const oracle = await nixOracle(tree, join(work, "nix"));
      const imported = await tvixStore([
        "import",
        ...serviceAddrArgs(grpcAddrs(`grpc+unix://${join(work, "a.sock")}`)),
        tree,
      ]);
      assertEquals(imported.code, 0, imported.stderr);
      assertEquals(imported.stdout.trim(), oracle.storePath);
      const path = StorePath.parseAbsolute(oracle.storePath);

      // The rows really are in PostgreSQL.
      assertEquals(await pg.psql(db, "SELECT encode(digest, 'hex') FROM pathinfos"), [[
        toHex(path.digest),
      ]]);
      const dirs = await pg.psql(db, "SELECT count(*) FROM directories");
      assertEquals(Number(dirs[0][0]), await countDirectories(tree));

      // The other daemon serves it, byte for byte as nix-store --dump.
      const viaReader = await constructServices(grpcAddrs(`grpc+unix://${join(work, "b.sock")}`));
      try {
        const info = await viaReader.pathInfo.get(path.digest);
        assert(info?.node?.node, "the second daemon knows the path");
        const nar = await collectBytes(
          renderNar(info.node.node, viaReader.blob, viaReader.directory),
        );
        assert(bytesEqual(nar, oracle.nar), "NAR via the second daemon equals nix-store --dump");
        assertEquals(await viaReader.narCalculation.calculateNar(info.node.node), {
          narSize: BigInt(oracle.nar.length),
          narSha256: oracle.narSha256,
        });
      } finally {
        await viaReader.close();
      }
      for (const d of [writer, reader]) assertEquals(d.exitStatus(), undefined, "still serving");
    } finally {
      for (const d of daemons) await d.stop();
      await Deno.remove(work, { recursive: true });
    }
  },
);

/** Runs `daemon` with `args`; asserts it exits non-zero with one `error:` line matching `pattern`. */
async function assertDaemonRefuses(work: string, args: string[], pattern: RegExp): Promise<void> {
  const t0 = performance.now();
  const r = await tvixStore(["daemon", "-l", join(work, "x.sock"), ...args]);
  assert(r.code !== 0, "daemon must fail");
  const errors = r.stderr.split("\n").filter((l) => /^error\b/i.test(l) || / ERROR /.test(l));
  assertEquals(errors.length, 1, `one error line:\n${r.stderr}`);
  assertMatch(errors[0], pattern);
  assert(!r.stderr.includes("    at "), `no stack trace:\n${r.stderr}`);
  assert(performance.now() - t0 < 30_000, "fails promptly");
}

pgTest(
  "daemon on an unreachable database or with a refused login: one line, non-zero exit",
  async (pg) => {
    const work = await Deno.makeTempDir({ prefix: "tvix-pg-daemon-" });
    try {
      const db = await pg.createDatabase();
      const packs = join(work, "packs");
      const nowhere = `postgres://postgres@${encodeURIComponent(join(work, "no-server"))}/${db}`;
      await assertDaemonRefuses(
        work,
        postgresStoreArgs(nowhere, packs),
        /unable to open postgres database "t\d+_\w+" as "postgres" on socket \S+no-server\/\.s\.PGSQL\.5432: connect ENOENT/,
      );
      await pg.psql("postgres", "CREATE ROLE tvix_password LOGIN PASSWORD 'right'").catch(() => {});
      await assertDaemonRefuses(
        work,
        postgresStoreArgs(pg.url(db).replace("postgres@", "tvix_password:wrong@"), packs),
        /password authentication failed for user "tvix_password"/,
      );
      await assertDaemonRefuses(
        work,
        postgresStoreArgs(pg.url(db, { pool: "0" }), packs),
        /invalid pool size "0"/,
      );
      // Nothing was created in the database by the refused starts.
      assertEquals(
        await pg.psql(db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        [
          ["0"],
        ],
      );
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
);

pgTest("a password from ~/.pgpass, as libpq reads it, opens a postgres store", async (pg) => {
  const work = await Deno.makeTempDir({ prefix: "tvix-pg-pgpass-" });
  try {
    const db = await pg.createDatabase();
    const packs = join(work, "packs");
    // The owner creates the tables; the login role may only use them.
    const owner = await tvixStore(["list", ...postgresStoreArgs(pg.url(db), packs)]);
    assertEquals(owner.code, 0, owner.stderr);
    await pg.psql("postgres", "CREATE ROLE tvix_password LOGIN PASSWORD 'right'").catch(() => {});
    await pg.psql(
      db,
      "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO tvix_password",
    );
    const args = [
      "list",
      ...postgresStoreArgs(pg.url(db).replace("postgres@", "tvix_password@"), packs),
    ];
    const without = await tvixStore(args, { HOME: work });
    assert(without.code !== 0, "no password, no login");
    assertMatch(without.stderr, /password authentication failed for user "tvix_password"/);
    const pgpass = join(work, ".pgpass");
    await Deno.writeTextFile(pgpass, `localhost:5432:${db}:tvix_password:right\n`, { mode: 0o600 });
    const withPgpass = await tvixStore(args, { HOME: work });
    assertEquals(withPgpass.code, 0, withPgpass.stderr);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
