/**
 * Blob backend throughput: one blob (default 512 MiB) written and read
 * in-process through the embedded default store (`pack://`), through
 * `objectstore+file://` (the upstream layout) and through
 * `objectstore+memory://` (chunking, hashing and zstd without a
 * filesystem), beside the CLI tools doing the same work on the same bytes:
 *
 * - write baseline: `b3sum` of the input and `zstd -3 -T2` of it into a
 *   file, run at the same time (the services hash and compress too; note
 *   the CLI does not fsync, while the services make the blob durable);
 * - read baseline: `zstd -d` of that file piped into `b3sum`.
 *
 * The data is half shared-library bytes from `/usr/lib` (a stand-in for
 * Nix store paths; compresses to ~40 %) and half random, interleaved in
 * 8 MiB runs. Each round runs every side in turn (interleaved, so drift
 * in the machine's state hits every side alike); the medians and spreads
 * (min–max) over the rounds are printed with the ratio of medians to the
 * baseline, the process CPU time per MB (all threads; less sensitive than
 * MB/s to other load), the bytes on disk, and the load average before and
 * after.
 *
 * With `--compression-level N` (default 3), the pack store writes its
 * large chunks at zstd level N (its `compression-level` option) and the
 * baseline runs `zstd -N -T2`; the object-store sides keep level 3.
 *
 * Usage: `deno run -A scripts/bench_blob.ts [--size-mib 512] [--rounds 3] [--compression-level 3]`
 *
 * @module
 */
import { join } from "node:path";
import { cpuUsage } from "node:process";
import type { BlobService } from "../src/castore/blob/service.ts";
import { ObjectStoreBlobService } from "../src/castore/blob/objectstore.ts";
import { PackBlobService } from "../src/castore/blob/pack.ts";
import { FileObjectStore } from "../src/castore/objectstore/file.ts";
import { MemoryObjectStore } from "../src/castore/objectstore/memory.ts";
import { toHex } from "../src/castore/digest.ts";
import { loadAverage, median, numberArg } from "./support.ts";

const MiB = 1024 * 1024;
const RUN = 8 * MiB;
const PIECE = MiB;
const SIZE = numberArg("size-mib", 512) * MiB;
const ROUNDS = numberArg("rounds", 3);
const LEVEL = numberArg("compression-level", 3);

/** Up to `want` bytes of regular files below `dir`, in sorted path order. */
function libraryBytes(dir: string, want: number): Uint8Array {
  const out = new Uint8Array(want);
  let have = 0;
  const walk = (d: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(d)].sort((a, b) => (a.name < b.name ? -1 : 1));
    } catch {
      return;
    }
    for (const e of entries) {
      if (have >= want) return;
      const path = `${d}/${e.name}`;
      if (e.isDirectory) walk(path);
      else if (e.isFile) {
        try {
          const data = Deno.readFileSync(path);
          const n = Math.min(data.length, want - have);
          out.set(data.subarray(0, n), have);
          have += n;
        } catch {
          // unreadable file: skip
        }
      }
    }
  };
  walk(dir);
  if (have < want) throw new Error(`only ${have} bytes below ${dir}`);
  return out;
}

/** Half library bytes, half random, alternating in RUN-sized pieces. */
function mixedData(size: number): Uint8Array {
  const lib = libraryBytes("/usr/lib", Math.ceil(size / 2 / RUN) * RUN);
  const data = new Uint8Array(size);
  let libAt = 0;
  for (let at = 0, i = 0; at < size; at += RUN, i++) {
    const n = Math.min(RUN, size - at);
    if (i % 2 === 0) {
      data.set(lib.subarray(libAt, libAt + n), at);
      libAt += n;
    } else {
      for (let r = 0; r < n; r += 65536) {
        crypto.getRandomValues(data.subarray(at + r, at + Math.min(n, r + 65536)));
      }
    }
  }
  return data;
}

/** Process CPU time (all threads, user + system) in ms since `since`. */
function cpuMs(since: NodeJS.CpuUsage): number {
  const u = cpuUsage(since);
  return (u.user + u.system) / 1000;
}

function mbps(bytes: number, ms: number): number {
  return bytes / 1e6 / (ms / 1000);
}

async function sh(script: string): Promise<string> {
  const out = await new Deno.Command("sh", { args: ["-c", script], stderr: "inherit" }).output();
  if (!out.success) throw new Error(`failed: ${script}`);
  return new TextDecoder().decode(out.stdout);
}

async function duBytes(dir: string): Promise<number> {
  return Number((await sh(`du -sb '${dir}' | cut -f1`)).trim());
}

/** One side: a blob service on a directory (or in memory). */
interface Side {
  label: string;
  open(dir: string): BlobService;
  onDisk: boolean;
}

