/**
 * nar-bridge benchmark, against baselines measured in the same run:
 *
 * 1. NAR download: a tree of `--size-mib` (default 512) MiB (a few large
 *    random files plus some small ones) is imported into a fresh embedded
 *    store (pack blobs, SQLite metadata); `tvix-store nar-bridge`
 *    serves it on loopback; the NAR is fetched over HTTP (uncompressed) with
 *    curl (Nix's own HTTP client; Deno's fetch would be the bottleneck) into
 *    /dev/null, vs `nix-store --dump` of the same tree through a pipe into
 *    `cat > /dev/null`.
 *    The bridge's peak RSS (VmHWM) shows that the NAR is streamed.
 *
 * narinfo requests per second are measured by `bench_narinfo.ts`.
 *
 * Each number is the best of `--rounds` (default 3). Usage:
 * `deno run -A scripts/bench_narbridge.ts [--size-mib 512] [--rounds 3]`.
 *
 * @module
 */
import { join } from "node:path";
import * as nixbase32 from "../src/store/nixbase32.ts";
import { StorePath } from "../src/store/store_path.ts";
import { parseNarInfo } from "../src/narbridge/narinfo.ts";
import { serviceAddrArgs } from "../src/cli/common.ts";
import { embeddedAddrs } from "../src/store/services.ts";
import {
  MAIN,
  numberArg,
  processMemMiB,
  runTvix,
  watchLines,
  writeRandomFiles,
} from "./support.ts";

const MiB = 1024 * 1024;
const SIZE_MIB = numberArg("size-mib", 512);
const ROUNDS = numberArg("rounds", 3);

async function makeTree(root: string): Promise<void> {
  await Deno.mkdir(join(root, "small"), { recursive: true });
  const buf = new Uint8Array(MiB);
  // 8 MiB of 4 KiB files, the rest in 64 MiB random files.
  for (let i = 0; i < 2048; i++) {
    crypto.getRandomValues(buf.subarray(0, 4096));
    await Deno.writeFile(join(root, "small", `f${i}`), buf.subarray(0, 4096));
  }
  await writeRandomFiles(root, SIZE_MIB - 8);
}

function best<T>(xs: T[], key: (x: T) => number): T {
  return xs.reduce((a, b) => (key(b) < key(a) ? b : a));
}

const tmp = await Deno.makeTempDir({ prefix: "bench-narbridge-" });
let bridge: Deno.ChildProcess | undefined;
try {
  const tree = join(tmp, "tree");
  console.log(`generating a ${SIZE_MIB} MiB tree ...`);
  await makeTree(tree);
  const storeArgs = serviceAddrArgs(embeddedAddrs(tmp));
  console.log("importing ...");
  const storePath = StorePath.parseAbsolute((await runTvix(["import", ...storeArgs, tree])).trim());

  bridge = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "nar-bridge", "-l", "127.0.0.1:0", ...storeArgs],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  // Keeps draining its stderr so it never blocks.
  const port = (await watchLines(bridge.stderr, / listening address=127\.0\.0\.1:(\d+)/).match)[1];
  const base = `http://127.0.0.1:${port}`;
  const narinfoUrl = `${base}/${nixbase32.encode(storePath.digest)}.narinfo`;
  const ni = parseNarInfo(await (await fetch(narinfoUrl)).text());
  const narMiB = Number(ni.narSize) / MiB;
  const peakBefore = processMemMiB(bridge.pid, "VmHWM");

  const http: number[] = [];
  const dump: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    let t0 = performance.now();
    const curl = await new Deno.Command("curl", {
      args: ["-sf", "-o", "/dev/null", "-w", "%{size_download}", `${base}/${ni.url}`],
      stdout: "piped",
    }).output();
    http.push(performance.now() - t0);
    const got = Number(new TextDecoder().decode(curl.stdout));
    if (!curl.success || got !== Number(ni.narSize)) {
      throw new Error(`curl got ${got} bytes, want ${ni.narSize}`);
    }

    t0 = performance.now();
    // Through a pipe, like the bridge's bytes through its socket (straight
    // to /dev/null nix-store would skip the copy out entirely).
    const dumped = await new Deno.Command("sh", {
      args: ["-c", 'nix-store --dump "$1" | cat > /dev/null', "sh", tree],
    }).output();
    dump.push(performance.now() - t0);
    if (!dumped.success) throw new Error("nix-store --dump failed");
  }
  const httpMBs = narMiB / (best(http, (x) => x) / 1000);
  const dumpMBs = narMiB / (best(dump, (x) => x) / 1000);
  console.log(`NAR of ${narMiB.toFixed(0)} MiB:`);
  console.log(`  nar-bridge HTTP GET     ${httpMBs.toFixed(0)} MiB/s`);
  console.log(`  nix-store --dump        ${dumpMBs.toFixed(0)} MiB/s`);
  console.log(`  ratio (bridge / dump)   ${(httpMBs / dumpMBs).toFixed(2)}`);
  console.log(
    `  nar-bridge peak RSS     ${peakBefore.toFixed(0)} MiB before the downloads, ` +
      `${processMemMiB(bridge.pid, "VmHWM").toFixed(0)} MiB after`,
  );
} finally {
  if (bridge) {
    bridge.kill("SIGTERM");
    await bridge.status;
  }
  await Deno.remove(tmp, { recursive: true });
}
