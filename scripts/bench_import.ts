/**
 * Import and NAR-rendering benchmark against Nix, in one run:
 *
 * 1. generates a ~512 MiB mixed tree (many small files, some medium and
 *    large ones, duplicates; half incompressible, half text-like);
 * 2. `tvix-store import` into a fresh embedded store (objectstore+file
 *    blobs, SQLite metadata) vs `nix-store --add` into a fresh local store,
 *    both as processes, with the importer's peak RSS (VmHWM);
 * 3. NAR rendering of the imported path from the store (SHA-256 of the
 *    stream) vs `nix-store --dump | sha256sum`.
 *
 * Each measurement is the best of `--rounds` (default 2); the tree is in the
 * page cache for all of them. Usage:
 * `deno run -A scripts/bench_import.ts [--size-mib 512] [--rounds 2] [--keep]`.
 *
 * @module
 */
import { join } from "node:path";
import { blobServiceFromUrl } from "../src/castore/blob/from_url.ts";
import { directoryServiceFromUrl } from "../src/castore/directory/from_url.ts";
import { toHex } from "../src/castore/digest.ts";
import { calculateNar } from "../src/nar/render.ts";
import { pathInfoServiceFromUrl } from "../src/store/pathinfo/from_url.ts";
import { StorePath } from "../src/store/store_path.ts";
import { serviceAddrArgs } from "../src/cli/common.ts";
import { embeddedAddrs } from "../src/store/services.ts";
import { MAIN, numberArg } from "./support.ts";

const MiB = 1024 * 1024;
const SIZE_MIB = numberArg("size-mib", 512);
const ROUNDS = numberArg("rounds", 2);
const KEEP = Deno.args.includes("--keep");

const WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " +
  "incididunt ut labore et dolore magna aliqua nix store path derivation hash").split(" ");

/** `n` bytes: random, or text-like (compressible). */
function content(n: number, seed: number, text: boolean): Uint8Array {
  const out = new Uint8Array(n);
  if (!text) {
    for (let i = 0; i < n; i += 65536) {
      crypto.getRandomValues(out.subarray(i, Math.min(n, i + 65536)));
    }
    return out;
  }
  let x = seed | 1;
  let at = 0;
  const te = new TextEncoder();
  while (at < n) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const w = te.encode(
      WORDS[(x >>> 0) % WORDS.length] + ((x & 7) === 0 ? `${x & 0xffff}\n` : " "),
    );
    out.set(w.subarray(0, n - at), at);
    at += w.length;
  }
  return out;
}

/** Writes the mixed tree; returns its file count and byte total. */
async function generate(root: string, totalMiB: number): Promise<{ files: number; bytes: number }> {
  const scale = totalMiB / 512;
  let files = 0, bytes = 0, seed = 1;
  const write = async (p: string, data: Uint8Array, mode = 0o644) => {
    await Deno.writeFile(p, data, { mode });
    files++;
    bytes += data.length;
  };
  // ~128 MiB of small files (1–15 KiB) in 400 directories, two levels deep.
  const smallDirs = Math.max(1, Math.round(400 * scale));
  for (let d = 0; d < smallDirs; d++) {
    const dir = join(root, "small", `g${d % 20}`, `d${d}`);
    await Deno.mkdir(dir, { recursive: true });
    for (let f = 0; f < 40; f++) {
      const size = 1024 + ((seed * 7919) % (14 * 1024));
      await write(
        join(dir, `f${f}.txt`),
        content(size, seed++, f % 2 === 0),
        f % 10 === 0 ? 0o755 : 0o644,
      );
    }
    await Deno.symlink(`../d${(d + 1) % smallDirs}/f0.txt`, join(dir, "link"));
  }
  // ~128 MiB of medium files (2 MiB).
  await Deno.mkdir(join(root, "medium"));
  for (let i = 0; i < Math.round(64 * scale); i++) {
    await write(join(root, "medium", `m${i}.bin`), content(2 * MiB, seed++, i % 2 === 0));
  }
  // ~192 MiB of large files (48 MiB).
  await Deno.mkdir(join(root, "large"));
  for (let i = 0; i < Math.max(1, Math.round(4 * scale)); i++) {
    await write(join(root, "large", `l${i}.bin`), content(48 * MiB, seed++, i % 2 === 1));
  }
  // ~64 MiB of duplicates: one 8 MiB file, eight times.
  await Deno.mkdir(join(root, "dups"));
  const dup = content(8 * MiB, seed++, false);
  for (let i = 0; i < Math.max(1, Math.round(8 * scale)); i++) {
    await write(join(root, "dups", `copy${i}.bin`), dup);
  }
  return { files, bytes };
}

