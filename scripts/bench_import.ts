/**
 * Import and NAR-rendering benchmark against Nix, in one run, on two trees:
 * a ~512 MiB mixed tree (many small files, medium and large ones,
 * duplicates; half incompressible, half text-like) and a tree of 20,000
 * small files (100 B to 30 KiB).
 *
 * For each tree, every round runs, in this order (interleaved, so drift in
 * the machine's state hits every side alike; each starts after `sync`):
 * - `nix-store --add` into a fresh local store (the baseline);
 * - `tvix-store import` straight into a fresh embedded store (pack
 *   blobs, SQLite metadata);
 * - `tvix-store import` straight into `objectstore+file://` blobs and
 *   directories plus `sqlite://` path infos (the upstream object layout);
 * - `tvix-store import` through a fresh `tvix-store daemon` on its embedded
 *   store (the README's path), over TCP on loopback;
 * - the same import again through that daemon, the tree unchanged.
 * Then NAR rendering from the store vs `nix-store --dump | sha256sum`.
 *
 * Every side's store is written to a fresh ext4 filesystem made for the
 * run (a sparse image on a loop device; needs root and mkfs.ext4, else
 * the stores go to the temporary directory and the output says so). On
 * an aged filesystem the cost of creating a file depends on its history:
 * on this project's test machine, whose root ext4 has no journal, ext4
 * skips inodes freed recently while allocating, and `nix-store --add` of
 * the mixed tree took 9–12 s in `/tmp` against 1.3 s on a fresh ext4 on
 * the same disk, which made every ratio against it meaningless.
 *
 * Prints the median and the spread (min–max) of each side, ratios of
 * medians against nix-store, peak RSS (VmHWM) of importer and daemon, and
 * the load average before and after. The trees are in the page cache for
 * every side. Usage:
 * `deno run -A scripts/bench_import.ts [--size-mib 512] [--small-files 20000] [--rounds 3] [--keep]`;
 * `--generate-only DIR` writes the two trees to DIR and exits.
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
import {
  loadAverage,
  MAIN,
  median,
  numberArg,
  stringArg,
  waitForQuiet,
  watchLines,
} from "./support.ts";

const MiB = 1024 * 1024;
const SIZE_MIB = numberArg("size-mib", 512);
const SMALL_FILES = numberArg("small-files", 20_000);
const ROUNDS = numberArg("rounds", 3);
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

/** 20,000 (`count`) small files of 100 B to 30 KiB in 200 directories. */
async function generateSmall(
  root: string,
  count: number,
): Promise<{ files: number; bytes: number }> {
  let bytes = 0;
  for (let i = 0; i < count; i++) {
    const dir = join(root, `d${i % 200}`);
    if (i < 200) await Deno.mkdir(dir, { recursive: true });
    const size = 100 + ((i * 7919) % (30 * 1024 - 100));
    const data = content(size, i + 1, i % 2 === 0);
    await Deno.writeFile(join(dir, `f${i}`), data);
    bytes += size;
  }
  return { files: count, bytes };
}

/**
 * Runs a command under /usr/bin/time; returns seconds, peak RSS (KiB) and
 * stdout. Dirty pages left by the previous side are written back first
 * (untimed), so no side pays for another's writes: both nix-store and our
 * commit-time flush would otherwise wait for them.
 */
async function timed(
  cmd: string[],
  env: Record<string, string> = {},
): Promise<{ secs: number; rssKiB: number; stdout: string }> {
  await new Deno.Command("sync").output();
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

/** A `tvix-store daemon` on the embedded store under `home`, on a loopback port. */
async function startDaemon(home: string): Promise<{ url: string; stop(): Promise<number> }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "daemon", "--listen-address", "127.0.0.1:0"],
    env: { TVIX_STORE_HOME: home },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log = watchLines(child.stderr, /listening address=(\S+)/);
  const url = `grpc+http://${(await log.match)[1]}`;
  return {
    url,
    async stop() {
      const hwm = Number(
        /VmHWM:\s+(\d+) kB/.exec(
          await Deno.readTextFile(`/proc/${child.pid}/status`),
        )?.[1] ?? 0,
      );
      child.kill("SIGTERM");
      await child.status;
      return hwm;
    },
  };
}

/** Size of the sparse image holding the stores: room for one round of every side. */
const STORE_FS_BYTES = 16 * 1024 * MiB;

