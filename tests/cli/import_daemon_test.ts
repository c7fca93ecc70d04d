/**
 * `tvix-store import` against a real `tvix-store daemon` on a Unix socket:
 * the printed paths are `nix-store --add`'s, and the daemon's CalculateNAR
 * agrees with `nix-store --dump`.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { nixOracle, writeEdgeCaseTree } from "../store/tree_gen.ts";
import { localStoreArgs, startServer, tvixStore } from "./helpers.ts";
import { serviceAddrArgs } from "../../src/cli/common.ts";
import { constructServices } from "../../src/store/services.ts";
import { StorePath } from "../../src/store/store_path.ts";

/** Starts a daemon on a Unix socket in `dir`, storing under `dir`, and waits until it listens. */
async function startDaemon(dir: string): Promise<{ url: string; stop(): Promise<void> }> {
  const sock = join(dir, "sock");
  const daemon = await startServer(["daemon", "-l", sock, ...localStoreArgs(dir)], {
    name: "daemon",
  });
  return {
    url: `grpc+unix://${sock}`,
    stop: async () => {
      await daemon.stop();
    },
  };
}

Deno.test("import through a daemon matches nix-store; the daemon's CalculateNAR agrees", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "h3-cli-daemon-" });
  const daemon = await startDaemon(tmp);
  try {
    const tree = join(tmp, "tree");
    await writeEdgeCaseTree(tree);
    const paths = [tree, join(tree, "exec.sh"), join(tree, "link-absolute")];
    const u = daemon.url;
    const addrs = { blobServiceAddr: u, directoryServiceAddr: u, pathInfoServiceAddr: u };
    const r = await tvixStore(["import", ...serviceAddrArgs(addrs), ...paths]);
    assertEquals(r.code, 0, r.stderr);
    const expected = [];
    for (const p of paths) expected.push(await nixOracle(p, join(tmp, "nix")));
    assertEquals(r.stdout, expected.map((e) => e.storePath + "\n").join(""));

    const services = await constructServices(addrs);
    try {
      for (const e of expected) {
        const info = await services.pathInfo.get(StorePath.parseAbsolute(e.storePath).digest);
        assert(info?.node?.node && info.narinfo, `missing ${e.storePath}`);
        assertEquals(info.narinfo.narSha256, e.narSha256);
        assertEquals(await services.narCalculation.calculateNar(info.node.node), {
          narSize: BigInt(e.nar.length),
          narSha256: e.narSha256,
        });
      }
    } finally {
      await services.close();
    }
  } finally {
    await daemon.stop();
    await Deno.remove(tmp, { recursive: true });
  }
});
