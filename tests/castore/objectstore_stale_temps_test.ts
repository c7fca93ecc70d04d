/**
 * Temporary files a crashed writer left in a file object store are removed
 * by the next process that opens the store (here a real daemon), once they
 * are old enough; a live writer's fresh one is left alone.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { startServer } from "../cli/helpers.ts";
import { FileObjectStore, STALE_TEMP_MS } from "../../src/castore/objectstore/file.ts";

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);

Deno.test("file object store: stale .tmp- files go when a daemon opens the store", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-stale-temps-" });
  const blobs = join(work, "blobs");
  const shard = join(blobs, "chunks", "b3", "abcd");
  await Deno.mkdir(shard, { recursive: true });
  const old = join(shard, ".tmp-left-by-a-crash");
  const fresh = join(shard, ".tmp-being-written");
  const object = join(shard, "abcd".padEnd(64, "0"));
  await Deno.writeTextFile(old, "partial");
  await Deno.writeTextFile(fresh, "partial");
  await Deno.writeTextFile(object, "an object, not a temporary file");
  const longAgo = new Date(Date.now() - STALE_TEMP_MS - 60_000);
  await Deno.utime(old, longAgo, longAgo);
  const daemon = await startServer([
    "daemon",
    "--listen-address",
    "127.0.0.1:0",
    "--blob-service-addr",
    `objectstore+file://${blobs}`,
    "--directory-service-addr",
    `sqlite://${join(work, "store.sqlite")}`,
    "--path-info-service-addr",
    `sqlite://${join(work, "store.sqlite")}`,
  ], { name: "daemon" });
  try {
    for (let i = 0; i < 100 && await exists(old); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assertEquals(await exists(old), false, "the stale temporary file is removed");
    assert(await exists(fresh), "a fresh one (a live writer's) stays");
    assert(await exists(object), "objects stay");
  } finally {
    await daemon.stop();
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("file object store: closing stops the walk for stale temporary files", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-stale-walk-" });
  try {
    // A tree whose walk takes a while: 2,000 shard directories, each with
    // a stale temporary file.
    const longAgo = new Date(Date.now() - STALE_TEMP_MS - 60_000);
    const stale: string[] = [];
    for (let i = 0; i < 2000; i++) {
      const shard = join(work, "chunks", "b3", i.toString(16).padStart(4, "0"));
      await Deno.mkdir(shard, { recursive: true });
      const temp = join(shard, ".tmp-left-by-a-crash");
      await Deno.writeTextFile(temp, "partial");
      await Deno.utime(temp, longAgo, longAgo);
      stale.push(temp);
    }
    const store = new FileObjectStore(work);
    await store.close();
    // Stopped, not left running behind the closed store: what it had not
    // reached stays, also a moment later.
    await new Promise((r) => setTimeout(r, 2000));
    let left = 0;
    for (const temp of stale) if (await exists(temp)) left++;
    assert(left > 0, "the walk went on after close");
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
