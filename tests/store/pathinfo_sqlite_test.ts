import { DatabaseSync } from "node:sqlite";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { CorruptionError, StorageError } from "../../src/errors.ts";
import { PathInfo } from "../../src/proto/tvix/store/protos/pathinfo.ts";
import { SqlitePathInfoService } from "../../src/store/pathinfo/sqlite.ts";
import { StillReferencedError } from "../../src/store/pathinfo/service.ts";
import { SqliteDirectoryService } from "../../src/castore/directory/sqlite.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { pathInfoServiceConformance } from "../conformance/pathinfo_suite.ts";
import { collect, sqliteFactories, withDbFile } from "../conformance/harness.ts";
import * as F from "../fixtures.ts";
import { pseudoRandom } from "../fixtures.ts";
import { compareBytes, toHex } from "../../src/castore/digest.ts";
import { pathInfoWithNarinfo, referringPathInfo, symlinkPathInfo } from "./pathinfo_fixtures.ts";

const sqlite = sqliteFactories((path) => new SqlitePathInfoService(path), "a/store.sqlite");
pathInfoServiceConformance("sqlite in memory", sqlite.memory);
pathInfoServiceConformance("sqlite file", sqlite.file);

const basenames = (infos: PathInfo[]) =>
  infos.map((i) => new TextDecoder().decode(i.node!.node!.value.name));

Deno.test("sqlite path infos survive reopening and list in key order", async () => {
  await withDbFile(async (path) => {
    const names = ["z", "1", "a", "2", "m"].map((c) => `${c.repeat(32)}-n${c}`);
    const first = new SqlitePathInfoService(path);
    for (const n of names) await first.put(symlinkPathInfo(n));
    await first.put(pathInfoWithNarinfo());
    await first.close();
    const second = new SqlitePathInfoService(path);
    try {
      const listed = basenames(await collect(second.list()));
      // Key order is the order of the raw digests.
      const expected = [...names, F.DUMMY_PATH].sort((x, y) => {
        const a = StorePath.parseBasename(x).digest, b = StorePath.parseBasename(y).digest;
        for (let i = 0; i < 20; i++) if (a[i] !== b[i]) return a[i] - b[i];
        return 0;
      });
      assertEquals(listed, expected);
      assertEquals(await second.get(F.DUMMY_PATH_DIGEST), pathInfoWithNarinfo());
    } finally {
      await second.close();
    }
  });
});

Deno.test("sqlite listing pages through many entries", async () => {
  const service = new SqlitePathInfoService(undefined);
  try {
    const digests = new Set<string>();
    for (let i = 0; i < 600; i++) {
      const digest = new Uint8Array(20);
      new DataView(digest.buffer).setUint32(0, i * 2654435761 >>> 0);
      const p = StorePath.fromParts(digest, `p${i}`);
      digests.add(p.basename());
      await service.put(symlinkPathInfo(p.basename()));
    }
    const listed = basenames(await collect(service.list()));
    assertEquals(listed.length, 600);
    assertEquals(new Set(listed), digests);
  } finally {
    await service.close();
  }
});

Deno.test("a corrupted sqlite pathinfo row is a StorageError", async () => {
  await withDbFile(async (path) => {
    const service = new SqlitePathInfoService(path);
    try {
      await service.put(symlinkPathInfo());
      await service.put(symlinkPathInfo(`${"1".repeat(32)}-other`));
      const db = new DatabaseSync(path);
      const update = db.prepare("UPDATE pathinfos SET data = ? WHERE digest = ?");
      update.run(new Uint8Array([0xff, 0xff]), new Uint8Array(20));
      db.close();
      await assertRejects(() => service.get(new Uint8Array(20)), StorageError);
      await assertRejects(() => collect(service.list()), StorageError);
      // A valid PathInfo of another store path under this key.
      const db2 = new DatabaseSync(path);
      db2.prepare("UPDATE pathinfos SET data = ? WHERE digest = ?").run(
        PathInfo.encode(symlinkPathInfo(`${"1".repeat(32)}-other`)).finish(),
        new Uint8Array(20),
      );
      db2.close();
      await assertRejects(() => service.get(new Uint8Array(20)), StorageError, "belongs to");
      // For verify: listed by key and skipped; removed only while still damaged.
      const reported: string[] = [];
      const listed = await collect(service.list((digest, err) => {
        assert(err instanceof CorruptionError);
        reported.push(toHex(digest));
      }));
      assertEquals(reported, [toHex(new Uint8Array(20))]);
      assertEquals(listed.length, 1);
      const whole = StorePath.parseBasename(`${"1".repeat(32)}-other`).digest;
      assertEquals(await service.deleteDamaged(whole), false, "a whole row stays");
      assertEquals(await service.deleteDamaged(new Uint8Array(20)), true);
      assertEquals(await service.deleteDamaged(new Uint8Array(20)), false);
      assertEquals((await collect(service.list())).length, 1);
    } finally {
      await service.close();
    }
  });
});

