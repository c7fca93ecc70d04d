/**
 * A pack store starts writing a pack's bytes to disk while they are
 * appended (`sync_file_range`, every 8 MiB), so the commit's `fdatasync`
 * finds little left; observed with strace on a child process. Without FFI
 * the commit alone writes them, and the blob reads back the same either way.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { traceSyscalls } from "../strace.ts";
import { PackBlobService } from "../../src/castore/blob/pack.ts";
import { blake3, fromHex } from "../../src/castore/digest.ts";

const CHILD = new URL("./pack_writeback_child.ts", import.meta.url).pathname;
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;
const MIB = 1024 * 1024;

/** One call of `sync_file_range` as strace printed it. */
interface RangeCall {
  fd: number;
  offset: number;
  length: number;
  flags: string;
}

/** Opens the store at `dir` again and reads the blob: it must be whole, `mib` MiB with `digest`. */
async function assertReadsBack(dir: string, digest: Uint8Array, mib: number): Promise<void> {
  const store = new PackBlobService(dir);
  try {
    const reader = await store.openRead(digest);
    assert(reader, "blob not found");
    const data = new Uint8Array(mib * MIB);
    let at = 0;
    for await (const piece of reader) {
      data.set(piece, at);
      at += piece.length;
    }
    assertEquals(at, mib * MIB);
    assertEquals(blake3(data), digest);
  } finally {
    await store.close();
  }
}

/** Writes `mib` MiB into a fresh pack store under strace; returns the calls and the store. */
async function tracedWrite(perms: string[], mib: number) {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-writeback-" });
  const dir = join(tmp, "packs");
  const traced = await traceSyscalls(
    [Deno.execPath(), "run", "--config", CONFIG, ...perms, CHILD, dir, `${mib}`],
    ["sync_file_range", "fdatasync"],
  );
  assertEquals(traced.code, 0, traced.stderr);
  // strace splits a call that another thread interrupts into an
  // "unfinished" line and a "resumed" one; the arguments are on the first.
  const ranges: RangeCall[] = [];
  const lines = traced.output.split("\n");
  for (const m of traced.output.matchAll(/sync_file_range\((\d+), (\d+), (\d+), (\w+)/g)) {
    ranges.push({ fd: Number(m[1]), offset: Number(m[2]), length: Number(m[3]), flags: m[4] });
  }
  const firstRange = lines.findIndex((l) => l.includes("sync_file_range("));
  const lastSync = lines.findLastIndex((l) => l.includes("fdatasync("));
  return { tmp, dir, ranges, firstRange, lastSync, digest: fromHex(traced.stdout.trim()) };
}

Deno.test("pack store: a 40 MiB blob's pack is written back in 8 MiB steps before the commit", async () => {
  const t = await tracedWrite(["-A"], 40);
  try {
    // 40 MiB in steps of at least 8 MiB, one after the other over the pack
    // (8 bytes of magic first). How many depends on the disk: a call that
    // blocks on a full queue is followed by one covering everything
    // written meanwhile, so only a lower bound is certain.
    assert(t.ranges.length >= 2 && t.ranges.length <= 5, JSON.stringify(t.ranges));
    let next = 8;
    for (const r of t.ranges) {
      assertEquals(r.flags, "SYNC_FILE_RANGE_WRITE");
      assertEquals(r.fd, t.ranges[0].fd);
      assertEquals(r.offset, next);
      assert(r.length >= 8 * MIB, JSON.stringify(r));
      next = r.offset + r.length;
    }
    const packs = [...Deno.readDirSync(t.dir)].filter((e) => e.name.endsWith(".pack"));
    assertEquals(packs.length, 1);
    assert(next <= Deno.statSync(join(t.dir, packs[0].name)).size, "a range past the pack's end");
    // The commit still flushes the pack.
    assert(t.lastSync > t.firstRange, "no fdatasync after the write-back started");
    await assertReadsBack(t.dir, t.digest, 40);
  } finally {
    await Deno.remove(t.tmp, { recursive: true });
  }
});

Deno.test("pack store: without FFI nothing is written back early, and the blob still commits", async () => {
  const t = await tracedWrite(["--allow-read", "--allow-write", "--allow-env"], 24);
  try {
    assertEquals(t.ranges.length, 0);
    assert(t.lastSync >= 0, "no fdatasync");
    await assertReadsBack(t.dir, t.digest, 24);
  } finally {
    await Deno.remove(t.tmp, { recursive: true });
  }
});
