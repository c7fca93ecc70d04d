import { assert, assertEquals, assertRejects, assertThrows } from "../assert.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { StorageError } from "../../src/errors.ts";
import { FileObjectStore } from "../../src/castore/objectstore/file.ts";
import { objectStoreFromUrl } from "../../src/castore/objectstore/from_url.ts";
import { MemoryObjectStore } from "../../src/castore/objectstore/memory.ts";
import type { ObjectStore } from "../../src/castore/objectstore/store.ts";
import { b } from "../fixtures.ts";

async function storeContract(store: ObjectStore) {
  assertEquals(await store.get("a/b/c"), undefined);
  assertEquals(await store.size("a/b/c"), undefined);
  await store.put("a/b/c", b("one"));
  assertEquals(await store.get("a/b/c"), b("one"));
  assertEquals(await store.size("a/b/c"), 3);
  assertEquals(await store.size("a/b"), undefined, "a directory is not an object");
  await store.put("a/b/c", b("two"));
  assertEquals(await store.get("a/b/c"), b("two"));
  await store.put("a/x", new Uint8Array(0));
  assertEquals(await store.get("a/x"), new Uint8Array(0));
  assertEquals(await store.size("a/x"), 0, "an empty object exists");
  assertEquals(await store.list(), ["a/b/c", "a/x"]);
  assertEquals(await store.list("a/b/"), ["a/b/c"]);
  await store.delete("a/b/c");
  await store.delete("a/b/c");
  assertEquals(await store.get("a/b/c"), undefined);
  for (const bad of ["", "/abs", "a//b", "../x", "a/../../x", "a/./b", "a\0b", "a/"]) {
    await assertRejects(async () => await store.get(bad), TypeError);
    await assertRejects(async () => await store.put(bad, b("x")), TypeError);
  }
}

Deno.test("memory object store: get/size/put/list/delete", async () => {
  const store = new MemoryObjectStore();
  await storeContract(store);
  // Stored data is a copy: mutating the caller's buffer does not change it.
  const data = b("abc");
  await store.put("k", data);
  data[0] = 0;
  assertEquals(await store.get("k"), b("abc"));
});

Deno.test("file object store: get/size/put/list/delete, atomic writes leave no temp files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "objectstore-file-" });
  try {
    const store = new FileObjectStore(`${dir}/base`);
    await storeContract(store);
    await store.put("x/y/z", b("payload"));
    assertEquals(await Deno.readFile(`${dir}/base/x/y/z`), b("payload"));
    const names: string[] = [];
    for await (const e of Deno.readDir(`${dir}/base/x/y`)) names.push(e.name);
    assertEquals(names, ["z"]);

    // A temp file left by a crashed writer is neither an object nor listed.
    await Deno.writeFile(`${dir}/base/x/y/.tmp-crashed`, b("half"));
    assertEquals(await store.list("x/"), ["x/y/z"]);
    assertEquals(await store.get("x/y/z"), b("payload"));

    // Writing below an existing *file* fails cleanly with a StorageError.
    await assertRejects(() => store.put("x/y/z/w", b("no")), StorageError);
    assertEquals(await store.size("x/y/z/w"), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("file object store: a directory removed behind its back is made again; large objects are whole", async () => {
  const dir = await Deno.makeTempDir({ prefix: "objectstore-file-" });
  try {
    const store = new FileObjectStore(`${dir}/base`);
    await store.put("s/1/a", b("first"));
    await Deno.remove(`${dir}/base/s`, { recursive: true });
    await store.put("s/1/b", b("second"));
    assertEquals(await store.list(), ["s/1/b"]);
    const large = new Uint8Array(3 * 1024 * 1024 + 17).map((_, i) => i * 7);
    await store.put("s/2/large", large);
    assertEquals(await store.size("s/2/large"), large.length);
    assertEquals(await store.get("s/2/large"), large);
    const names: string[] = [];
    for await (const e of Deno.readDir(`${dir}/base/s/2`)) names.push(e.name);
    assertEquals(names, ["large"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("object store URLs: file and memory parse; others are clear errors", () => {
  assert(objectStoreFromUrl("objectstore+memory://") instanceof MemoryObjectStore);
  assert(objectStoreFromUrl("objectstore+memory:///") instanceof MemoryObjectStore);
  const file = objectStoreFromUrl(new URL("objectstore+file:///var/lib/tvix%20store/blobs/"));
  assert(file instanceof FileObjectStore);
  assertEquals(file.description, "file:///var/lib/tvix store/blobs");
  for (
    const scheme of [
      "s3a://bucket/path",
      "gs://bucket/p",
      "az://c/p",
      "azure://c/p",
      "https://example.com/x",
    ]
  ) {
    assertThrows(
      () => objectStoreFromUrl(`objectstore+${scheme}`),
      StorageError,
      "is not supported by this build",
    );
  }
  assertThrows(() => objectStoreFromUrl("objectstore+file://somehost/x"), StorageError, "host");
  assertThrows(() => objectStoreFromUrl("objectstore+memory:///path"), StorageError);
  assertThrows(
    () => objectStoreFromUrl("objectstore+file:///x?opt=1"),
    StorageError,
    "not supported",
  );
  assertThrows(() => objectStoreFromUrl("objectstore+ftp://x/y"), StorageError, "unknown");
});

Deno.test("service URLs route objectstore+ to the object-store backends", async () => {
  const blob = await blobServiceFromUrl("objectstore+memory://");
  assertEquals(blob.constructor.name, "ObjectStoreBlobService");
  await blob.close();
  const dirs = await directoryServiceFromUrl("objectstore+memory:///");
  assertEquals(dirs.constructor.name, "ObjectStoreDirectoryService");
  await dirs.close();
  await assertRejects(
    () => blobServiceFromUrl("objectstore+gs://bucket/x"),
    StorageError,
    "not supported",
  );
});
