import { createHash } from "node:crypto";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { StorageError } from "../../src/errors.ts";
import { makeNode } from "../../src/castore/node.ts";
import { constructServices, embeddedAddrs } from "../../src/store/services.ts";
import { BlobsFirstDirectoryService } from "../../src/castore/directory/blobs_first.ts";
import { ReferencesFirstPathInfoService } from "../../src/store/pathinfo/references_first.ts";
import { LocalNarCalculationService } from "../../src/nar/calculation.ts";
import { GrpcPathInfoService } from "../../src/store/pathinfo/grpc.ts";
import { memoryServices, startServer } from "../grpc/client_harness.ts";
import { putBlob } from "../conformance/blob_suite.ts";
import * as F from "../fixtures.ts";
import { symlinkPathInfo } from "./pathinfo_fixtures.ts";

const sha256 = (data: Uint8Array) => new Uint8Array(createHash("sha256").update(data).digest());

Deno.test("memory services calculate NARs locally", async () => {
  const services = await constructServices({
    blobServiceAddr: "memory://",
    directoryServiceAddr: "memory://",
    pathInfoServiceAddr: "memory://",
  });
  try {
    assert(services.blob instanceof MemoryBlobService, "memory blob service");
    assert(services.narCalculation instanceof LocalNarCalculationService, "local NAR calculation");
    await putBlob(services.blob, F.HELLOWORLD_BLOB_CONTENTS);
    const file = makeNode.file(F.b("x"), F.HELLOWORLD_BLOB_DIGEST, 12n);
    assertEquals(await services.narCalculation.calculateNar(file), {
      narSize: BigInt(F.NAR_CONTENTS_HELLOWORLD.length),
      narSha256: sha256(F.NAR_CONTENTS_HELLOWORLD),
    });
  } finally {
    await services.close();
    await services.close();
  }
});

Deno.test("the embedded layout: packs for new stores, object-store blobs for old ones", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    assert(embeddedAddrs(`${tmp}/new`).blobServiceAddr.startsWith("pack:///"));
    // A store an earlier release created: blobs/ holds its chunk objects.
    await Deno.mkdir(`${tmp}/old/blobs`, { recursive: true });
    const old = embeddedAddrs(`${tmp}/old`);
    assertEquals(old.blobServiceAddr, `objectstore+file://${tmp}/old/blobs`);
    const services = await constructServices(old);
    try {
      const w = services.blob.openWrite();
      await w.write(F.HELLOWORLD_BLOB_CONTENTS);
      assertEquals(await w.close(), F.HELLOWORLD_BLOB_DIGEST);
    } finally {
      await services.close();
    }
    assert((await Deno.stat(`${tmp}/old/blobs/chunks`)).isDirectory, "written where it was");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("the embedded layout keeps directories and path infos in one sqlite file", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const addrs = embeddedAddrs(`${tmp}/data`);
    const services = await constructServices(addrs);
    try {
      // Both in SQLite, behind the commit points of the group-committed blob store.
      assert(services.directory instanceof BlobsFirstDirectoryService, "blobs before directories");
      assert(
        services.pathInfo instanceof ReferencesFirstPathInfoService,
        "closure before PathInfo",
      );
      await services.directory.put(F.DIRECTORY_A);
      await services.pathInfo.put(symlinkPathInfo());
    } finally {
      await services.close();
    }
    assertEquals((await Deno.stat(`${tmp}/data/store.sqlite`)).isFile, true);
    const again = await constructServices(addrs);
    try {
      assertEquals(await again.directory.get(F.EMPTY_BLOB_DIGEST), F.DIRECTORY_A);
      assertEquals(await again.pathInfo.get(new Uint8Array(20)), symlinkPathInfo());
    } finally {
      await again.close();
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("a bad address fails construction and closes what was built", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    await assertRejects(
      () =>
        constructServices({
          blobServiceAddr: "memory://",
          directoryServiceAddr: `sqlite://${tmp}/db.sqlite`,
          pathInfoServiceAddr: "bogus://",
        }),
      StorageError,
      "unknown scheme: bogus",
    );
    // The same database file opens normally afterwards.
    const services = await constructServices({
      blobServiceAddr: "memory:",
      directoryServiceAddr: `sqlite://${tmp}/db.sqlite`,
      pathInfoServiceAddr: `sqlite://${tmp}/db.sqlite`,
    });
    await services.close();
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("grpc services calculate NARs on the daemon", async () => {
  const server = await startServer(memoryServices());
  try {
    const services = await constructServices({
      blobServiceAddr: server.url,
      directoryServiceAddr: server.url,
      pathInfoServiceAddr: server.url,
    });
    try {
      assert(
        services.narCalculation instanceof GrpcPathInfoService &&
          services.narCalculation === services.pathInfo,
        "NAR calculation by the daemon",
      );
      await putBlob(services.blob, F.HELLOWORLD_BLOB_CONTENTS);
      const file = makeNode.file(F.b("x"), F.HELLOWORLD_BLOB_DIGEST, 12n);
      assertEquals(await services.narCalculation.calculateNar(file), {
        narSize: BigInt(F.NAR_CONTENTS_HELLOWORLD.length),
        narSha256: sha256(F.NAR_CONTENTS_HELLOWORLD),
      });
      await services.pathInfo.put(symlinkPathInfo());
      assertEquals(await services.pathInfo.get(new Uint8Array(20)), symlinkPathInfo());
    } finally {
      await services.close();
    }
  } finally {
    await server.stop();
  }
});
