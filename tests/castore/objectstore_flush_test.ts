/**
 * The file object store's group commit, observed with strace on a child
 * process: puts never flush and `sync()` flushes the filesystem with
 * `syncfs` (concurrent calls share flushes); without FFI each put
 * fdatasyncs its own object instead.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { countSyscalls, traceSyscalls, wholeCalls } from "../strace.ts";

const CHILD = new URL("./flush_child.ts", import.meta.url).pathname;
const SHARE_CHILD = new URL("./flush_share_child.ts", import.meta.url).pathname;
/** `deno run` of a child script without FFI permission. */
const runWithoutFfi = (script: string, ...args: string[]) => [
  Deno.execPath(),
  "run",
  "--config",
  CONFIG,
  "--allow-read",
  "--allow-write",
  "--allow-env",
  script,
  ...args,
];
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

Deno.test("file object store: 300 puts flush nothing; 8 concurrent syncs share syncfs calls", async () => {
  const c = await tracedRun(["-A"], 300, 8);
  // (The runtime itself may fsync a file of its own, so only fdatasync,
  // what a put would use, is counted.)
  assertEquals(c.fdatasync, 0, c.table);
  // The first sync starts a flush, the other seven share the next one,
  // and the last sync after them all flushes once more.
  assertEquals(c.syncfs, 3, c.table);
});

Deno.test("file object store: without FFI, every put fdatasyncs its object", async () => {
  const c = await tracedRun(["--allow-read", "--allow-write", "--allow-env"], 300, 8);
  assertEquals(c.syncfs, 0, c.table);
  assertEquals(c.fdatasync, 300, c.table);
});

Deno.test("file object store: every syncfs goes through one descriptor of the store, opened once", async () => {
  // A descriptor opened after a failed write-back misses the failure if
  // another process's syncfs saw it first (flush.ts), so it is opened at
  // the first write and kept.
  const tmp = await Deno.makeTempDir({ prefix: "tvix-flush-fd-" });
  try {
    const dir = join(tmp, "store");
    const t = await traceSyscalls(
      [Deno.execPath(), "run", "--config", CONFIG, "-A", CHILD, dir, "50", "4"],
      ["openat", "syncfs"],
    );
    assertEquals(t.code, 0, t.stderr);
    const lines = wholeCalls(t.output);
    // Opened for flushing (as a directory, without O_NONBLOCK, which
    // listing it adds), and not refused: before the first write it is not
    // there yet.
    const opens = lines.filter((l) =>
      l.includes(`openat(AT_FDCWD, "${dir}", O_RDONLY|O_CLOEXEC|O_DIRECTORY)`) &&
      !l.includes("= -1")
    );
    assertEquals(opens.length, 1, opens.join("\n"));
    const fd = opens[0].match(/= (\d+)$/)?.[1];
    assert(fd !== undefined, opens[0]);
    const syncs = lines.filter((l) => /syncfs\(/.test(l) && !l.includes("resumed"));
    assert(syncs.length >= 2, t.output);
    for (const l of syncs) assert(l.includes(`syncfs(${fd}`), `${l} (expected fd ${fd})`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("file object store: without FFI, the commit flushes every directory an object was renamed into or created in", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-flush-dirs-" });
  try {
    const dir = join(tmp, "store");
    const t = await traceSyscalls(
      runWithoutFfi(CHILD, dir, "50", "1"),
      ["fsync", "fdatasync"],
      { paths: true },
    );
    assertEquals(t.code, 0, t.stderr);
    // The child puts objects into o/0 … o/6; each directory's new names
    // reach the disk only with a flush of the directory itself.
    const synced = new Set(
      wholeCalls(t.output).flatMap((l) => {
        const m = l.match(/ fsync\(\d+<([^>]+)>\)\s*=\s*0/);
        return m ? [m[1]] : [];
      }),
    );
    for (let i = 0; i < 7; i++) {
      assert(synced.has(join(dir, "o", `${i}`)), `o/${i} not flushed:\n${t.output}`);
    }
    // So do the names of the directories the store created: o/0 … o/6 in
    // o, o in the store, the store in its parent.
    for (const parent of [join(dir, "o"), dir, tmp]) {
      assert(synced.has(parent), `${parent} not flushed:\n${t.output}`);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("file object store: without FFI, a commit asked for while another flushes waits for a flush after it", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-flush-share-" });
  try {
    const [cmd, ...args] = runWithoutFfi(SHARE_CHILD, join(tmp, "store"));
    const out = await new Deno.Command(cmd, { args }).output();
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    // The second commit was asked for while the first flushed the object's
    // directory: it must not return before a flush that started after it.
    assertEquals(new TextDecoder().decode(out.stdout).trim().split("\n"), ["first", "second"]);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
