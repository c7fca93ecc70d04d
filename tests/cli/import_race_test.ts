/**
 * A file rewritten in place (same length) while `tvix-store import` runs
 * through a daemon: every import either fails with a clear error or stores
 * a PathInfo whose NAR hash is the hash of the NAR rendered from the stored
 * bytes. Never a NarHash that describes other bytes than the store holds.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { localStoreArgs, startServer, tvixStore } from "./helpers.ts";
import { serviceAddrArgs } from "../../src/cli/common.ts";
import { constructServices, type ServiceAddrs } from "../../src/store/services.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { LocalNarCalculationService } from "../../src/nar/calculation.ts";
import { toHex } from "../../src/castore/digest.ts";
import { pseudoRandom } from "../fixtures.ts";

const TRIES = 12;
const FILE_MIB = 30;

Deno.test("import: a file rewritten while importing never yields a wrong NarHash", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-import-race-" });
  const sock = join(tmp, "sock");
  const daemon = await startServer(["daemon", "-l", sock, ...localStoreArgs(join(tmp, "store"))], {
    name: "daemon",
  });
  const url = `grpc+unix://${sock}`;
  const addrs: ServiceAddrs = {
    blobServiceAddr: url,
    directoryServiceAddr: url,
    pathInfoServiceAddr: url,
  };
  const file = join(tmp, "big.bin");
  await Deno.writeFile(file, pseudoRandom(FILE_MIB << 20, 5));
  // Rewrites 1 MiB at a moving offset, in place, without changing the length.
  const rewriter = new Deno.Command("sh", {
    args: [
      "-c",
      `i=0; while :; do dd if=/dev/urandom of='${file}' bs=1M count=1 seek=$((i % ${FILE_MIB})) ` +
      `conv=notrunc status=none; i=$((i + 7)); done`,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const services = await constructServices(addrs);
  const stored = new LocalNarCalculationService(services.blob, services.directory);
  let imported = 0;
  let refused = 0;
  try {
    for (let i = 0; i < TRIES; i++) {
      const r = await tvixStore(["import", ...serviceAddrArgs(addrs), file]);
      if (r.code !== 0) {
        // The only acceptable failure is the one that names the cause.
        assert(r.stderr.includes("changed while"), r.stderr);
        refused++;
        continue;
      }
      imported++;
      const storePath = StorePath.parseAbsolute(r.stdout.trim());
      const info = await services.pathInfo.get(storePath.digest);
      assert(info?.node?.node && info.narinfo, `no PathInfo for ${storePath.absolute()}`);
      const rendered = await stored.calculateNar(info.node.node);
      assertEquals(
        toHex(rendered.narSha256),
        toHex(info.narinfo.narSha256),
        `try ${i}: the PathInfo's NarHash is not the hash of the stored NAR`,
      );
      assertEquals(rendered.narSize, info.narinfo.narSize);
    }
  } finally {
    rewriter.kill("SIGKILL");
    await rewriter.status;
    await services.close();
    await daemon.stop();
    await Deno.remove(tmp, { recursive: true });
  }
  console.log(`${imported} imported consistently, ${refused} refused as changed`);
});
