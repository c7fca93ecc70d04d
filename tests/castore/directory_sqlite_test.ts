import { DatabaseSync } from "node:sqlite";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { directoryDigest, encodeDirectory } from "../../src/castore/directory.ts";
import { SqliteDirectoryService } from "../../src/castore/directory/sqlite.ts";
import { StorageError } from "../../src/errors.ts";
import { directoryServiceConformance, putAll } from "../conformance/directory_suite.ts";
import { collect, sqliteFactories, withDbFile } from "../conformance/harness.ts";
import { taggedClosure } from "./sqlite_writer.ts";
import * as F from "../fixtures.ts";
import { toHex } from "../../src/castore/digest.ts";

const sqlite = sqliteFactories((path) => new SqliteDirectoryService(path), "sub/dir/store.sqlite");
directoryServiceConformance("sqlite in memory", sqlite.memory);
directoryServiceConformance("sqlite file", sqlite.file);

const COMPLICATED = directoryDigest(F.DIRECTORY_COMPLICATED);
const WITH_KEEP = directoryDigest(F.DIRECTORY_WITH_KEEP);

Deno.test("sqlite directories survive closing and reopening the file", async () => {
  await withDbFile(async (path) => {
    const first = new SqliteDirectoryService(path);
    await putAll(first, [F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]);
    await first.put(F.DIRECTORY_A);
    await first.close();
    const second = new SqliteDirectoryService(path);
    try {
      assertEquals(await second.get(COMPLICATED), F.DIRECTORY_COMPLICATED);
      assertEquals(await collect(second.getRecursive(COMPLICATED)), [
        F.DIRECTORY_COMPLICATED,
        F.DIRECTORY_WITH_KEEP,
      ]);
      assertEquals(await second.get(directoryDigest(F.DIRECTORY_A)), F.DIRECTORY_A);
    } finally {
      await second.close();
    }
  });
});

Deno.test("sqlite directory rows hold the canonical encoding under the raw digest", async () => {
  await withDbFile(async (path) => {
    const service = new SqliteDirectoryService(path);
    await putAll(service, [F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]);
    await service.close();
    const db = new DatabaseSync(path);
    try {
      const rows = db.prepare("SELECT digest, data FROM directories ORDER BY digest").all()
        .map((r) => [toHex(r.digest as Uint8Array), toHex(r.data as Uint8Array)]);
      const expected = [F.DIRECTORY_COMPLICATED, F.DIRECTORY_WITH_KEEP]
        .map((d) => [toHex(directoryDigest(d)), toHex(encodeDirectory(d))])
        .sort();
      assertEquals(rows, expected);
    } finally {
      db.close();
    }
  });
});

Deno.test("a corrupted sqlite directory row is a StorageError", async () => {
  await withDbFile(async (path) => {
    const service = new SqliteDirectoryService(path);
    try {
      await putAll(service, [F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]);
      const db = new DatabaseSync(path);
      const update = db.prepare("UPDATE directories SET data = ? WHERE digest = ?");
      // Another valid directory under the wrong key: the digest check catches it.
      update.run(encodeDirectory(F.DIRECTORY_A), WITH_KEEP);
      // Bytes that are no protobuf at all.
      update.run(new Uint8Array([0xff, 0xff, 0xff]), COMPLICATED);
      db.close();
      await assertRejects(() => service.get(WITH_KEEP), StorageError, "requested directory");
      await assertRejects(() => service.get(COMPLICATED), StorageError);
      await assertRejects(() => collect(service.getRecursive(COMPLICATED)), StorageError);
    } finally {
      await service.close();
    }
  });
});

Deno.test("a missing child in sqlite is a StorageError during a recursive get", async () => {
  await withDbFile(async (path) => {
    const service = new SqliteDirectoryService(path);
    try {
      await putAll(service, [F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]);
      const db = new DatabaseSync(path);
      db.prepare("DELETE FROM directories WHERE digest = ?").run(WITH_KEEP);
      db.close();
      const err = await assertRejects(
        () => collect(service.getRecursive(COMPLICATED)),
        StorageError,
        "does not exist",
      );
      assert(err.message.includes("b3:"), "names the missing digest");
    } finally {
      await service.close();
    }
  });
});

