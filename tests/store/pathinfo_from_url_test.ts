import { assert, assertEquals, assertRejects } from "../assert.ts";
import { StorageError } from "../../src/errors.ts";
import { pathInfoServiceFromUrl } from "../../src/store/pathinfo/from_url.ts";
import { MemoryPathInfoService } from "../../src/store/pathinfo/memory.ts";
import { SqlitePathInfoService } from "../../src/store/pathinfo/sqlite.ts";
import { symlinkPathInfo } from "./pathinfo_fixtures.ts";

Deno.test("path info service URLs: memory, sqlite and rejects", async () => {
  for (const url of ["memory://", "memory:", "sqlite://", "sqlite:"]) {
    const s = await pathInfoServiceFromUrl(url);
    assert(
      s instanceof (url.startsWith("memory") ? MemoryPathInfoService : SqlitePathInfoService),
      url,
    );
    await s.put(symlinkPathInfo());
    await s.close();
  }
  for (const url of ["memory://foo", "memory:///", "memory:///foo"]) {
    await assertRejects(() => pathInfoServiceFromUrl(url), StorageError, "invalid url");
  }
  await assertRejects(() => pathInfoServiceFromUrl("sqlite:///"), StorageError, "refusing");
  await assertRejects(
    () => pathInfoServiceFromUrl("sqlite://foo.example"),
    StorageError,
    "no host",
  );
  await assertRejects(
    () => pathInfoServiceFromUrl("http://foo.example/test"),
    StorageError,
    "unknown scheme: http",
  );
  await assertRejects(() => pathInfoServiceFromUrl("::"), StorageError, "unable to parse url");
});

Deno.test("path info service URLs: sqlite files", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    await assertRejects(
      () => pathInfoServiceFromUrl(`sqlite://foo.example${tmp}/db.sqlite`),
      StorageError,
      "no host",
    );
    const url = `sqlite://${tmp}/x/db.sqlite`;
    const s = await pathInfoServiceFromUrl(url);
    await s.put(symlinkPathInfo());
    await s.close();
    const again = await pathInfoServiceFromUrl(url);
    try {
      assertEquals(await again.get(new Uint8Array(20)), symlinkPathInfo());
    } finally {
      await again.close();
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
