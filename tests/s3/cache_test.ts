/**
 * `cache://?near=…&far=…` with the far store on S3 (radosgw): the blob and
 * directory conformance suites with a pack or memory near store, the near
 * store filling on reads and not on writes, and what was read before still
 * served once the gateway is gone.
 */
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { chunkPath } from "../../src/castore/blob/objectstore.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { blake3 } from "../../src/castore/digest.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import { checkServiceUrl } from "../../src/castore/service_url.ts";
import { StorageError, UnavailableError } from "../../src/errors.ts";
import { blobServiceConformance, putBlob, readBlob } from "../conformance/blob_suite.ts";
import { directoryServiceConformance, putAll } from "../conformance/directory_suite.ts";
import { collect, collectBytes, type ServiceFactory } from "../conformance/harness.ts";
import * as F from "../fixtures.ts";
import { gatewayStart, gatewayStop, s3ServiceFactory, s3Suite, s3Test } from "./harness.ts";

/** `cache://` of `near` and `far`, both percent-encoded. */
function cacheUrl(near: string, far: string): string {
  return `cache://?near=${encodeURIComponent(near)}&far=${encodeURIComponent(far)}`;
}

/**
 * A conformance factory: the far store in a fresh bucket, the near store
 * `near(dir)` in a fresh temp dir, removed at cleanup.
 */
function cacheFactory<S extends { close(): Promise<void> }>(
  open: (url: string) => Promise<S>,
  near: (dir: string) => string,
  prefix: string,
): ServiceFactory<S> {
  return async () => {
    const dir = await Deno.makeTempDir({ prefix: "tvix-cache-" });
    const inner = await s3ServiceFactory((far) => open(cacheUrl(near(dir), far)), prefix)();
    return {
      service: inner.service,
      cleanup: async () => {
        await inner.cleanup();
        await Deno.remove(dir, { recursive: true });
      },
    };
  };
}

s3Suite("cache:// conformance", () => {
  blobServiceConformance(
    "cache(pack, objectstore+s3)",
    cacheFactory(blobServiceFromUrl, (dir) => `pack://${dir}/packs`, "blobs"),
  );
  blobServiceConformance(
    "cache(memory, objectstore+s3)",
    cacheFactory(blobServiceFromUrl, () => "memory://", "blobs"),
  );
  directoryServiceConformance(
    "cache(sqlite, objectstore+s3)",
    cacheFactory(directoryServiceFromUrl, (dir) => `sqlite://${dir}/dirs.sqlite`, "dirs"),
    { onlyRootsRetrievable: true },
  );
});

Deno.test("cache:// URLs: both parts required, each checked as a service URL", () => {
  checkServiceUrl("blob", cacheUrl("pack:///var/cache/x", "objectstore+s3://b/p?endpoint=x"));
  checkServiceUrl("directory", cacheUrl("sqlite:///c.sqlite", "postgres://h/db"));
  for (
    const [url, why] of [
      ["cache://?near=memory%3A%2F%2F", "near and far are both required"],
      [`${cacheUrl("memory://", "memory://")}&far=memory%3A%2F%2F`, "far given twice"],
      [`${cacheUrl("memory://", "memory://")}&size=1`, "unknown cache parameter size"],
      ["cache://host/?near=memory%3A%2F%2F&far=memory%3A%2F%2F", "takes no host or path"],
      [cacheUrl("memory://", "sqlite:///x"), "unknown scheme: sqlite"],
    ]
  ) {
    let message = "";
    try {
      checkServiceUrl("blob", url);
    } catch (err) {
      assert(err instanceof StorageError, String(err));
      message = err.message;
    }
    assert(message.includes(why), `${url}: ${message}`);
  }
});