Deno.test("two connections share one sqlite file", async () => {
  await withDbFile(async (path) => {
    const a = new SqliteDirectoryService(path);
    const b = new SqliteDirectoryService(path);
    try {
      await putAll(a, [F.DIRECTORY_A, F.DIRECTORY_C]);
      assertEquals(await b.get(directoryDigest(F.DIRECTORY_C)), F.DIRECTORY_C);
      // b sees A, so its single put of B is not dangling.
      assertEquals(await b.put(F.DIRECTORY_B), directoryDigest(F.DIRECTORY_B));
      assertEquals(await a.get(directoryDigest(F.DIRECTORY_B)), F.DIRECTORY_B);
    } finally {
      await a.close();
      await b.close();
    }
  });
});

Deno.test("a sqlite multi-put that fails while writing stores nothing", async () => {
  await withDbFile(async (path) => {
    const service = new SqliteDirectoryService(path);
    try {
      // Make the database itself refuse the root row, after the leaves were written.
      const db = new DatabaseSync(path);
      db.exec(
        `CREATE TRIGGER refuse_root BEFORE INSERT ON directories
         WHEN NEW.digest = x'${toHex(COMPLICATED)}'
         BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END`,
      );
      db.close();
      await assertRejects(
        () => putAll(service, [F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]),
        StorageError,
        "refused by test trigger",
      );
      assertEquals(await service.get(WITH_KEEP), undefined);
      assertEquals(await service.get(COMPLICATED), undefined);
      // The connection is usable afterwards (the transaction was rolled back).
      assertEquals(
        await putAll(service, [F.DIRECTORY_A, F.DIRECTORY_C]),
        directoryDigest(F.DIRECTORY_C),
      );
    } finally {
      await service.close();
    }
  });
});

Deno.test("processes writing one sqlite file concurrently all succeed", async () => {
  await withDbFile(async (path) => {
    const writer = new URL("./sqlite_writer.ts", import.meta.url).pathname;
    const count = 40;
    const spawn = (tag: string) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "--no-check", writer, path, tag, String(count)],
        stdout: "piped",
        stderr: "piped",
      }).output();
    // Two child processes and this one write at the same time.
    const local = new SqliteDirectoryService(path);
    try {
      const [a, b] = await Promise.all([
        spawn("a"),
        spawn("b"),
        (async () => {
          for (let i = 0; i < count; i++) await putAll(local, taggedClosure("local", i));
        })(),
      ]);
      for (const out of [a, b]) {
        assert(out.success, new TextDecoder().decode(out.stderr));
        const roots = new TextDecoder().decode(out.stdout).trim().split("\n");
        assertEquals(roots.length, count);
      }
      for (const tag of ["a", "b", "local"]) {
        for (let i = 0; i < count; i++) {
          const [leafDir, root] = taggedClosure(tag, i);
          assertEquals(await collect(local.getRecursive(directoryDigest(root))), [root, leafDir]);
        }
      }
    } finally {
      await local.close();
    }
  });
});

Deno.test("a single put fails, storing nothing, when gc elsewhere removes a child between its read and its mark", async () => {
  await withDbFile(async (path) => {
    // gc in another process: deletes each child row right after this
    // service read it, before the put marks it as used.
    const gc = new DatabaseSync(path);
    class RacedByGc extends SqliteDirectoryService {
      override async *getRecursive(digest: Uint8Array) {
        for await (const d of super.getRecursive(digest)) {
          gc.prepare("DELETE FROM directories WHERE digest = ?").run(directoryDigest(d));
          yield d;
        }
      }
    }
    const s = new RacedByGc(path);
    try {
      await s.put(F.DIRECTORY_WITH_KEEP);
      await assertRejects(() => s.put(F.DIRECTORY_COMPLICATED), StorageError, "was removed");
      assertEquals(await s.get(COMPLICATED), undefined, "no directory over a missing child");
      // Stored again, the child makes the parent's put (without the race) succeed.
      const plain = new SqliteDirectoryService(path);
      await plain.put(F.DIRECTORY_WITH_KEEP);
      await plain.put(F.DIRECTORY_COMPLICATED);
      assertEquals(await plain.get(COMPLICATED), F.DIRECTORY_COMPLICATED);
      await plain.close();
    } finally {
      await s.close();
      gc.close();
    }
  });
});
