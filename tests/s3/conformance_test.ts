/**
 * `objectstore+s3://` against a real S3 server (radosgw, tests/s3/harness.ts):
 * the blob and directory conformance suites, the object store's own
 * semantics (prefix, listing across pages, conditional puts) and the
 * start-up check of the bucket.
 */
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import {
  blobIndexPath,
  chunkPath,
  ObjectStoreBlobService,
} from "../../src/castore/blob/objectstore.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { closurePath } from "../../src/castore/directory/objectstore.ts";
import { blake3 } from "../../src/castore/digest.ts";
import { checkObjectStore, objectStoreFromUrl } from "../../src/castore/objectstore/from_url.ts";
import { S3ObjectStore } from "../../src/castore/objectstore/s3.ts";
import { S3UnavailableError } from "../../src/castore/objectstore/s3_client.ts";
import { StorageError } from "../../src/errors.ts";
import { blobServiceConformance, putBlob, readBlob } from "../conformance/blob_suite.ts";
import { directoryServiceConformance, putAll } from "../conformance/directory_suite.ts";
import * as F from "../fixtures.ts";
import { s3Client, s3ServiceFactory, s3Suite, s3Test } from "./harness.ts";

s3Suite("objectstore+s3 conformance", () => {
  blobServiceConformance("objectstore+s3", s3ServiceFactory(blobServiceFromUrl, "store/blobs"));
  directoryServiceConformance(
    "objectstore+s3",
    s3ServiceFactory(directoryServiceFromUrl, "store/dirs"),
    { onlyRootsRetrievable: true },
  );
});

const te = new TextEncoder();

s3Test("objectstore+s3: objects live below the prefix, in the object-store layout", async (t) => {
  const blobs = await blobServiceFromUrl(t.url("tenant/a"));
  const dirs = await directoryServiceFromUrl(t.url("tenant/a"));
  try {
    const data = F.pseudoRandom(1024 * 1024, 5);
    const digest = await putBlob(blobs, data);
    const root = await putAll(dirs, [F.DIRECTORY_A]);
    const keys = await t.client.listKeys("");
    assert(keys.length > 2, `a multi-chunk blob, its index and a closure: ${keys}`);
    for (const k of keys) assert(k.startsWith("tenant/a/"), k);
    assert(keys.includes(`tenant/a/${closurePath(root)}`), "closure object");
    assert(keys.includes(`tenant/a/${blobIndexPath(digest)}`), "blob index");
    const chunks = await blobs.chunks(digest);
    assert(chunks && chunks.length > 1);
    for (const c of chunks) assert(keys.includes(`tenant/a/${chunkPath(c.digest)}`));
    // A fresh service on the same URL reads it all back.
    const again = await blobServiceFromUrl(t.url("tenant/a/"));
    try {
      assertEquals(await readBlob(again, digest), data);
    } finally {
      await again.close();
    }
    // Another prefix in the same bucket is another store.
    const other = await blobServiceFromUrl(t.url("tenant/b"));
    try {
      assertEquals(await other.has(digest), false);
    } finally {
      await other.close();
    }
  } finally {
    await blobs.close();
    await dirs.close();
  }
});

s3Test("objectstore+s3: get, size, list across pages, delete", async (t) => {
  const store = objectStoreFromUrl(t.url("p"));
  assert(store instanceof S3ObjectStore);
  assertEquals(await store.get("x/1"), undefined);
  assertEquals(await store.size("x/1"), undefined);
  for (const n of [3, 1, 5, 2, 4]) await store.put(`x/${n}`, te.encode("v".repeat(n)));
  await store.put("y/1", te.encode("other"));
  assertEquals(await store.size("x/3"), 3);
  assertEquals(await store.get("x/5"), te.encode("vvvvv"));
  assertEquals(await store.list("x/"), ["x/1", "x/2", "x/3", "x/4", "x/5"]);
  assertEquals((await store.list()).length, 6);
  // Two keys per page: the continuation tokens are followed to the end.
  assertEquals(await store.client.listKeys("p/x/", 2), [1, 2, 3, 4, 5].map((n) => `p/x/${n}`));
  await store.delete("x/3");
  await store.delete("x/3");
  assertEquals(await store.get("x/3"), undefined);
  assertEquals(await store.list("x/"), ["x/1", "x/2", "x/4", "x/5"]);
  await store.close();
});

s3Test("objectstore+s3: puts are conditional; an object of another size is replaced", async (t) => {
  const store = objectStoreFromUrl(t.url()) as S3ObjectStore;
  const data = te.encode("content-addressed");
  // The first conditional PUT stores, the second is refused (412) without rewriting.
  assertEquals(await store.client.putObject("k", data, true), true);
  assertEquals(await store.client.putObject("k", te.encode("something else!!!"), true), false);
  assertEquals(await store.get("k"), data);
  // Racing writers of the same object all succeed and leave one copy.
  await Promise.all(Array.from({ length: 8 }, () => store.put("race", data)));
  assertEquals(await store.get("race"), data);
  // A damaged object of another size is replaced by put, as the interface promises.
  await store.client.putObject("damaged", te.encode("short"));
  await store.put("damaged", data);
  assertEquals(await store.get("damaged"), data);
  await store.close();
});

s3Test("objectstore+s3: the blob service drives S3 with more chunks in flight", async (t) => {
  const service = await blobServiceFromUrl(t.url());
  assert(service instanceof ObjectStoreBlobService);
  const data = F.pseudoRandom(8 * 1024 * 1024, 11);
  // Counting the PUTs in flight at the server is not possible; count them at the store.
  const store = service.store as S3ObjectStore;
  let inflight = 0;
  let most = 0;
  const put = store.put.bind(store);
  store.put = async (path, bytes) => {
    most = Math.max(most, ++inflight);
    try {
      await put(path, bytes);
    } finally {
      inflight--;
    }
  };
  const digest = await putBlob(service, data, data.length);
  assertEquals(digest, blake3(data));
  assert(most > 8, `more than the local default of 8 chunk PUTs at once (saw ${most})`);
  assertEquals(await readBlob(service, digest), data);
  await service.close();
});

s3Test("objectstore+s3: building the service checks bucket and credentials", async (t) => {
  const missing = t.url().replace(t.bucket, `${t.bucket}-missing`);
  const err = await assertRejects(() => blobServiceFromUrl(missing), StorageError);
  assertEquals(err.message, `S3 bucket ${t.bucket}-missing does not exist at ${t.server.endpoint}`);
  await assertRejects(() => directoryServiceFromUrl(missing), StorageError, "does not exist");

  const wrong = s3Client(t.server, t.bucket, "not-the-secret");
  await assertRejects(() => wrong.headBucket(), StorageError, "refused the credentials");
  await assertRejects(() => wrong.getObject("x"), StorageError, "SignatureDoesNotMatch");

  const port = new URL(t.server.endpoint);
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const closedPort = (l.addr as Deno.NetAddr).port;
  l.close();
  const unreachable = t.url().replace(
    encodeURIComponent(port.origin),
    encodeURIComponent(`http://127.0.0.1:${closedPort}`),
  );
  const down = await assertRejects(
    () => checkObjectStore(objectStoreFromUrl(unreachable)),
    S3UnavailableError,
  );
  assert(down.message.includes("is unreachable"), down.message);
  assert(down.message.includes("Connection refused"), down.message);
});