/**
 * A fresh ext4 filesystem from a sparse `image`, mounted at `dir` (see the
 * module doc), or why one cannot be made here.
 */
async function freshFilesystem(
  image: string,
  dir: string,
): Promise<{ unmount(): Promise<void> } | string> {
  const run = async (cmd: string, ...args: string[]) => {
    const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output()
      .catch((err) => ({ success: false, stderr: new TextEncoder().encode(String(err)) }));
    if (!out.success) throw new Error(`${cmd}: ${new TextDecoder().decode(out.stderr).trim()}`);
  };
  try {
    await Deno.writeFile(image, new Uint8Array(0));
    await Deno.truncate(image, STORE_FS_BYTES);
    await run("mkfs.ext4", "-q", "-F", image);
    await Deno.mkdir(dir, { recursive: true });
    await run("mount", "-o", "loop", image, dir);
  } catch (err) {
    await Deno.remove(image).catch(() => {});
    return err instanceof Error ? err.message : String(err);
  }
  return {
    async unmount() {
      await run("umount", dir);
      await Deno.remove(image);
    },
  };
}

const fmt = (s: number) => `${s.toFixed(2)} s`;
const spread = (xs: number[]) => `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}`;

/** Times every side on `tree`, round by round; prints medians, spreads and ratios. */
async function benchTree(
  label: string,
  tree: string,
  files: number,
  bytes: number,
  storesDir: string,
) {
  console.log(
    `\n${label}: ${files} files, ${(bytes / MiB).toFixed(0)} MiB; load ${loadAverage()}`,
  );
  // Warm the page cache for every side alike.
  await new Deno.Command("sh", { args: ["-c", `find ${tree} -type f -exec cat {} + > /dev/null`] })
    .output();
  const secs: Record<string, number[]> = {
    nix: [],
    direct: [],
    objectstore: [],
    daemon: [],
    reimport: [],
  };
  let importerRss = 0, daemonRss = 0;
  let nixPath = "";
  let lastStore = "";
  const importArgs = (
    addrs: string[],
  ) => [Deno.execPath(), "run", "-A", MAIN, "import", ...addrs, tree];
  for (let round = 0; round < ROUNDS; round++) {
    const nixStore = join(storesDir, `nix-${round}`);
    const n = await timed(["nix-store", "--store", nixStore, "--add", tree]);
    secs.nix.push(n.secs);
    nixPath = n.stdout;
    await Deno.remove(nixStore, { recursive: true }).catch(() => {});

    const store = join(storesDir, `direct-${round}`);
    const d = await timed(importArgs(serviceAddrArgs(embeddedAddrs(store))));
    if (d.stdout !== nixPath) throw new Error(`store paths differ: ${d.stdout} vs ${nixPath}`);
    secs.direct.push(d.secs);
    importerRss = Math.max(importerRss, d.rssKiB);
    if (lastStore) await Deno.remove(lastStore, { recursive: true });
    lastStore = store;

    const objects = join(storesDir, `objectstore-${round}`);
    const o = await timed(importArgs(serviceAddrArgs({
      blobServiceAddr: `objectstore+file://${objects}/blobs`,
      directoryServiceAddr: `objectstore+file://${objects}/directories`,
      pathInfoServiceAddr: `sqlite://${objects}/pathinfo.sqlite`,
    })));
    if (o.stdout !== nixPath) throw new Error(`store paths differ: ${o.stdout} vs ${nixPath}`);
    secs.objectstore.push(o.secs);
    importerRss = Math.max(importerRss, o.rssKiB);
    await Deno.remove(objects, { recursive: true });

    const home = join(storesDir, `daemon-${round}`);
    const daemon = await startDaemon(home);
    try {
      const remote = serviceAddrArgs({
        blobServiceAddr: daemon.url,
        directoryServiceAddr: daemon.url,
        pathInfoServiceAddr: daemon.url,
      });
      for (const side of ["daemon", "reimport"]) {
        const t = await timed(importArgs(remote));
        if (t.stdout !== nixPath) throw new Error(`store paths differ: ${t.stdout} vs ${nixPath}`);
        secs[side].push(t.secs);
        importerRss = Math.max(importerRss, t.rssKiB);
      }
    } finally {
      daemonRss = Math.max(daemonRss, await daemon.stop());
      await Deno.remove(home, { recursive: true });
    }
  }

  // NAR rendering from the last direct store vs nix-store --dump | sha256sum.
  const addrs = embeddedAddrs(lastStore);
  const blob = await blobServiceFromUrl(addrs.blobServiceAddr);
  const dir = await directoryServiceFromUrl(addrs.directoryServiceAddr);
  const pi = await pathInfoServiceFromUrl(addrs.pathInfoServiceAddr);
  const info = await pi.get(StorePath.parseAbsolute(nixPath).digest);
  if (!info?.node?.node) throw new Error("imported path not found");
  const render: number[] = [], dump: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const t0 = performance.now();
    const s = await calculateNar(info.node.node, blob, dir);
    render.push((performance.now() - t0) / 1000);
    const d = await timed(["sh", "-c", `nix-store --dump ${tree} | sha256sum`]);
    dump.push(d.secs);
    if (toHex(s.narSha256) !== d.stdout.split(" ")[0]) throw new Error("NAR hashes differ");
  }
  await Promise.all([blob.close(), dir.close(), pi.close()]);
  await Deno.remove(lastStore, { recursive: true });

  const nix = median(secs.nix);
  const row = (name: string, xs: number[], base: number, baseName: string) =>
    console.log(
      `  ${name.padEnd(34)} median ${fmt(median(xs))} (${spread(xs)})  ` +
        `${(bytes / MiB / median(xs)).toFixed(0).padStart(5)} MiB/s  ` +
        `${baseName}/this ${(base / median(xs)).toFixed(2)}`,
    );
  console.log(`  store path (all sides): ${nixPath}; ${ROUNDS} rounds, interleaved`);
  row("nix-store --add (baseline)", secs.nix, nix, "nix");
  row("import, embedded store (pack)", secs.direct, nix, "nix");
  row("import, objectstore+file + sqlite", secs.objectstore, nix, "nix");
  row("import through a daemon", secs.daemon, nix, "nix");
  row("re-import, unchanged, via daemon", secs.reimport, nix, "nix");
  row("NAR render from the store", render, median(dump), "dump");
  row("nix-store --dump | sha256sum", dump, median(dump), "dump");
  console.log(
    `  peak RSS: importer ${(importerRss / 1024).toFixed(0)} MiB, daemon ${
      (daemonRss / 1024).toFixed(0)
    } MiB; load ${loadAverage()}`,
  );
  console.log("  (ratios > 1: faster than the baseline)");
}

