/**
 * Garbage collection with directories and path infos in PostgreSQL and
 * blobs in packs, through the real `tvix-store` commands: a deleted path's
 * directories go, a directory another path shares stays, and what is left
 * still renders as `nix-store --dump` does.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../assert.ts";
import { tvixStore } from "../cli/helpers.ts";
import { collect, collectBytes } from "../conformance/harness.ts";
import { bytesEqual, toHex } from "../../src/castore/digest.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import { renderNar } from "../../src/nar/render.ts";
import { constructServices } from "../../src/store/services.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { nixOracle } from "../store/tree_gen.ts";
import { pgTest, postgresStoreArgs } from "./harness.ts";

async function writeTree(root: string, files: Record<string, string>): Promise<string> {
  for (const [name, text] of Object.entries(files)) {
    await Deno.mkdir(join(root, name, ".."), { recursive: true });
    await Deno.writeTextFile(join(root, name), text);
  }
  return root;
}

async function ok(args: string[]): Promise<string> {
  const r = await tvixStore(args);
  assertEquals(r.code, 0, `tvix-store ${args.join(" ")}:\n${r.stderr}`);
  return r.stdout;
}

/** Hex digests of every directory row. */
async function directoryRows(psql: (sql: string) => Promise<string[][]>): Promise<Set<string>> {
  return new Set((await psql("SELECT encode(digest, 'hex') FROM directories")).map(([d]) => d));
}

pgTest("gc on postgres: a deleted path's directories go, a shared one stays", async (pg) => {
  const work = await Deno.makeTempDir({ prefix: "tvix-pg-gc-" });
  try {
    const db = await pg.createDatabase();
    const psql = (sql: string) => pg.psql(db, sql);
    const S = postgresStoreArgs(pg.url(db), join(work, "packs"));
    const shared = { "lib/common/readme": "shared by both\n", "lib/common/data": "x".repeat(5000) };
    const a = await writeTree(join(work, "a"), { ...shared, "own/only-a": "a's own\n" });
    const b = await writeTree(join(work, "b"), { ...shared, "b.txt": "b\n" });
    const pa = (await ok(["import", ...S, a])).trim();
    const pb = (await ok(["import", ...S, b])).trim();

    // The directories of each path, as the store holds them.
    const s = await constructServices({
      blobServiceAddr: `pack://${join(work, "packs")}`,
      directoryServiceAddr: pg.url(db),
      pathInfoServiceAddr: pg.url(db),
    });
    let ofA: Set<string>, ofB: Set<string>;
    try {
      const closure = async (path: string) => {
        const info = await s.pathInfo.get(StorePath.parseAbsolute(path).digest);
        const node = info!.node!.node!;
        assert(node.$case === "directory");
        return new Set(
          (await collect(s.directory.getRecursive(node.value.digest))).map((d) =>
            toHex(directoryDigest(d))
          ),
        );
      };
      ofA = await closure(pa);
      ofB = await closure(pb);
    } finally {
      await s.close();
    }
    const sharedDirs = [...ofA].filter((d) => ofB.has(d));
    assertEquals(sharedDirs.length, 2, "lib and lib/common are shared");
    assertEquals(await directoryRows(psql), new Set([...ofA, ...ofB]));

    assertMatch(await ok(["delete", ...S, pa]), new RegExp(`deleted ${pa}`));
    // Nothing older than an hour: the default grace period keeps everything.
    await ok(["gc", ...S]);
    assertEquals(await directoryRows(psql), new Set([...ofA, ...ofB]));
    assertMatch(await ok(["gc", "--dry-run", "--grace", "0", ...S]), /would remove/);
    assertEquals(await directoryRows(psql), new Set([...ofA, ...ofB]));

    await ok(["gc", "--grace", "0", ...S]);
    assertEquals(await directoryRows(psql), ofB, "a's own directories are gone, shared ones stay");
    assertEquals(await psql("SELECT count(*) FROM pathinfos"), [["1"]]);
    assertMatch(await ok(["verify", ...S]), /1 store paths checked, 0 damaged/);

    // What is left renders as nix-store --dump does.
    const want = (await nixOracle(b)).nar;
    const after = await constructServices({
      blobServiceAddr: `pack://${join(work, "packs")}`,
      directoryServiceAddr: pg.url(db),
      pathInfoServiceAddr: pg.url(db),
    });
    try {
      const info = await after.pathInfo.get(StorePath.parseAbsolute(pb).digest);
      const got = await collectBytes(renderNar(info!.node!.node!, after.blob, after.directory));
      assert(bytesEqual(got, want), "b renders as nix-store --dump");
      assertEquals(await after.pathInfo.get(StorePath.parseAbsolute(pa).digest), undefined);
    } finally {
      await after.close();
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
