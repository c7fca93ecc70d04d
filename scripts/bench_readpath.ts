/**
 * Read-path benchmark: NARs served by a daemon's built-in binary cache and
 * by a standalone `nar-bridge` over that daemon, against baselines measured
 * in the same run:
 *
 * 1. built-in cache vs `nix-store --dump | cat > /dev/null`, for a large
 *    tree (`--size-mib`, default 512: random 64 MiB files) and a tree of
 *    many small files (`--files`, default 20,000 of 100 B-8 KiB text, most
 *    of a Nix store);
 * 2. the standalone bridge over the daemon (`grpc+http://`) vs the built-in
 *    cache, same trees;
 * 3. a 1 MiB `Range` at the end of the large NAR vs one at its start (about
 *    1 when ranges seek instead of rendering from the start);
 * 4. the daemon's and the bridge's peak RSS (VmHWM) after the downloads;
 * 5. `--concurrent` (default 8) downloads at once of the small-file NAR from
 *    the built-in cache: their total rate and the daemon's peak RSS during
 *    them (the peak reset before).
 *
 * Downloads go through curl into /dev/null. The sides run in turn, round
 * after round (`--rounds`, default 3), and each number is the median with
 * the spread; the load average is printed before and after.
 * Usage: `deno run -A scripts/bench_readpath.ts [--size-mib 512] [--files 20000] [--rounds 3] [--concurrent 8]`.
 *
 * @module
 */
import { join } from "node:path";
import { serviceAddrArgs } from "../src/cli/common.ts";
import { embeddedAddrs } from "../src/store/services.ts";
import {
  loadAverage,
  MAIN,
  median,
  numberArg,
  processMemMiB,
  resetPeakRss,
  runTvix,
  stopChildren,
  watchLines,
  writeRandomFiles,
} from "./support.ts";

const MiB = 1024 * 1024;
const SIZE_MIB = numberArg("size-mib", 512);
const FILES = numberArg("files", 20_000);
const ROUNDS = numberArg("rounds", 3);
/** Downloads at once in the last step (`--concurrent`). */
const CONCURRENT = numberArg("concurrent", 8);

async function smallTree(root: string): Promise<void> {
  const words = new TextEncoder().encode(
    "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12.1/share/locale/de/LC_MESSAGES\n",
  );
  const text = new Uint8Array(8192).map((_, i) => words[i % words.length]);
  for (let i = 0; i < FILES; i++) {
    const dir = join(root, `d${i % 100}`);
    if (i < 100) await Deno.mkdir(dir, { recursive: true });
    const size = 100 + ((i * 7919) % 8000);
    const data = text.slice(0, size);
    data[0] = i & 0xff; // not all identical
    data[1] = (i >> 8) & 0xff;
    await Deno.writeFile(join(dir, `f${i}`), data);
  }
}

function spawn(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  return child;
}

/** Time (ms) of fetching `url` with curl into /dev/null, checking the size. */
async function curlTime(url: string, size: number, range?: string): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command("curl", {
    args: [
      "-sf",
      "-o",
      "/dev/null",
      "-w",
      "%{size_download}",
      ...(range ? ["-r", range] : []),
      url,
    ],
    stdout: "piped",
  }).output();
  const ms = performance.now() - t0;
  const got = Number(new TextDecoder().decode(out.stdout));
  if (!out.success || got !== size) throw new Error(`curl ${url}: ${got} bytes, want ${size}`);
  return ms;
}

/** Time (ms) of `nix-store --dump TREE | cat > /dev/null`. */
async function dumpTime(tree: string): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command("sh", {
    args: ["-c", 'nix-store --dump "$1" | cat > /dev/null', "sh", tree],
  }).output();
  if (!out.success) throw new Error("nix-store --dump failed");
  return performance.now() - t0;
}

/** Runs every side once per round, in turn (interleaved); the times of each side. */
async function interleaved(sides: (() => Promise<number>)[]): Promise<number[][]> {
  const times = sides.map(() => [] as number[]);
  for (let r = 0; r < ROUNDS; r++) {
    for (const [i, side] of sides.entries()) times[i].push(await side());
  }
  return times;
}

/** `median MiB/s (min–max)` of `mib` moved in each of `times` (ms). */
function rate(mib: number, times: number[]): string {
  const r = (ms: number) => (mib / (ms / 1000)).toFixed(0);
  return `${r(median(times))} MiB/s (${r(Math.max(...times))}–${r(Math.min(...times))})`;
}

/** The NAR URL and size of `storePath` at the cache `base`. */
async function narOf(base: string, storePath: string): Promise<{ url: string; size: number }> {
  const hash = storePath.slice("/nix/store/".length, "/nix/store/".length + 32);
  const narinfo = await (await fetch(`${base}/${hash}.narinfo`)).text();
  return {
    url: `${base}/${/^URL: (\S+)$/m.exec(narinfo)![1]}`,
    size: Number(/^NarSize: (\d+)$/m.exec(narinfo)![1]),
  };
}