const SIDES: Side[] = [
  {
    label: LEVEL === 3 ? "pack (embedded default)" : `pack, level ${LEVEL}`,
    open: (dir) => new PackBlobService(dir, { compressionLevel: LEVEL }),
    onDisk: true,
  },
  {
    label: "objectstore+file",
    open: (dir) => new ObjectStoreBlobService(new FileObjectStore(dir)),
    onDisk: true,
  },
  {
    label: "objectstore+memory",
    open: () => new ObjectStoreBlobService(new MemoryObjectStore()),
    onDisk: false,
  },
];

/** Writes `data` as one blob into a fresh service, then reads it back. */
async function measureService(data: Uint8Array, side: Side, dir: string) {
  await Deno.mkdir(dir, { recursive: true });
  const service = side.open(dir);
  try {
    let c = cpuUsage();
    let t = performance.now();
    const w = service.openWrite();
    for (let at = 0; at < data.length; at += PIECE) await w.write(data.subarray(at, at + PIECE));
    const digest = await w.close();
    const write = mbps(data.length, performance.now() - t);
    const writeCpu = cpuMs(c) / (data.length / 1e6);
    c = cpuUsage();
    t = performance.now();
    let n = 0;
    for await (const piece of (await service.openRead(digest))!) n += piece.length;
    const read = mbps(data.length, performance.now() - t);
    const readCpu = cpuMs(c) / (data.length / 1e6);
    if (n !== data.length) throw new Error(`read ${n} bytes, wrote ${data.length}`);
    const disk = side.onDisk ? await duBytes(dir) : undefined;
    return { write, read, writeCpu, readCpu, digest: toHex(digest), disk };
  } finally {
    await service.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const spread = (xs: number[]) => `${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)}`;

const tmp = await Deno.makeTempDir({ prefix: "bench-blob-" });
try {
  const data = mixedData(SIZE);
  const input = join(tmp, "input.bin");
  await Deno.writeFile(input, data);
  console.log(
    `${SIZE / MiB} MiB, half /usr/lib bytes, half random; ${ROUNDS} rounds, interleaved; ` +
      `load average ${loadAverage()}`,
  );

  const zst = join(tmp, "input.zst");
  const base = { write: [] as number[], read: [] as number[] };
  const results = SIDES.map(() => ({
    write: [] as number[],
    read: [] as number[],
    writeCpu: [] as number[],
    readCpu: [] as number[],
    disk: 0,
  }));
  let b3 = "";
  for (let round = 0; round < ROUNDS; round++) {
    // Baseline (input in the page cache, as the services' is in memory).
    let t = performance.now();
    const [sum] = await Promise.all([
      sh(`b3sum --no-names '${input}'`),
      sh(`zstd -${LEVEL} -T2 -q -f -o '${zst}' '${input}'`),
    ]);
    base.write.push(mbps(SIZE, performance.now() - t));
    b3 = sum.trim();
    t = performance.now();
    const b3read = await sh(`zstd -d -q -c '${zst}' | b3sum --no-names`);
    base.read.push(mbps(SIZE, performance.now() - t));
    if (b3read.trim() !== b3) throw new Error("baseline round trip mismatch");

    for (const [i, side] of SIDES.entries()) {
      const r = await measureService(data, side, join(tmp, `store-${i}`));
      if (r.digest !== b3) throw new Error(`digest mismatch: ${r.digest} vs ${b3}`);
      const acc = results[i];
      acc.write.push(r.write);
      acc.read.push(r.read);
      acc.writeCpu.push(r.writeCpu);
      acc.readCpu.push(r.readCpu);
      acc.disk = r.disk ?? 0;
    }
  }
  const zstSize = (await Deno.stat(zst)).size;
  const baseWrite = median(base.write), baseRead = median(base.read);
  console.log(
    `baseline b3sum + zstd -${LEVEL} -T2     write ${baseWrite.toFixed(0)} MB/s (${
      spread(base.write)
    }), read ${baseRead.toFixed(0)} MB/s (${spread(base.read)}) (zstd -d | b3sum), ${
      (zstSize / MiB).toFixed(0)
    } MiB compressed`,
  );
  for (const [i, side] of SIDES.entries()) {
    const r = results[i];
    console.log(
      `${side.label.padEnd(24)} write ${median(r.write).toFixed(0)} MB/s (${spread(r.write)}; ${
        (median(r.write) / baseWrite).toFixed(2)
      }x, ${median(r.writeCpu).toFixed(1)} ms CPU/MB), read ${median(r.read).toFixed(0)} MB/s (${
        spread(r.read)
      }; ${(median(r.read) / baseRead).toFixed(2)}x, ${median(r.readCpu).toFixed(1)} ms CPU/MB)${
        side.onDisk ? `, ${(r.disk / MiB).toFixed(0)} MiB on disk` : ""
      }`,
    );
  }
  console.log(`load average after ${loadAverage()}`);
} finally {
  await Deno.remove(tmp, { recursive: true });
}
