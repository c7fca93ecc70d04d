/**
 * The near/far directory cache (`cache://`, docs/storage.md#near-cache)
 * over two local backends: a `get` fills the near store with the whole
 * closure it fetched, so the directory and everything below it are served
 * from near once the far store is gone. (The S3 variant, with a real
 * radosgw as the far store, is in tests/s3/cache_test.ts.)
 */
import { join } from "node:path";
import { CacheDirectoryService } from "../../src/castore/directory/cache.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import { SqliteDirectoryService } from "../../src/castore/directory/sqlite.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import { assert, assertEquals } from "../assert.ts";
import * as F from "../fixtures.ts";

Deno.test("directory cache: get() fills near with the closure; far gone, near serves it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const far = new SqliteDirectoryService(join(dir, "far.sqlite"));
    const putter = far.putMultiple();
    await putter.put(F.DIRECTORY_A);
    await putter.put(F.DIRECTORY_B);
    const root = await putter.close();
    assertEquals(root, directoryDigest(F.DIRECTORY_B));
    const near = new MemoryDirectoryService();
    const cache = new CacheDirectoryService(near, far);

    assertEquals(await cache.get(root), F.DIRECTORY_B);
    // Filled whole: the root and what it refers to.
    assertEquals(await near.get(root), F.DIRECTORY_B);
    assertEquals(await near.get(directoryDigest(F.DIRECTORY_A)), F.DIRECTORY_A);

    // The far store goes away: both are still served.
    await far.close();
    assertEquals(await cache.get(root), F.DIRECTORY_B);
    assertEquals(await cache.get(directoryDigest(F.DIRECTORY_A)), F.DIRECTORY_A);
    const closure = [];
    for await (const d of cache.getRecursive(root)) closure.push(d);
    assertEquals(closure.length, 2);
    assert(closure.some((d) => directoryDigest(d).every((x, i) => x === root[i])));
    await near.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
