/**
 * The file object store's group commit, observed with strace on a child
 * process: puts never flush; `sync()` flushes everything put so far in one
 * `syncfs` (concurrent calls share it, a second call with nothing new does
 * nothing), and without FFI it falls back to one fdatasync per object.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { countSyscalls } from "../strace.ts";

const CHILD = new URL("./flush_child.ts", import.meta.url).pathname;
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;

/** Runs the child under strace; returns the count of each traced call. */
async function tracedRun(perms: string[], n: number, syncs: number) {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-flush-" });
  try {
    const c = await countSyscalls(
      [
        Deno.execPath(),
        "run",
        "--config",
        CONFIG,
        ...perms,
        CHILD,
        join(tmp, "store"),
        `${n}`,
        `${syncs}`,
      ],
      ["fsync", "fdatasync", "syncfs"],
    );
    assertEquals(c.code, 0, c.stderr);
    assertEquals(c.stdout.trim(), "synced");
    return {
      syncfs: c.calls("syncfs"),
      fdatasync: c.calls("fdatasync"),
      fsync: c.calls("fsync"),
      table: c.table,
    };
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

Deno.test("file object store: 300 puts and 8 concurrent syncs make one syncfs", async () => {
  const c = await tracedRun(["-A"], 300, 8);
  assertEquals(c.syncfs, 1, c.table);
  assertEquals(c.fdatasync, 0, c.table);
});

Deno.test("file object store: without FFI, sync fdatasyncs each object once", async () => {
  const c = await tracedRun(["--allow-read", "--allow-write", "--allow-env"], 300, 8);
  assertEquals(c.syncfs, 0, c.table);
  assertEquals(c.fdatasync, 300, c.table);
  // The seven shard directories holding them.
  assert(c.fsync >= 7, c.table);
});
