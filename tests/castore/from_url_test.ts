import { assert, assertEquals, assertRejects } from "../assert.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import { SqliteDirectoryService } from "../../src/castore/directory/sqlite.ts";
import { StorageError } from "../../src/errors.ts";
import * as F from "../fixtures.ts";

Deno.test("blob service URLs: memory and rejects", async () => {
  for (const url of ["memory://", "memory:"]) {
    const s = await blobServiceFromUrl(url);
    assert(s instanceof MemoryBlobService, url);
    await s.close();
  }
  for (const url of ["memory://foo", "memory:///", "memory:///foo"]) {
    await assertRejects(() => blobServiceFromUrl(url), StorageError, "invalid url");
  }
  await assertRejects(
    () => blobServiceFromUrl("http://foo.example/test"),
    StorageError,
    "unknown scheme: http",
  );
  // No SQLite blob backend (as upstream had no sled one).
  await assertRejects(
    () => blobServiceFromUrl("sqlite://"),
    StorageError,
    "unknown scheme: sqlite",
  );
  await assertRejects(() => blobServiceFromUrl("not a url"), StorageError, "unable to parse url");
});

Deno.test("directory service URLs: memory, sqlite and rejects", async () => {
  for (const url of ["memory://", "memory:", "sqlite://", "sqlite:"]) {
    const s = await directoryServiceFromUrl(url);
    assert(
      s instanceof (url.startsWith("memory") ? MemoryDirectoryService : SqliteDirectoryService),
      url,
    );
    await s.put(F.DIRECTORY_A);
    await s.close();
  }
  for (const url of ["memory://foo", "memory:///", "memory:///foo"]) {
    await assertRejects(() => directoryServiceFromUrl(url), StorageError, "invalid url");
  }
  await assertRejects(() => directoryServiceFromUrl("sqlite:///"), StorageError, "refusing");
  await assertRejects(
    () => directoryServiceFromUrl("sqlite://foo.example"),
    StorageError,
    "no host",
  );
  await assertRejects(
    () => directoryServiceFromUrl("http://foo.example/test"),
    StorageError,
    "unknown scheme: http",
  );
  await assertRejects(
    () => directoryServiceFromUrl("sled://"),
    StorageError,
    "unknown scheme: sled",
  );
});

Deno.test("directory service URLs: sqlite files, created with their parents", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    await assertRejects(
      () => directoryServiceFromUrl(`sqlite://foo.example${tmp}/db.sqlite`),
      StorageError,
      "no host",
    );
    // A directory cannot be opened as a database.
    await assertRejects(() => directoryServiceFromUrl(`sqlite://${tmp}`), StorageError, "sqlite");
    for (const rel of ["db.sqlite", "new dir/nested/db.sqlite"]) {
      const file = `${tmp}/${rel}`;
      const s = await directoryServiceFromUrl(`sqlite://${encodeURI(file)}`);
      try {
        assertEquals((await Deno.stat(file)).isFile, true);
        await s.put(F.DIRECTORY_A);
      } finally {
        await s.close();
      }
      const again = await directoryServiceFromUrl(`sqlite://${encodeURI(file)}`);
      try {
        assertEquals(await again.get(F.EMPTY_BLOB_DIGEST), F.DIRECTORY_A);
      } finally {
        await again.close();
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
