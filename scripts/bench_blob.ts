/**
 * Object-store blob backend throughput: one blob (default 512 MiB) written
 * and read through `ObjectStoreBlobService` on `objectstore+file://` in a
 * temp dir, beside the CLI tools doing the same work on the same bytes in
 * the same run:
 *
 * - write baseline: `b3sum` of the input and `zstd -3 -T2` of it into a
 *   file, run at the same time (the service hashes and compresses too; note
 *   the CLI does not fsync, while the service makes every chunk durable);
 * - read baseline: `zstd -d` of that file piped into `b3sum`.
 *
 * The data is half shared-library bytes from `/usr/lib` (a stand-in for
 * Nix store paths; compresses to ~40 %) and half random, interleaved in
 * 8 MiB runs. The service runs with the chunk Worker pool (default) and
 * with `workers: 0` (all on the main thread), on `objectstore+file` and,
 * to separate filesystem cost from chunking/hashing/zstd, on
 * `objectstore+memory`. Prints MB/s, ratios to the baseline, the process
 * CPU time per MB (all threads; less sensitive than MB/s to other load on
 * the machine), and the bytes on disk.
 *
 * Usage: `deno run -A scripts/bench_blob.ts [--size-mib 512]`
 *
 * @module
 */
import { join } from "node:path";
import { cpuUsage } from "node:process";
import { ObjectStoreBlobService } from "../src/castore/blob/objectstore.ts";
import { FileObjectStore } from "../src/castore/objectstore/file.ts";
import { MemoryObjectStore } from "../src/castore/objectstore/memory.ts";
import { toHex } from "../src/castore/digest.ts";

const MiB = 1024 * 1024;
const RUN = 8 * MiB;
const PIECE = MiB;

function argSize(): number {
  const i = Deno.args.indexOf("--size-mib");
  return (i >= 0 ? Number(Deno.args[i + 1]) : 512) * MiB;
}

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

async function measureService(
  data: Uint8Array,
  dir: string | undefined,
  workers: number | undefined,
) {
  const store = dir ? new FileObjectStore(dir) : new MemoryObjectStore();
  const service = new ObjectStoreBlobService(store, { workers });
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
    const disk = dir ? await duBytes(dir) : undefined;
    return { write, read, writeCpu, readCpu, digest: toHex(digest), disk };
  } finally {
    await service.close();
  }
}

const size = argSize();
const tmp = await Deno.makeTempDir({ prefix: "bench-blob-" });
try {
  const data = mixedData(size);
  const input = join(tmp, "input.bin");
  await Deno.writeFile(input, data);

  // Baselines (input in the page cache, as the service's is in memory).
  const zst = join(tmp, "input.zst");
  let t = performance.now();
  const [b3] = await Promise.all([
    sh(`b3sum --no-names '${input}'`),
    sh(`zstd -3 -T2 -q -f -o '${zst}' '${input}'`),
  ]);
  const baseWrite = mbps(size, performance.now() - t);
  t = performance.now();
  const b3read = await sh(`zstd -d -q -c '${zst}' | b3sum --no-names`);
  const baseRead = mbps(size, performance.now() - t);
  if (b3read.trim() !== b3.trim()) throw new Error("baseline round trip mismatch");
  const zstSize = (await Deno.stat(zst)).size;

  console.log(
    `${size / MiB} MiB, half /usr/lib bytes, half random; load average ${
      Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ")
    }`,
  );
  console.log(
    `baseline b3sum + zstd -3 -T2   write ${baseWrite.toFixed(0)} MB/s, read ${
      baseRead.toFixed(0)
    } MB/s (zstd -d | b3sum), ${(zstSize / MiB).toFixed(0)} MiB compressed`,
  );
  const runs = [
    ["file", "workers (default)", undefined],
    ["file", "main thread only", 0],
    // Without the filesystem: what chunking, hashing and zstd alone reach.
    ["memory", "workers (default)", undefined],
    ["memory", "main thread only", 0],
  ] as const;
  for (const [kind, label, workers] of runs) {
    const dir = kind === "file" ? join(tmp, `store-${workers ?? "default"}`) : undefined;
    const r = await measureService(data, dir, workers);
    if (r.digest !== b3.trim()) throw new Error(`digest mismatch: ${r.digest} vs ${b3.trim()}`);
    console.log(
      `objectstore+${kind.padEnd(6)} ${label.padEnd(17)} write ${r.write.toFixed(0)} MB/s (${
        (r.write / baseWrite).toFixed(2)
      }x, ${r.writeCpu.toFixed(1)} ms CPU/MB), read ${r.read.toFixed(0)} MB/s (${
        (r.read / baseRead).toFixed(2)
      }x, ${r.readCpu.toFixed(1)} ms CPU/MB)${
        r.disk === undefined ? "" : `, ${(r.disk / MiB).toFixed(0)} MiB on disk`
      }`,
    );
    if (dir) await Deno.remove(dir, { recursive: true });
  }
} finally {
  await Deno.remove(tmp, { recursive: true });
}
