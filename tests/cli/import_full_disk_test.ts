/**
 * Importing onto a full disk (a small tmpfs, root only), into the embedded
 * store directly and through a daemon: a clear error naming the cause, a
 * non-zero exit, no PathInfo, a daemon that keeps serving, and a store
 * that works once space is back.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../assert.ts";
import { localStoreArgs, remoteStoreArgs, startServer, tvixStore } from "./helpers.ts";
import { constructServices, embeddedAddrs } from "../../src/store/services.ts";
import { nixOracle } from "../store/tree_gen.ts";
import { pseudoRandom } from "../fixtures.ts";

const isRoot = Deno.uid() === 0;

async function run(cmd: string, ...args: string[]) {
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  if (out.code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** Three incompressible 6 MiB files and a few small ones: ~18 MiB stored. */
async function writeTree(root: string): Promise<void> {
  await Deno.mkdir(join(root, "small"), { recursive: true });
  for (let i = 0; i < 3; i++) {
    await Deno.writeFile(join(root, `big${i}`), pseudoRandom(6 << 20, 40 + i));
  }
  for (let i = 0; i < 50; i++) {
    await Deno.writeFile(join(root, "small", `f${i}`), pseudoRandom(3000 + i, i + 1));
  }
}

async function pathInfoCount(store: string): Promise<number> {
  const services = await constructServices(embeddedAddrs(store));
  try {
    let n = 0;
    for await (const _ of services.pathInfo.list()) n++;
    return n;
  } finally {
    await services.close();
  }
}

/** A 10 MiB tmpfs for the test's store; unmounted afterwards. */
async function withSmallDisk(fn: (mnt: string, work: string) => Promise<void>): Promise<void> {
  const work = await Deno.makeTempDir({ prefix: "tvix-full-import-" });
  const mnt = join(work, "disk");
  await Deno.mkdir(mnt);
  await run("mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", mnt);
  try {
    await fn(mnt, work);
  } finally {
    await run("umount", "-l", mnt);
    await Deno.remove(work, { recursive: true });
  }
}

Deno.test({
  name: "import onto a full disk: one clear error, no PathInfo, works once space is back",
  ignore: !isRoot,
  async fn() {
    await withSmallDisk(async (mnt, work) => {
      const tree = join(work, "tree");
      await writeTree(tree);
      const store = join(mnt, "store");
      const r = await tvixStore(["import", ...localStoreArgs(store), tree]);
      assert(r.code !== 0, "the import must fail");
      assertEquals(r.stdout, "");
      assertMatch(r.stderr, /no space left on device|ENOSPC/i);
      assertEquals(await pathInfoCount(store), 0);

      await run("mount", "-o", "remount,size=64m", mnt);
      const again = await tvixStore(["import", ...localStoreArgs(store), tree]);
      assertEquals(again.code, 0, again.stderr);
      assertEquals(again.stdout.trim(), (await nixOracle(tree, join(work, "nix"))).storePath);
      assertEquals(await pathInfoCount(store), 1);
    });
  },
});

Deno.test({
  name: "import through a daemon on a full disk: the daemon keeps serving and recovers",
  ignore: !isRoot,
  async fn() {
    await withSmallDisk(async (mnt, work) => {
      const tree = join(work, "tree");
      await writeTree(tree);
      const home = join(mnt, "home");
      const daemon = await startServer(["daemon", "--listen-address", "127.0.0.1:0"], {
        name: "daemon",
        env: { TVIX_STORE_HOME: home },
      });
      try {
        const url = `grpc+http://${daemon.address}`;
        const remote = remoteStoreArgs(url);
        const r = await tvixStore(["import", "--no-stat-cache", ...remote, tree]);
        assert(r.code !== 0, "the import must fail");
        assertMatch(r.stderr, /no space left on device|ENOSPC/i);
        assertEquals(daemon.exitStatus(), undefined, "the daemon is still running");

        await run("mount", "-o", "remount,size=64m", mnt);
        const again = await tvixStore(["import", "--no-stat-cache", ...remote, tree]);
        assertEquals(again.code, 0, again.stderr);
        assertEquals(again.stdout.trim(), (await nixOracle(tree, join(work, "nix"))).storePath);
      } finally {
        const { status } = await daemon.stop();
        assertEquals(status.code, 0, daemon.log());
      }
      assertEquals(await pathInfoCount(home), 1);
    });
  },
});