Deno.test("directory and pathinfo services share one sqlite file", async () => {
  await withDbFile(async (path) => {
    const dirs = new SqliteDirectoryService(path);
    const infos = new SqlitePathInfoService(path);
    try {
      await dirs.put(F.DIRECTORY_A);
      await infos.put(symlinkPathInfo());
      assertEquals(await dirs.get(new Uint8Array(32).fill(0)), undefined);
      assertEquals((await collect(infos.list())).length, 1);
    } finally {
      await dirs.close();
      await infos.close();
    }
    const db = new DatabaseSync(path);
    try {
      const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .all().map((r) => r.name);
      assertEquals(tables, ["directories", "pathinfo_refs", "pathinfos"]);
      assertEquals(db.prepare("PRAGMA journal_mode").get()?.journal_mode, "wal");
    } finally {
      db.close();
    }
  });
});

Deno.test("sqlite path infos of a store from before access times get them when opened", async () => {
  await withDbFile(async (path) => {
    const old = new DatabaseSync(path);
    old.exec(
      "CREATE TABLE pathinfos (digest BLOB PRIMARY KEY NOT NULL, data BLOB NOT NULL) WITHOUT ROWID",
    );
    const info = symlinkPathInfo();
    const digest = StorePath.parseBasenameBytes(info.node!.node!.value.name).digest;
    old.prepare("INSERT INTO pathinfos (digest, data) VALUES (?, ?)").run(
      digest,
      PathInfo.encode(info).finish(),
    );
    old.close();
    const before = Date.now();
    const s = new SqlitePathInfoService(path);
    try {
      const [a, ...rest] = await collect(s.listAccess());
      assertEquals([a.digest, rest], [digest, []]);
      // Counted as accessed when migrated, not at the epoch.
      assertEquals(a.accessedMs >= before && a.accessedMs <= Date.now(), true);
      assertEquals(await s.get(digest), info);
    } finally {
      await s.close();
    }
  });
});

Deno.test("sqlite path infos of a store from before the referrer table get it filled when opened", async () => {
  await withDbFile(async (path) => {
    const dependency = "00000000000000000000000000000000-dep";
    const app = "11111111111111111111111111111111-app";
    const digestOf = (name: string) => StorePath.parseBasename(name).digest;
    const old = new DatabaseSync(path);
    old.exec(
      "CREATE TABLE pathinfos (digest BLOB PRIMARY KEY NOT NULL, data BLOB NOT NULL, " +
        "accessed INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    );
    const insert = old.prepare("INSERT INTO pathinfos (digest, data) VALUES (?, ?)");
    insert.run(digestOf(dependency), PathInfo.encode(symlinkPathInfo(dependency)).finish());
    insert.run(
      digestOf(app),
      PathInfo.encode(referringPathInfo(app, [dependency])).finish(),
    );
    insert.run(new Uint8Array(20).fill(9), new Uint8Array([0xff, 0xff])); // damaged: skipped
    // More paths than one page of the fill, the last of them referring to app.
    const others = Array.from(
      { length: 4500 },
      (_, i) => StorePath.fromParts(pseudoRandom(20, 100 + i), `p${i}`).basename(),
    ).sort((x, y) => compareBytes(digestOf(x), digestOf(y)));
    for (const name of others) {
      const refs = name === others.at(-1) ? [app] : [];
      insert.run(digestOf(name), PathInfo.encode(referringPathInfo(name, refs)).finish());
    }
    old.close();
    const s = new SqlitePathInfoService(path);
    try {
      const err = await assertRejects(() => s.delete(digestOf(dependency)), StillReferencedError);
      assertEquals(err.referrers, [digestOf(app)]);
      const again = await assertRejects(() => s.delete(digestOf(app)), StillReferencedError);
      assertEquals(again.referrers, [digestOf(others.at(-1)!)]);
      assertEquals(await s.delete(digestOf(others.at(-1)!)), true);
      assertEquals(await s.delete(digestOf(app)), true);
      assertEquals(await s.delete(digestOf(dependency)), true);
    } finally {
      await s.close();
    }
    const db = new DatabaseSync(path);
    try {
      const flag = db.prepare(
        "SELECT name FROM sqlite_master WHERE name = 'pathinfo_refs_backfill'",
      );
      assertEquals(flag.get(), undefined, "the fill is recorded as done");
    } finally {
      db.close();
    }
  });
});
