/**
 * Durability of an import into the embedded store's layout (pack blobs,
 * SQLite metadata) and into objectstore+file, with real processes:
 * - data is flushed in one group per commit, not one fsync per chunk
 *   (counted with strace);
 * - an import killed with SIGKILL at any moment leaves no PathInfo whose
 *   closure is incomplete or wrong, and a re-import gives the store path
 *   `nix-store --add` gives.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { countSyscalls, traceSyscalls, wholeCalls } from "../strace.ts";
import { childEnv, localStoreArgs, MAIN, startServer, tvixStore } from "./helpers.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { pathInfoServiceFromUrl } from "../../src/store/pathinfo/from_url.ts";
import { type Directory, directoryDigest } from "../../src/castore/directory.ts";
import type { PathInfo } from "../../src/proto/tvix/store/protos/pathinfo.ts";
import { InvalidRequestError } from "../../src/errors.ts";
import { constructServices, embeddedAddrs } from "../../src/store/services.ts";
import { LocalNarCalculationService } from "../../src/nar/calculation.ts";
import { toHex } from "../../src/castore/digest.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { nixOracle } from "../store/tree_gen.ts";
import { pseudoRandom } from "../fixtures.ts";

/** `files` small files in 20 directories, plus two files of several chunks. */
async function writeTree(root: string, files: number): Promise<void> {
  for (let i = 0; i < files; i++) {
    const dir = join(root, `d${i % 20}`);
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeFile(join(dir, `f${i}`), pseudoRandom(200 + (i * 37) % 3000, i + 1));
  }
  await Deno.writeFile(join(root, "big1"), pseudoRandom(3 << 20, 99));
  await Deno.writeFile(join(root, "big2"), pseudoRandom(5 << 20, 98));
}

/**
 * Every PathInfo in the store at `dir` renders, from the stored blobs and
 * directories (all verified on read), to its own NAR size and hash.
 */
async function checkEveryPath(dir: string): Promise<number> {
  const services = await constructServices(embeddedAddrs(dir));
  try {
    const nar = new LocalNarCalculationService(services.blob, services.directory);
    let n = 0;
    for await (const info of services.pathInfo.list()) {
      n++;
      assert(info.node?.node && info.narinfo, "a PathInfo without node or narinfo");
      const got = await nar.calculateNar(info.node.node);
      assertEquals(
        toHex(got.narSha256),
        toHex(info.narinfo.narSha256),
        "NAR hash of a stored path",
      );
      assertEquals(got.narSize, info.narinfo.narSize);
    }
    return n;
  } finally {
    await services.close();
  }
}