/** Runs a command under /usr/bin/time; returns seconds, peak RSS (KiB) and stdout. */
async function timed(
  cmd: string[],
  env: Record<string, string> = {},
): Promise<{ secs: number; rssKiB: number; stdout: string }> {
  const t0 = performance.now();
  const out = await new Deno.Command("/usr/bin/time", {
    args: ["-f", "%M", ...cmd],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const secs = (performance.now() - t0) / 1000;
  const stderr = new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd.join(" ")} failed:\n${stderr}`);
  const lines = stderr.trim().split("\n");
  return {
    secs,
    rssKiB: Number(lines[lines.length - 1]),
    stdout: new TextDecoder().decode(out.stdout).trim(),
  };
}

const fmt = (s: number) => `${s.toFixed(2)} s`;
const rate = (bytes: number, s: number) => `${(bytes / MiB / s).toFixed(0)} MiB/s`;

const tmp = await Deno.makeTempDir({ prefix: "bench-import-" });
try {
  const tree = join(tmp, "tree");
  await Deno.mkdir(tree);
  const tg = performance.now();
  const { files, bytes } = await generate(tree, SIZE_MIB);
  console.log(
    `tree: ${files} files, ${(bytes / MiB).toFixed(0)} MiB (generated in ${
      fmt((performance.now() - tg) / 1000)
    }); load ${(await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ")}, ` +
      `${navigator.hardwareConcurrency} cores`,
  );
  // Warm the page cache for both sides equally.
  await new Deno.Command("sh", { args: ["-c", `cat $(find ${tree} -type f) > /dev/null`] })
    .output();

  let best = {
    tvix: Infinity,
    tvixWorkers: Infinity,
    nix: Infinity,
    rss: 0,
    rssWorkers: 0,
    render: Infinity,
    dump: Infinity,
  };
  let storePath = "", nixPath = "", lastStore = "";
  /** `tvix-store import` of the tree into a fresh embedded store under `store`. */
  const importCmd = (store: string) => [
    Deno.execPath(),
    "run",
    "-A",
    MAIN,
    "import",
    ...serviceAddrArgs(embeddedAddrs(store)),
    tree,
  ];
  for (let round = 0; round < ROUNDS; round++) {
    const store = join(tmp, `tvix-${round}`);
    const t = await timed(importCmd(store));
    storePath = t.stdout;
    lastStore = store;
    best.tvix = Math.min(best.tvix, t.secs);
    best.rss = Math.max(best.rss, t.rssKiB);
    // The same with two upload Workers (off by default).
    const store0 = join(tmp, `tvix-workers-${round}`);
    const t0 = await timed(importCmd(store0), { TVIX_IMPORT_WORKERS: "2" });
    if (t0.stdout !== storePath) throw new Error(`store paths differ: ${t0.stdout}`);
    best.tvixWorkers = Math.min(best.tvixWorkers, t0.secs);
    best.rssWorkers = Math.max(best.rssWorkers, t0.rssKiB);
    await Deno.remove(store0, { recursive: true });
    const n = await timed(["nix-store", "--store", join(tmp, `nix-${round}`), "--add", tree]);
    nixPath = n.stdout;
    best.nix = Math.min(best.nix, n.secs);
    await Deno.remove(join(tmp, `nix-${round}`), { recursive: true }).catch(() => {});
    if (round < ROUNDS - 1) await Deno.remove(store, { recursive: true });
  }
  if (storePath !== nixPath) throw new Error(`store paths differ: ${storePath} vs ${nixPath}`);

  // NAR rendering from the store vs nix-store --dump | sha256sum.
  const addrs = embeddedAddrs(lastStore);
  const blob = await blobServiceFromUrl(addrs.blobServiceAddr);
  const dir = await directoryServiceFromUrl(addrs.directoryServiceAddr);
  const pi = await pathInfoServiceFromUrl(addrs.pathInfoServiceAddr);
  const info = await pi.get(StorePath.parseAbsolute(storePath).digest);
  if (!info?.node?.node) throw new Error("imported path not found");
  let tvixHash = "", nixHash = "";
  for (let round = 0; round < ROUNDS; round++) {
    const t0 = performance.now();
    const s = await calculateNar(info.node.node, blob, dir);
    best.render = Math.min(best.render, (performance.now() - t0) / 1000);
    tvixHash = toHex(s.narSha256);
    const d = await timed(["sh", "-c", `nix-store --dump ${tree} | sha256sum`]);
    best.dump = Math.min(best.dump, d.secs);
    nixHash = d.stdout.split(" ")[0];
  }
  await Promise.all([blob.close(), dir.close(), pi.close()]);
  if (tvixHash !== nixHash) throw new Error(`NAR hashes differ: ${tvixHash} vs ${nixHash}`);
  best = { ...best };

  console.log(`store path (both): ${storePath}`);
  console.log(
    `import:      tvix-store ${fmt(best.tvix)} (${rate(bytes, best.tvix)})  ` +
      `nix-store --add ${fmt(best.nix)} (${rate(bytes, best.nix)})  ` +
      `ratio tvix/nix ${(best.tvix / best.nix).toFixed(2)}`,
  );
  console.log(
    `             (with TVIX_IMPORT_WORKERS=2: ${fmt(best.tvixWorkers)}, ratio tvix/nix ${
      (best.tvixWorkers / best.nix).toFixed(2)
    }, peak RSS ${(best.rssWorkers / 1024).toFixed(0)} MiB)`,
  );
  console.log(
    `NAR render:  tvix-store ${fmt(best.render)} (${rate(bytes, best.render)})  ` +
      `nix-store --dump | sha256sum ${fmt(best.dump)} (${rate(bytes, best.dump)})  ` +
      `ratio tvix/nix ${(best.render / best.dump).toFixed(2)}`,
  );
  console.log(`importer peak RSS (VmHWM): ${(best.rss / 1024).toFixed(0)} MiB`);
  console.log(`(best of ${ROUNDS} rounds; machine shared with other processes, see load above)`);
} finally {
  if (KEEP) console.log(`kept ${tmp}`);
  else await Deno.remove(tmp, { recursive: true });
}
