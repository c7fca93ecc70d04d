/**
 * Deleted PathInfos are durable once `sync()` returns: the database runs
 * with `synchronous = NORMAL`, under which the last commits may be lost on
 * a power failure, and garbage collection removes a deleted path's data
 * right after (a PathInfo coming back would name data that is gone).
 * Deletes themselves do not sync, so that removing many paths costs one
 * sync. Observed with strace on a child process: the write-ahead log is
 * synced between the "deleted" and "synced" marks, and not between "put"
 * and "deleted".
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { traceSyscalls, wholeCalls } from "../strace.ts";

const CHILD = new URL("./pathinfo_delete_child.ts", import.meta.url).pathname;
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;

Deno.test("sqlite path infos: sync() makes deletions durable; a delete alone does not sync", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-delete-durable-" });
  try {
    const t = await traceSyscalls(
      [Deno.execPath(), "run", "--config", CONFIG, "-A", CHILD, join(tmp, "store.sqlite")],
      ["fsync", "fdatasync", "write"],
      { paths: true },
    );
    assertEquals(t.code, 0, t.stderr);
    assertEquals(t.stdout, "put\ndeleted\nsynced\n");
    const lines = wholeCalls(t.output);
    const at = (mark: string) => lines.findIndex((l) => l.includes(`"${mark}\\n"`));
    const put = at("put"), deleted = at("deleted"), synced = at("synced");
    assert(put >= 0 && deleted > put && synced > deleted, t.output);
    const logSyncs = (from: number, to: number) =>
      lines.slice(from, to).filter((l) =>
        /^\d+\s+f(data)?sync\(\d+<[^>]*store\.sqlite-wal>/.test(l)
      );
    assertEquals(logSyncs(put, deleted), [], "the delete itself does not sync");
    assert(logSyncs(deleted, synced).length > 0, `sync() did not sync the log:\n${t.output}`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