const generateOnly = stringArg("generate-only");
if (generateOnly) {
  // Writes the two trees and stops, for profiling one side by hand.
  await Deno.mkdir(generateOnly, { recursive: true });
  const m = await generate(join(generateOnly, "tree"), SIZE_MIB);
  const s = await generateSmall(join(generateOnly, "small"), SMALL_FILES);
  console.log(`${generateOnly}/tree: ${m.files} files; ${generateOnly}/small: ${s.files} files`);
  Deno.exit(0);
}

const tmp = await Deno.makeTempDir({ prefix: "bench-import-" });
const storesFs = await freshFilesystem(join(tmp, "stores.img"), join(tmp, "stores"));
try {
  const stores = typeof storesFs === "string" ? tmp : join(tmp, "stores");
  console.log(`load ${loadAverage()}, ${navigator.hardwareConcurrency} cores`);
  console.log(
    typeof storesFs === "string"
      ? `stores in ${tmp}, not on a fresh filesystem (${storesFs}): file creation there may ` +
        `cost what the filesystem's history makes it cost`
      : `stores on a fresh ext4 filesystem (loop device, ${STORE_FS_BYTES / MiB / 1024} GiB image)`,
  );
  const mixed = join(tmp, "tree");
  await Deno.mkdir(mixed);
  const m = await generate(mixed, SIZE_MIB);
  // Writing the trees leaves the load average near 1.
  console.log(`\n${await waitForQuiet()}`);
  await benchTree(`mixed tree`, mixed, m.files, m.bytes, stores);
  await Deno.remove(mixed, { recursive: true });
  const small = join(tmp, "small");
  const sm = await generateSmall(small, SMALL_FILES);
  // The mixed tree's runs leave the load average at 1.5 or more.
  console.log(`\n${await waitForQuiet()}`);
  await benchTree(`small files`, small, sm.files, sm.bytes, stores);
} finally {
  if (typeof storesFs !== "string") await storesFs.unmount();
  if (KEEP) console.log(`kept ${tmp}`);
  else await Deno.remove(tmp, { recursive: true });
}
