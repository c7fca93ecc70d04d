/**
 * A PathInfo deleted from SQLite is durable before `delete` returns: the
 * database runs with `synchronous = NORMAL`, under which the last commits
 * may be lost on a power failure, and garbage collection removes a deleted
 * path's data right after (a PathInfo coming back would name data that is
 * gone). Observed with strace on a child process: the write-ahead log is
 * synced between the "put" and "deleted" marks.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { traceSyscalls } from "../strace.ts";

const CHILD = new URL("./pathinfo_delete_child.ts", import.meta.url).pathname;
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;

Deno.test("sqlite path infos: a delete syncs the log before it returns", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-delete-durable-" });
  try {
    const t = await traceSyscalls(
      [Deno.execPath(), "run", "--config", CONFIG, "-A", CHILD, join(tmp, "store.sqlite")],
      ["fsync", "fdatasync", "write"],
      { paths: true },
    );
    assertEquals(t.code, 0, t.stderr);
    assertEquals(t.stdout, "put\ndeleted\n");
    const lines = t.output.split("\n");
    const at = (mark: string) => lines.findIndex((l) => l.includes(`"${mark}\\n"`));
    const put = at("put"), deleted = at("deleted");
    assert(put >= 0 && deleted > put, t.output);
    const synced = lines.slice(put, deleted).filter((l) =>
      /^\d+\s+f(data)?sync\(\d+<[^>]*store\.sqlite-wal>/.test(l)
    );
    assert(synced.length > 0, `no sync of the log between the marks:\n${t.output}`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
