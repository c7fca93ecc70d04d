/**
 * Throughput of FastCDC and of the object-store blob backend, each printed
 * with its ratio to a baseline measured in the same run (BLAKE3 of the same
 * bytes; the memory blob service). Not a test: run it by hand with
 * `deno run -A tests/castore/objectstore_bench.ts [MiB]`.
 *
 * @module
 */
import { FastCdcChunker } from "../../src/castore/blob/fastcdc.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { ObjectStoreBlobService } from "../../src/castore/blob/objectstore.ts";
import type { BlobService } from "../../src/castore/blob/service.ts";
import { blake3 } from "../../src/castore/digest.ts";
import { FileObjectStore } from "../../src/castore/objectstore/file.ts";
import { MemoryObjectStore } from "../../src/castore/objectstore/memory.ts";

const size = Number(Deno.args[0] ?? 256) << 20;
const PIECE = 1 << 20;

// Pseudo-random data (xorshift32), every other MiB replaced by a constant so
// compression has something to do.
const data = new Uint8Array(size);
let x = 1;
for (let i = 0; i < size; i++) {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  data[i] = x;
}
for (let i = 0; i < size; i += 2 * PIECE) data.fill(7, i, i + PIECE);

function mbps(start: number): number {
  return size / 1e6 / ((performance.now() - start) / 1000);
}

function chunkAll(): number {
  const chunker = new FastCdcChunker();
  let n = 0;
  for (let p = 0; p < size; p += PIECE) {
    for (const _ of chunker.push(data.subarray(p, p + PIECE))) n++;
  }
  for (const _ of chunker.finish()) n++;
  return n;
}

async function writeRead(service: BlobService): Promise<[number, number]> {
  let t = performance.now();
  const w = service.openWrite();
  for (let p = 0; p < size; p += PIECE) await w.write(data.subarray(p, p + PIECE));
  const digest = await w.close();
  const write = mbps(t);
  t = performance.now();
  let n = 0;
  for await (const piece of (await service.openRead(digest))!) n += piece.length;
  if (n !== size) throw new Error("short read");
  return [write, mbps(t)];
}

chunkAll(); // warm up the JIT
let t = performance.now();
blake3(data);
const b3 = mbps(t);
t = performance.now();
const chunks = chunkAll();
const cdc = mbps(t);
console.log(`BLAKE3 baseline      ${b3.toFixed(0)} MB/s`);
console.log(
  `FastCDC              ${cdc.toFixed(0)} MB/s (${chunks} chunks), ${
    (cdc / b3).toFixed(2)
  }x BLAKE3`,
);

const [mw, mr] = await writeRead(new MemoryBlobService());
console.log(
  `memory blob service  write ${mw.toFixed(0)} MB/s, read ${mr.toFixed(0)} MB/s (baseline)`,
);
const [ow, or] = await writeRead(new ObjectStoreBlobService(new MemoryObjectStore()));
console.log(
  `objectstore+memory   write ${ow.toFixed(0)} MB/s (${(ow / mw).toFixed(2)}x), read ${
    or.toFixed(0)
  } MB/s (${(or / mr).toFixed(2)}x)`,
);
const dir = await Deno.makeTempDir({ prefix: "objectstore-bench-" });
try {
  const [fw, fr] = await writeRead(new ObjectStoreBlobService(new FileObjectStore(dir)));
  console.log(
    `objectstore+file     write ${fw.toFixed(0)} MB/s (${(fw / mw).toFixed(2)}x), read ${
      fr.toFixed(0)
    } MB/s (${(fr / mr).toFixed(2)}x)`,
  );
} finally {
  await Deno.remove(dir, { recursive: true });
}