console.log(`load average before: ${loadAverage()}`);
const tmp = await Deno.makeTempDir({ prefix: "bench-readpath-" });
const children: Deno.ChildProcess[] = [];
try {
  const store = join(tmp, "store");
  const storeArgs = serviceAddrArgs(embeddedAddrs(store));
  const trees = { large: join(tmp, "large"), small: join(tmp, "small") };
  console.log(`generating a ${SIZE_MIB} MiB tree and ${FILES} small files ...`);
  await writeRandomFiles(trees.large, SIZE_MIB);
  await smallTree(trees.small);
  const paths = {
    large: (await runTvix(["import", ...storeArgs, trees.large])).trim(),
    small: (await runTvix(["import", ...storeArgs, trees.small])).trim(),
  };

  const daemon = spawn([
    "daemon",
    "--listen-address=127.0.0.1:0",
    "--nar-bridge-listen-address=127.0.0.1:0",
    ...storeArgs,
  ]);
  children.push(daemon);
  // The daemon logs two addresses, in no fixed order: gRPC, then or before the cache.
  const lines = watchLines(daemon.stderr, /nar-bridge listening address=/);
  await lines.match;
  const address = async (re: RegExp) => {
    for (let i = 0; i < 200; i++) {
      const m = lines.tail.map((l) => re.exec(l)).find((x) => x);
      if (m) return m[1];
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`no ${re} in the daemon's log:\n${lines.tail.join("\n")}`);
  };
  const builtIn = `http://${await address(/nar-bridge listening address=(\S+)/)}`;
  const grpcAddr = await address(/ INFO listening address=(\S+)/);
  const url = `grpc+http://${grpcAddr}`;
  const bridge = spawn([
    "nar-bridge",
    "-l",
    "127.0.0.1:0",
    ...serviceAddrArgs({
      blobServiceAddr: url,
      directoryServiceAddr: url,
      pathInfoServiceAddr: url,
    }),
  ]);
  children.push(bridge);
  const over = `http://${(await watchLines(bridge.stderr, / listening address=(\S+)/).match)[1]}`;

  for (const kind of ["large", "small"] as const) {
    const nar = await narOf(builtIn, paths[kind]);
    const narOver = await narOf(over, paths[kind]);
    const mib = nar.size / MiB;
    const [builtInT, overT, dumpT] = await interleaved([
      () => curlTime(nar.url, nar.size),
      () => curlTime(narOver.url, nar.size),
      () => dumpTime(trees[kind]),
    ]);
    const [tBuiltIn, tOver, tDump] = [median(builtInT), median(overT), median(dumpT)];
    console.log(`${kind} tree, NAR of ${mib.toFixed(1)} MiB (median of ${ROUNDS}, min–max):`);
    console.log(`  built-in cache          ${rate(mib, builtInT)}`);
    console.log(`  bridge over the daemon  ${rate(mib, overT)}`);
    console.log(`  nix-store --dump | cat  ${rate(mib, dumpT)}`);
    console.log(`  ratio (built-in / dump)           ${(tDump / tBuiltIn).toFixed(2)}`);
    console.log(`  ratio (over daemon / built-in)    ${(tBuiltIn / tOver).toFixed(2)}`);
    if (kind === "large") {
      const len = Math.min(MiB, nar.size >> 1);
      const [head, tail] = await interleaved([
        () => curlTime(nar.url, len, `0-${len - 1}`),
        () => curlTime(nar.url, len, `${nar.size - len}-${nar.size - 1}`),
      ]);
      console.log(
        `  ratio (range at start / at end)   ${(median(head) / median(tail)).toFixed(2)}`,
      );
    }
  }
  console.log(
    `peak RSS: daemon ${processMemMiB(daemon.pid, "VmHWM").toFixed(0)} MiB, bridge ${
      processMemMiB(bridge.pid, "VmHWM").toFixed(0)
    } MiB`,
  );

  // Many clients at once: what the daemon holds while its built-in cache
  // serves the small-file NAR to all of them (its peak reset first).
  const small = await narOf(builtIn, paths.small);
  const before = processMemMiB(daemon.pid, "VmRSS");
  const reset = resetPeakRss(daemon.pid);
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CONCURRENT }, () => curlTime(small.url, small.size)));
  const total = (CONCURRENT * small.size) / MiB;
  console.log(
    `${CONCURRENT} downloads at once of the small-file NAR from the built-in cache: ` +
      `${rate(total, [performance.now() - t0])} in all; daemon RSS ${before.toFixed(0)} MiB ` +
      `before, peak ${processMemMiB(daemon.pid, "VmHWM").toFixed(0)} MiB${
        reset ? "" : " (since its start)"
      }`,
  );
} finally {
  await stopChildren(children);
  await Deno.remove(tmp, { recursive: true });
  console.log(`load average after: ${loadAverage()}`);
}
