/**
 * Garbage collection benchmark: a store of ≥ 100,000 chunks (10 paths of
 * 10,000 distinct small files each) in the embedded layout; 60 % of the
 * paths are deleted, then `tvix-store gc --grace 0` runs. The baseline, in the
 * same run, is Nix deleting the same paths from a local Nix store
 * holding the same trees (`nix-store --delete`, which removes their files).
 *
 * Each round rebuilds both stores (untimed) and times both sides,
 * interleaved. Prints medians and spreads, chunks swept per second, gc's
 * peak RSS and the load average before and after. Usage:
 * `deno run -A scripts/bench_gc.ts [--paths 10] [--files 10000] [--rounds 3]`.
 *
 * @module
 */
import { join } from "node:path";
import { serviceAddrArgs } from "../src/cli/common.ts";
import { embeddedAddrs } from "../src/store/services.ts";
import { loadAverage, MAIN, median, numberArg } from "./support.ts";

const PATHS = numberArg("paths", 10);
const FILES = numberArg("files", 10_000);
const ROUNDS = numberArg("rounds", 3);
/** Paths deleted: more than half, so the packs are rewritten as well. */
const DELETED = Math.ceil(PATHS * 0.6);

async function run(cmd: string[], env: Record<string, string> = {}): Promise<string> {
  const out = await new Deno.Command(cmd[0], { args: cmd.slice(1), env, stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`${cmd.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** Runs under /usr/bin/time; returns seconds, peak RSS (KiB) and stdout. */
async function timed(cmd: string[]): Promise<{ secs: number; rssKiB: number; stdout: string }> {
  await run(["sync"]);
  const t0 = performance.now();
  const out = await new Deno.Command("/usr/bin/time", {
    args: ["-f", "%M", ...cmd],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const secs = (performance.now() - t0) / 1000;
  const stderr = new TextDecoder().decode(out.stderr).trim().split("\n");
  if (!out.success) throw new Error(`${cmd.join(" ")} failed:\n${stderr.join("\n")}`);
  return {
    secs,
    rssKiB: Number(stderr[stderr.length - 1]),
    stdout: new TextDecoder().decode(out.stdout),
  };
}

const tmp = await Deno.makeTempDir({ prefix: "bench-gc-" });
try {
  console.log(`load ${loadAverage()}, ${navigator.hardwareConcurrency} cores`);
  // The trees: distinct 1–3 KiB files, one chunk each.
  const trees: string[] = [];
  let seed = 1;
  for (let p = 0; p < PATHS; p++) {
    const root = join(tmp, `tree${p}`);
    for (let d = 0; d < 100; d++) await Deno.mkdir(join(root, `d${d}`), { recursive: true });
    for (let f = 0; f < FILES; f++) {
      const data = new Uint8Array(1024 + (seed * 7919) % 2048);
      crypto.getRandomValues(data);
      seed++;
      await Deno.writeFile(join(root, `d${f % 100}`, `f${f}`), data);
    }
    trees.push(root);
  }
  console.log(`${PATHS} trees of ${FILES} files written; load ${loadAverage()}`);
  const ours: number[] = [], nix: number[] = [];
  let rss = 0;
  let swept = 0;
  for (let round = 0; round < ROUNDS; round++) {
    // Untimed set-up of both stores.
    const store = join(tmp, `store${round}`);
    const args = serviceAddrArgs(embeddedAddrs(store));
    const paths = (await run([Deno.execPath(), "run", "-A", MAIN, "import", ...args, ...trees]))
      .trim().split("\n");
    await run([
      Deno.execPath(),
      "run",
      "-A",
      MAIN,
      "delete",
      ...args,
      ...paths.slice(0, DELETED),
    ]);
    const nixRoot = join(tmp, `nix${round}`);
    const nixPaths = (await run(["nix-store", "--store", nixRoot, "--add", ...trees])).trim()
      .split("\n");

    const n = await timed([
      "nix-store",
      "--store",
      nixRoot,
      "--delete",
      ...nixPaths.slice(0, DELETED),
    ]);
    nix.push(n.secs);
    const t = await timed([Deno.execPath(), "run", "-A", MAIN, "gc", "--grace", "0", ...args]);
    ours.push(t.secs);
    rss = Math.max(rss, t.rssKiB);
    swept = Number(/(\d+) blobs and chunks/.exec(t.stdout)?.[1] ?? 0);
    console.log(
      `round ${round + 1}: nix-store --delete ${n.secs.toFixed(2)} s, gc ${t.secs.toFixed(2)} s`,
    );
    console.log(`  ${t.stdout.trim().split("\n").join("\n  ")}`);
    await Deno.remove(store, { recursive: true });
    await run(["chmod", "-R", "u+w", nixRoot]);
    await Deno.remove(nixRoot, { recursive: true });
  }
  const spread = (xs: number[]) => `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}`;
  console.log(
    `\n${PATHS * FILES} chunks in ${PATHS} paths, ${DELETED} deleted; ${ROUNDS} rounds`,
  );
  console.log(
    `  nix-store --delete (baseline)  median ${median(nix).toFixed(2)} s (${spread(nix)})`,
  );
  console.log(
    `  tvix-store gc --grace 0        median ${median(ours).toFixed(2)} s (${spread(ours)})  ` +
      `nix/this ${(median(nix) / median(ours)).toFixed(2)}`,
  );
  console.log(
    `  ${(swept / median(ours)).toFixed(0)} chunks removed per second ` +
      `(${PATHS * FILES} examined); gc peak RSS ${
        (rss / 1024).toFixed(0)
      } MiB; load ${loadAverage()}`,
  );
} finally {
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
}
