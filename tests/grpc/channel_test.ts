/**
 * `grpc+…` URL handling (docs/architecture.md#service-urls; the cases of
 * upstream's `channel_from_url` tests in tvix/castore/src/tonic.rs) and
 * channel sharing, against real servers on loopback.
 */
import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertThrows } from "../assert.ts";
import { StorageError } from "../../src/errors.ts";
import { channelFor, DEFAULT_TIMEOUT_MS, parseGrpcUrl } from "../../src/grpc/channel.ts";
import { GrpcBlobService } from "../../src/castore/blob/grpc.ts";
import { GrpcDirectoryService } from "../../src/castore/directory/grpc.ts";
import { GrpcPathInfoService } from "../../src/store/pathinfo/grpc.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { pathInfoServiceFromUrl } from "../../src/store/pathinfo/from_url.ts";
import * as F from "../fixtures.ts";
import { memoryServices, startServer } from "./client_harness.ts";

Deno.test("parseGrpcUrl: accepted URLs", () => {
  const cases: [string, string, boolean, boolean, number?][] = [
    ["grpc+unix:///path/to/somewhere", "unix:/path/to/somewhere", false, false],
    ["grpc+unix:///path/to/somewhere?wait-connect=0", "unix:/path/to/somewhere", false, false],
    ["grpc+unix:///path/to/somewhere?wait-connect=1", "unix:/path/to/somewhere", false, true],
    ["grpc+unix:relative/sock", "unix:relative/sock", false, false],
    ["grpc+unix:///tmp/with%20space", "unix:/tmp/with space", false, false],
    ["grpc+http://[::1]:12345", "[::1]:12345", false, false],
    ["grpc+http://localhost", "localhost:80", false, false],
    ["grpc+https://localhost", "localhost:443", true, false],
    ["grpc+https://example.com:8443", "example.com:8443", true, false],
    ["grpc+http://localhost?wait-connect=0", "localhost:80", false, false],
    ["grpc+http://localhost?wait-connect=yes", "localhost:80", false, false],
    ["grpc+http://127.0.0.1:8000?wait-connect=1", "127.0.0.1:8000", false, true],
    ["grpc+http://127.0.0.1:8000?timeout=2.5", "127.0.0.1:8000", false, false, 2500],
    ["grpc+unix:///s?wait-connect=1&timeout=60", "unix:/s", false, true, 60_000],
  ];
  for (const [url, target, tls, waitConnect, timeoutMs = DEFAULT_TIMEOUT_MS] of cases) {
    assertEquals(parseGrpcUrl(url), { target, tls, waitConnect, timeoutMs }, url);
  }
});

Deno.test("parseGrpcUrl: rejected URLs", () => {
  const cases: [string, string][] = [
    ["grpc+unix://host.example/path/to/somewhere", "host may not be set for unix domain sockets"],
    ["grpc+unix://", "path may not be empty"],
    ["grpc+http://localhost/some-path", "path may not be set"],
    ["grpc+http://[::1]:8000/", "path may not be set"],
    ["grpc+https://localhost/", "path may not be set"],
    ["grpc+http://", "host must be set"],
    ["grpc+http://user:pw@localhost", "credentials may not be set"],
    ["grpc+http://localhost:99999", "unable to parse url"],
    ["http://localhost", "unknown scheme: http"],
    ["not a url", "unable to parse url"],
    ["grpc+unix:///bad%ZZescape%E0", "unable to parse url"],
    ["grpc+http://localhost?timeout=0", "timeout must be a number of seconds"],
    ["grpc+http://localhost?timeout=soon", "timeout must be a number of seconds"],
    ["grpc+http://localhost?timeout=-3", "timeout must be a number of seconds"],
  ];
  for (const [url, message] of cases) {
    assertThrows(() => parseGrpcUrl(url), StorageError, message);
  }
});

