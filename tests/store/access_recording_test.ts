/**
 * The access-recording combinator the daemon serves path infos through
 * (docs/gc.md#access-times), over a real SQLite backend: a read records an
 * access, a hot path is not written again within the resolution, pending
 * accesses protect a path from a policy's delete before they are written,
 * and closing writes them.
 */
import { assert, assertEquals } from "../assert.ts";
import { SqlitePathInfoService } from "../../src/store/pathinfo/sqlite.ts";
import { AccessRecordingPathInfoService } from "../../src/store/pathinfo/access_recording.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { collect, withDbFile } from "../conformance/harness.ts";
import * as F from "../fixtures.ts";
import { symlinkPathInfo } from "./pathinfo_fixtures.ts";

const info = symlinkPathInfo();
const digest = StorePath.parseBasenameBytes(info.node!.node!.value.name).digest;
const tick = () => new Promise((r) => setTimeout(r, 5));

/** The stored access time of the one path in `s`. */
async function accessed(s: SqlitePathInfoService): Promise<number> {
  const [a] = await collect(s.listAccess());
  return a.accessedMs;
}

Deno.test("a read records an access; reads within the resolution are not written again", async () => {
  await withDbFile(async (path) => {
    const inner = new SqlitePathInfoService(path);
    const s = new AccessRecordingPathInfoService(inner, { flushMs: 3_600_000 });
    try {
      await s.put(info);
      const created = await accessed(inner);
      await tick();
      assertEquals(await s.get(F.DUMMY_PATH_DIGEST.map((b) => b ^ 1)), undefined);
      assertEquals(await s.get(digest), info);
      assertEquals(await accessed(inner), created, "not written before a flush");
      await s.flush();
      const read = await accessed(inner);
      assert(read > created, `${read} after ${created}`);
      await tick();
      await s.get(digest);
      await s.flush();
      assertEquals(await accessed(inner), read, "a hot path is written once per resolution");
    } finally {
      await s.close();
    }
  });
});

Deno.test("with a short resolution every read after it is written; close writes what is pending", async () => {
  await withDbFile(async (path) => {
    const inner = new SqlitePathInfoService(path);
    const s = new AccessRecordingPathInfoService(inner, { resolutionMs: 1, flushMs: 3_600_000 });
    await s.put(info);
    await tick();
    await s.get(digest);
    await s.flush();
    const first = await accessed(inner);
    await tick();
    await s.get(digest);
    await s.close();
    const reopened = new SqlitePathInfoService(path);
    try {
      const [a] = await collect(reopened.listAccess());
      assert(a.accessedMs > first, `${a.accessedMs} after ${first}`);
    } finally {
      await reopened.close();
    }
  });
});

Deno.test("a read not yet written still keeps the path from a policy's delete", async () => {
  await withDbFile(async (path) => {
    const inner = new SqlitePathInfoService(path);
    const s = new AccessRecordingPathInfoService(inner, { flushMs: 3_600_000 });
    try {
      await s.put(info);
      await tick();
      const cutoff = Date.now();
      await s.get(digest);
      assertEquals(await s.deleteUnaccessed(digest, cutoff), false);
      assertEquals(await s.get(digest), info);
      // Without the read, the same cutoff deletes it.
      const plain = new AccessRecordingPathInfoService(inner, { flushMs: 3_600_000 });
      assertEquals(await plain.deleteUnaccessed(digest, cutoff), true);
      await plain.stop();
      assertEquals(await inner.get(digest), undefined);
    } finally {
      await s.close();
    }
  });
});