s3Test(
  "cache: reads fill the near store, writes do not; the far store gone, it still serves",
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "tvix-cache-" });
    const near = { blob: `pack://${dir}/packs`, dir: `sqlite://${dir}/dirs.sqlite` };
    const far = { blob: t.url("blobs"), dir: t.url("dirs") };
    let gatewayDown = false;
    const blobs = await blobServiceFromUrl(cacheUrl(near.blob, far.blob));
    const dirs = await directoryServiceFromUrl(cacheUrl(near.dir, far.dir));
    try {
      const big = F.pseudoRandom(3 * 1024 * 1024, 21);
      const small = F.pseudoRandom(1000, 22);
      const unread = F.pseudoRandom(2000, 23);
      const bigDigest = await putBlob(blobs, big);
      const smallDigest = await putBlob(blobs, small);
      const unreadDigest = await putBlob(blobs, unread);
      const root = await putAll(dirs, [F.DIRECTORY_A, F.DIRECTORY_C]);

      // Written through to S3 only: a second service on the near store alone knows nothing.
      const nearOnly = await blobServiceFromUrl(near.blob);
      try {
        assertEquals(await nearOnly.has(bigDigest), false, "uploads do not fill the cache");
      } finally {
        await nearOnly.close();
      }
      const chunks = (await blobs.chunks(bigDigest))!;
      assert(chunks.length > 2, `a blob of several chunks (${chunks.length})`);
      assert((await t.client.listKeys(`blobs/${chunkPath(chunks[0].digest)}`)).length === 1);

      // Read once through the cache: whole blobs, a range, a closure.
      assertEquals(await readBlob(blobs, bigDigest), big);
      assertEquals(await readBlob(blobs, smallDigest), small);
      const from = Number(chunks[0].size) + 10;
      const tail = await collectBytes((await blobs.openRead(bigDigest, from))!);
      assertEquals(tail, big.subarray(from));
      assertEquals(await collect(dirs.getRecursive(root)), [F.DIRECTORY_C, F.DIRECTORY_A]);

      await gatewayStop(t.server);
      gatewayDown = true;
      // What was read is served from near, verified, without the far store.
      assertEquals(await readBlob(blobs, bigDigest), big);
      assertEquals(await readBlob(blobs, smallDigest), small);
      assertEquals(
        await collectBytes((await blobs.openRead(bigDigest, from))!),
        big.subarray(from),
      );
      assertEquals(
        await readBlob(blobs, chunks[1].digest),
        big.subarray(
          Number(chunks[0].size),
          Number(chunks[0].size + chunks[1].size),
        ),
      );
      assertEquals(await blobs.has(bigDigest), true);
      assertEquals(await collect(dirs.getRecursive(root)), [F.DIRECTORY_C, F.DIRECTORY_A]);
      assertEquals(await dirs.get(directoryDigest(F.DIRECTORY_A)), F.DIRECTORY_A);
      // What was not read needs the far store: UNAVAILABLE, not "absent" and not data loss.
      await assertRejects(() => blobs.has(unreadDigest), UnavailableError);
      await assertRejects(() => readBlob(blobs, unreadDigest), UnavailableError);
      await assertRejects(() => putBlob(blobs, F.pseudoRandom(100, 24)), UnavailableError);

      await gatewayStart(t.server);
      gatewayDown = false;
      assertEquals(await readBlob(blobs, unreadDigest), unread);
    } finally {
      if (gatewayDown) await gatewayStart(t.server);
      await blobs.close();
      await dirs.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
  { controlsGateway: true },
);

s3Test("cache: after a restart the near store still has what was read", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "tvix-cache-" });
  const url = cacheUrl(`pack://${dir}/packs`, t.url("blobs"));
  try {
    const data = F.pseudoRandom(1024 * 1024, 31);
    const first = await blobServiceFromUrl(url);
    const digest = await putBlob(first, data);
    assertEquals(await readBlob(first, digest), data);
    await first.close();
    // The pack store alone, as the next process would open it.
    const nearOnly = await blobServiceFromUrl(`pack://${dir}/packs`);
    try {
      assertEquals(await readBlob(nearOnly, digest), data);
      assertEquals(blake3(data), digest);
    } finally {
      await nearOnly.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