Deno.test("lazy URLs construct without a server; wait-connect=1 fails", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sock = join(dir, "missing.sock");
    for (
      const url of [
        `grpc+unix://${sock}`,
        `grpc+unix://${sock}?wait-connect=0`,
        "grpc+http://[::1]:12345",
        "grpc+http://localhost",
        "grpc+https://localhost",
        "grpc+http://localhost?wait-connect=0",
      ]
    ) {
      const blob = await GrpcBlobService.fromUrl(url);
      await blob.close();
    }
    await assertRejects(
      () => GrpcBlobService.fromUrl(`grpc+unix://${sock}?wait-connect=1`),
      StorageError,
      "unable to connect",
    );
    await assertRejects(
      () => GrpcBlobService.fromUrl("grpc+http://nonexist.invalid?wait-connect=1"),
      StorageError,
      "unable to connect",
    );
    // A lazy client reports the unreachable server on its first call.
    const lazy = await GrpcBlobService.fromUrl(`grpc+unix://${sock}`);
    await assertRejects(() => lazy.has(F.BLOB_A_DIGEST), StorageError, "UNAVAILABLE");
    await lazy.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("from_url builds grpc backends for all three services (docs/architecture.md#service-urls)", async () => {
  const builders = [blobServiceFromUrl, directoryServiceFromUrl, pathInfoServiceFromUrl];
  const accepted = [
    "grpc+unix:///path/to/somewhere",
    "grpc+http://[::1]:12345",
    "grpc+http://localhost",
    "grpc+https://localhost",
  ];
  const rejected = [
    "grpc+unix://host.example/path/to/somewhere",
    "grpc+http://localhost/some-path",
    "grpc+http://[::1]:12345/",
  ];
  for (const build of builders) {
    for (const url of accepted) await (await build(url)).close();
    for (const url of rejected) await assertRejects(() => build(url), StorageError);
  }
});

Deno.test("unix socket ping-pong with wait-connect=1 (all three services)", async () => {
  const dir = await Deno.makeTempDir();
  const running = await startServer(memoryServices(), join(dir, "tvix.sock"));
  try {
    const url = `${running.url}?wait-connect=1`;
    const blob = await GrpcBlobService.fromUrl(url);
    const directory = await GrpcDirectoryService.fromUrl(url);
    const pathInfo = await GrpcPathInfoService.fromUrl(url);
    assertEquals(await blob.has(F.BLOB_A_DIGEST), false);
    assertEquals(await directory.get(directoryDigest(F.DIRECTORY_A)), undefined);
    assertEquals(await pathInfo.get(F.DUMMY_PATH_DIGEST), undefined);
    await blob.close();
    await directory.close();
    await pathInfo.close();
  } finally {
    await running.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("IPv6 loopback, as in the default grpc+http://[::1]:8000", async () => {
  const running = await startServer(memoryServices(), "[::1]:0");
  try {
    const port = running.address.slice(running.address.lastIndexOf(":") + 1);
    const blob = await GrpcBlobService.fromUrl(`grpc+http://[::1]:${port}?wait-connect=1`);
    assertEquals(await blob.has(F.BLOB_A_DIGEST), false);
    await blob.close();
  } finally {
    await running.stop();
  }
});

Deno.test("services on one endpoint share one channel until the last closes", async () => {
  const running = await startServer(memoryServices());
  try {
    const a = await channelFor(running.url);
    const b = await channelFor(`${running.url}?wait-connect=1`);
    assert(a.channel === b.channel, "same channel for the same endpoint");
    const blob = new GrpcBlobService(a);
    const directory = new GrpcDirectoryService(b);
    assertEquals(await blob.has(F.BLOB_A_DIGEST), false);
    await blob.close();
    await blob.close(); // releasing twice must not drop the other reference
    assertEquals(await directory.get(directoryDigest(F.DIRECTORY_A)), undefined);
    await directory.close();
    // With every lease released the channel is gone; a new lease opens a new one.
    const c = await channelFor(running.url);
    assert(c.channel !== a.channel, "a fresh channel after the last release");
    c.release();
  } finally {
    await running.stop();
  }
});
