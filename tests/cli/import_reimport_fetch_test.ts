/**
 * An unchanged re-import through a `grpc+http://` daemon asks its one
 * question through `fetch` and never loads grpc-js; when the daemon does
 * not hold the path after all, the import falls back to importing it.
 * Real daemons on loopback TCP, real `tvix-store import` processes, and
 * strace to see which modules a process opened.
 */
import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { childEnv, localStoreArgs, MAIN, remoteStoreArgs, startServer } from "./helpers.ts";
import { fetchOrigin, getPathInfoOverFetch } from "../../src/store/pathinfo/fetch_get.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { StorageError } from "../../src/errors.ts";
import { RACY_MS } from "../../src/store/stat_cache.ts";
import { traceSyscalls } from "../strace.ts";

/** Runs `tvix-store import ARGS…` under strace; its output and whether it opened grpc-js's code. */
async function importTraced(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string; loadedGrpcJs: boolean }> {
  const traced = await traceSyscalls(
    [Deno.execPath(), "run", "-A", MAIN, "import", ...args],
    ["openat"],
    { env: childEnv(), clearEnv: true },
  );
  // The package's own files, not the registry metadata Deno reads at start.
  return { ...traced, loadedGrpcJs: /@grpc\/grpc-js\/\d/.test(traced.output) };
}

async function writeTree(dir: string): Promise<void> {
  await Deno.mkdir(join(dir, "sub"), { recursive: true });
  for (let i = 0; i < 20; i++) {
    await Deno.writeTextFile(join(dir, i % 2 ? "sub" : "", `f${i}`), `file ${i}\n`.repeat(i + 1));
  }
}

Deno.test("fetchOrigin takes plain grpc+http addresses only", () => {
  assertEquals(fetchOrigin("grpc+http://127.0.0.1:8000"), "http://127.0.0.1:8000");
  assertEquals(fetchOrigin("grpc+http://[::1]:8000"), "http://[::1]:8000");
  assertEquals(fetchOrigin("grpc+http://localhost"), "http://localhost:80");
  assertEquals(fetchOrigin("grpc+http://127.0.0.1:8000/"), "http://127.0.0.1:8000");
  for (
    const other of [
      "grpc+https://127.0.0.1:8000",
      "grpc+unix:///run/tvix.sock",
      "grpc+http://127.0.0.1:8000?wait-connect=1",
      "grpc+http://user@127.0.0.1:8000",
      "grpc+http://127.0.0.1:8000/prefix",
      "sqlite:///tmp/x.sqlite",
      "not a url",
    ]
  ) {
    assertEquals(fetchOrigin(other), undefined, other);
  }
});

Deno.test("an unchanged re-import through a grpc+http daemon asks through fetch, without grpc-js", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "reimport-fetch-" });
  const tree = join(tmp, "tree");
  await writeTree(tree);
  // Files changed within the racy window of an import are not recorded.
  await new Promise((r) => setTimeout(r, RACY_MS + 300));
  let daemon = await startServer(
    ["daemon", "--listen-address", "127.0.0.1:0", ...localStoreArgs(join(tmp, "a"))],
    { name: "daemon" },
  );
  const address = daemon.address;
  const url = `grpc+http://${address}`;
  const origin = fetchOrigin(url)!;
  try {
    // The first import reads the tree, through the gRPC clients.
    const first = await importTraced([...remoteStoreArgs(url), tree]);
    assertEquals(first.code, 0, first.stderr);
    assert(first.loadedGrpcJs, "the first import did not load grpc-js");
    const storePath = first.stdout.trim();
    const digest = StorePath.parseAbsolute(storePath).digest;

    // The same question through fetch: the stored PathInfo, or nothing.
    const info = await getPathInfoOverFetch(origin, digest);
    assertEquals(info?.narinfo?.narSize !== undefined, true);
    assertEquals(await getPathInfoOverFetch(origin, new Uint8Array(20)), undefined);
    await assertRejects(() => getPathInfoOverFetch(origin, new Uint8Array(5)), StorageError);

    // Unchanged: one question through fetch, no gRPC client loaded.
    const again = await importTraced([...remoteStoreArgs(url), tree]);
    assertEquals(again.code, 0, again.stderr);
    assertEquals(again.stdout.trim(), storePath);
    assertEquals(again.loadedGrpcJs, false);

    // A daemon on the same address with an empty store: the cache still
    // says unchanged, the daemon says NOT_FOUND, and the import imports.
    await daemon.stop();
    daemon = await startServer(
      ["daemon", "--listen-address", address, ...localStoreArgs(join(tmp, "b"))],
      { name: "second daemon" },
    );
    assertEquals(await getPathInfoOverFetch(origin, digest), undefined);
    const refill = await importTraced([...remoteStoreArgs(url), tree]);
    assertEquals(refill.code, 0, refill.stderr);
    assertEquals(refill.stdout.trim(), storePath);
    assert(refill.loadedGrpcJs, "the fallback did not go through the gRPC clients");
    assert((await getPathInfoOverFetch(origin, digest))?.node?.node, "the fallback stored nothing");
  } finally {
    await daemon.stop();
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("asking through fetch fails with a StorageError when nothing listens", async () => {
  // A port that was just free: bind, note it, close.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  await assertRejects(
    () => getPathInfoOverFetch(`http://127.0.0.1:${port}`, new Uint8Array(20)),
    StorageError,
  );
});