Deno.test("import: data is flushed per commit, not one fsync per chunk", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-durable-" });
  try {
    const tree = join(tmp, "tree");
    await writeTree(tree, 400);
    const run = async (storeArgs: string[]) => {
      const c = await countSyscalls(
        [Deno.execPath(), "run", "-A", MAIN, "import", ...storeArgs, tree],
        ["fsync", "fdatasync", "syncfs"],
        { env: childEnv(), clearEnv: true },
      );
      assertEquals(c.code, 0, c.stderr);
      return c;
    };
    await t.step("pack store (the embedded default): fdatasync per pack", async () => {
      const store = join(tmp, "store");
      const c = await run(localStoreArgs(store));
      const syncs = c.calls("fsync") + c.calls("fdatasync");
      assert(c.calls("fdatasync") >= 1, `the pack was never flushed:\n${c.table}`);
      // Over 400 blobs were written; the pack's and SQLite's few syncs remain.
      assert(syncs < 40, `${syncs} fsync/fdatasync calls:\n${c.table}`);
      assertEquals(await checkEveryPath(store), 1);
    });
    await t.step(
      "pack store: a new pack's directory entry is flushed before the index names it",
      async () => {
        const store = join(tmp, "store-dir");
        const traced = await traceSyscalls(
          [Deno.execPath(), "run", "-A", MAIN, "import", ...localStoreArgs(store), tree],
          ["fsync", "fdatasync"],
          { env: childEnv(), clearEnv: true, paths: true },
        );
        assertEquals(traced.code, 0, traced.stderr);
        const lines = wholeCalls(traced.output);
        const packs = join(store, "packs");
        // The first of each after `from` (SQLite flushes the directory too,
        // when it creates its files, before any pack exists).
        const next = (from: number, test: (l: string) => boolean) =>
          lines.findIndex((l, i) => i > from && test(l));
        const packSync = next(-1, (l) => /f(data)?sync\(\d+<[^>]*\/packs\/\d+\.pack>/.test(l));
        assert(packSync >= 0, `the pack was never flushed:\n${traced.output}`);
        const dirSync = next(packSync, (l) => l.includes(`fsync(`) && l.includes(`<${packs}>`));
        const indexSync = next(
          packSync,
          (l) => /f(data)?sync\(\d+<[^>]*\/packs\/index\.sqlite-wal>/.test(l),
        );
        assert(dirSync > packSync, `directory not flushed after the pack:\n${traced.output}`);
        assert(indexSync > dirSync, `index committed before the directory:\n${traced.output}`);
      },
    );
    await t.step("objectstore+file: one syncfs per commit", async () => {
      const store = join(tmp, "objectstore");
      const db = `sqlite://${join(store, "store.sqlite")}`;
      const c = await run([
        "--blob-service-addr",
        `objectstore+file://${join(store, "blobs")}`,
        "--directory-service-addr",
        db,
        "--path-info-service-addr",
        db,
      ]);
      const perFile = c.calls("fsync") + c.calls("fdatasync");
      assert(c.calls("syncfs") >= 1, `no syncfs:\n${c.table}`);
      assert(perFile < 40, `${perFile} fsync/fdatasync calls:\n${c.table}`);
      // The store path's directory has blobs/: the embedded layout finds it.
      assertEquals(await checkEveryPath(store), 1);
    });
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("import: SIGKILL at any moment leaves only complete paths; a re-import matches nix-store", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-kill-" });
  try {
    const tree = join(tmp, "tree");
    await writeTree(tree, 1500);
    const store = join(tmp, "store");
    for (const delayMs of [100, 300, 500, 800, 1200, 1700]) {
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", MAIN, "import", ...localStoreArgs(store), tree],
        env: childEnv(),
        clearEnv: true,
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      await new Promise((r) => setTimeout(r, delayMs));
      try {
        child.kill("SIGKILL");
      } catch { /* it finished first */ }
      await child.status;
      await checkEveryPath(store);
    }
    const r = await tvixStore(["import", ...localStoreArgs(store), tree]);
    assertEquals(r.code, 0, r.stderr);
    const want = await nixOracle(tree, join(tmp, "nix"));
    assertEquals(r.stdout.trim(), want.storePath);
    StorePath.parseAbsolute(r.stdout.trim());
    assertEquals(await checkEveryPath(store), 1);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("daemon killed after acknowledging uploads: the restarted daemon refuses directories and PathInfos naming the lost blobs", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-daemon-kill-" });
  const sock = join(work, "d.sock");
  const url = `grpc+unix://${sock}`;
  const daemonArgs = ["daemon", "-l", sock, ...localStoreArgs(join(work, "store"))];
  const small = pseudoRandom(3000, 7), large = pseudoRandom(3 << 20, 8);
  const upload = async (data: Uint8Array) => {
    const blob = await blobServiceFromUrl(url);
    try {
      const writer = blob.openWrite();
      await writer.write(data);
      return await writer.close();
    } finally {
      await blob.close();
    }
  };
  const fileNode = (name: string, digest: Uint8Array, size: number) => ({
    name: new TextEncoder().encode(name),
    digest,
    size: BigInt(size),
    executable: false,
  });
  let daemon = await startServer(daemonArgs, { name: "daemon" });
  try {
    // Acknowledged, not yet committed: no directory or PathInfo came since.
    const digests = [await upload(small), await upload(large)];
    await daemon.stop("SIGKILL");
    daemon = await startServer(daemonArgs, { name: "daemon" });
    const directory = await directoryServiceFromUrl(url);
    const pathInfo = await pathInfoServiceFromUrl(url);
    try {
      const dir: Directory = {
        directories: [],
        files: [fileNode("a", digests[0], small.length), fileNode("b", digests[1], large.length)],
        symlinks: [],
      };
      const refused = await directory.put(dir).then(() => undefined, (err) => err);
      assert(refused instanceof InvalidRequestError, `directory put gave ${refused}`);
      assert(/is not in the store/.test(refused.message), refused.message);
      // A PathInfo whose root is one of those files, likewise.
      const storePath = StorePath.fromParts(new Uint8Array(20).fill(1), "lost");
      const info: PathInfo = {
        node: {
          node: { $case: "file", value: fileNode(storePath.basename(), digests[0], small.length) },
        },
        references: [],
        narinfo: {
          narSize: 0n,
          narSha256: new Uint8Array(32),
          signatures: [],
          referenceNames: [],
          deriver: undefined,
          ca: undefined,
          upload: undefined,
        },
      };
      const refusedInfo = await pathInfo.put(info).then(() => undefined, (err) => err);
      assert(refusedInfo instanceof InvalidRequestError, `PathInfo put gave ${refusedInfo}`);
      assertEquals(await pathInfo.get(storePath.digest), undefined);
      // Uploaded again, they are taken.
      assertEquals(await upload(small), digests[0]);
      assertEquals(await upload(large), digests[1]);
      assertEquals(await directory.put(dir), directoryDigest(dir));
      await pathInfo.put(info);
      assert(await pathInfo.get(storePath.digest));
    } finally {
      await directory.close();
      await pathInfo.close();
    }
  } finally {
    await daemon.stop();
    await Deno.remove(work, { recursive: true });
  }
});
