/**
 * A mount over a daemon that hangs (SIGSTOP, not dead): a read of a file
 * not yet cached fails with EIO within the endpoint's timeout instead of
 * blocking, and reads work again once the daemon runs again.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { localStoreArgs, startServer, tvixStore } from "../cli/helpers.ts";
import { serviceAddrArgs } from "../../src/cli/common.ts";
import type { ServiceAddrs } from "../../src/store/services.ts";
import { pseudoRandom } from "../fixtures.ts";
import { SKIP, startMount } from "./harness.ts";

/** The `timeout=` of the endpoint, in seconds. */
const TIMEOUT_S = 3;

async function cat(path: string) {
  const t0 = performance.now();
  const out = await new Deno.Command("cat", { args: [path], stdout: "piped", stderr: "piped" })
    .output();
  return {
    code: out.code,
    stdout: out.stdout,
    stderr: new TextDecoder().decode(out.stderr),
    ms: performance.now() - t0,
  };
}

Deno.test({
  name: "mount over a hung daemon: EIO within the timeout, reads again after it resumes",
  ignore: SKIP,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "tvix-hung-" });
    const sock = join(tmp, "sock");
    const daemon = await startServer(["daemon", "-l", sock, ...localStoreArgs(join(tmp, "s"))], {
      name: "daemon",
    });
    try {
      const url = `grpc+unix://${sock}?timeout=${TIMEOUT_S}`;
      const addrs: ServiceAddrs = {
        blobServiceAddr: url,
        directoryServiceAddr: url,
        pathInfoServiceAddr: url,
      };
      const data = pseudoRandom(3 << 20, 17);
      await Deno.writeFile(join(tmp, "payload"), data);
      const imported = await tvixStore(["import", ...serviceAddrArgs(addrs), join(tmp, "payload")]);
      assertEquals(imported.code, 0, imported.stderr);
      const basename = imported.stdout.trim().split("/").pop()!;

      const mount = await startMount({ addrs, args: ["--threads=2"] });
      try {
        const file = join(mount.mountpoint, basename);
        daemon.child.kill("SIGSTOP");
        let hung;
        try {
          hung = await cat(file);
        } finally {
          daemon.child.kill("SIGCONT");
        }
        assert(hung.code !== 0, "read succeeded from a stopped daemon");
        assert(hung.stderr.includes("Input/output error"), hung.stderr);
        // Keepalive pings every half timeout, dropped after another half;
        // the lookup and the read may each wait that long.
        assert(hung.ms < 4 * TIMEOUT_S * 1000, `EIO only after ${hung.ms} ms`);

        let again = await cat(file);
        for (let i = 0; i < 30 && again.code !== 0; i++) {
          await new Promise((r) => setTimeout(r, 500));
          again = await cat(file);
        }
        assertEquals(again.code, 0, `${again.stderr}\n${mount.log()}`);
        assert(again.stdout.length === data.length && again.stdout.every((b, i) => b === data[i]));
      } finally {
        await mount.stop();
      }
    } finally {
      daemon.child.kill("SIGCONT");
      await daemon.stop();
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
