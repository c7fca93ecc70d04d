/**
 * FUSE benchmark: `tvix-store mount` against a C libfuse low-level server
 * (scripts/fuse_memfs.c) serving the same bytes from memory, in one run.
 *
 * - sequential read (MB/s) of a 1 GiB file, each run on a fresh mount:
 *   cold (first read), then warm (the kernel's pages of the file dropped
 *   with `dd iflag=nocache`, so the server is asked again; ours answers
 *   from its decompressed chunk cache);
 * - the bound of a cold read: decompressing and BLAKE3-verifying every
 *   chunk of the file on one thread, timed in the same run;
 * - `ls -lR` of a 10,100-entry tree (100 dirs x 100 files), fresh mounts;
 * - the same read and `ls -lR` with the store behind a `tvix-store daemon`
 *   reached over `grpc+http://`.
 *
 * Both mounts use the same kernel readahead: ours raises the kernel's
 * default 128 KiB to its largest READ (1 MiB) when it runs as root, and the
 * C server's mount is given the same value.
 *
 * Our store is local (SQLite + object store: zstd chunks, BLAKE3-verified
 * on read) while the C server serves from memory, so the cold ratio prices
 * in decompression and verification; the warm one compares the FUSE paths.
 * Needs root (or fusermount3), gcc and libfuse3-dev. Usage:
 * `deno run -A scripts/bench_fuse.ts [--runs=3] [--threads=N] [--only=read|ls] [--cache-size=2G]`
 *
 * @module
 */
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { decodeChunkSync } from "../src/castore/blob/chunk_codec.ts";
import { serviceAddrArgs } from "../src/cli/common.ts";
import { embeddedAddrs } from "../src/store/services.ts";
import { mountAt, readaheadFile } from "../src/fuse/mountinfo.ts";
import { loadAverage, waitForQuiet } from "./support.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const C_SOURCE = new URL("./fuse_memfs.c", import.meta.url).pathname;
const arg = (name: string, def: number) => {
  const a = Deno.args.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.slice(name.length + 3)) : def;
};
const RUNS = arg("runs", 3);
/** `--only=ls` or `--only=read` runs just one part. */
const ONLY = Deno.args.find((x) => x.startsWith("--only="))?.slice(7);
const THREADS = arg("threads", navigator.hardwareConcurrency || 2);
/** `--cache-size=…` is passed on to `tvix-store mount`. */
const CACHE_FLAGS = Deno.args.filter((x) => x.startsWith("--cache-size="));
const BIG_SIZE = 1 << 30; // must match fuse_memfs.c
let bigName = "", treeName = "";

async function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd: opts.cwd, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return text;
}

function mounted(path: string): boolean {
  return mountAt(path) !== undefined;
}

async function waitFor(cond: () => boolean, what: string, child?: Deno.ChildProcess) {
  let exited = false;
  child?.status.then(() => (exited = true));
  for (let i = 0; !cond(); i++) {
    if (exited) throw new Error(`${what}: process exited`);
    if (i > 1200) throw new Error(`${what}: timed out`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Writes the 1 GiB file: xorshift32 (seed 1) low bytes, as fuse_memfs.c. */
async function writeBig(path: string): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  const buf = new Uint8Array(16 << 20);
  let x = 1;
  for (let done = 0; done < BIG_SIZE; done += buf.length) {
    for (let i = 0; i < buf.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      buf[i] = x & 0xff;
    }
    let off = 0;
    while (off < buf.length) off += await f.write(buf.subarray(off));
  }
  f.close();
}

async function writeTree(root: string): Promise<void> {
  await Deno.mkdir(root);
  const enc = new TextEncoder();
  for (let d = 0; d < 100; d++) {
    const dn = `d${String(d).padStart(3, "0")}`;
    await Deno.mkdir(join(root, dn));
    for (let f = 0; f < 100; f++) {
      const fnm = `f${String(f).padStart(3, "0")}`;
      await Deno.writeFile(join(root, dn, fnm), enc.encode(`${dn}/${fnm}\n`));
      await Deno.chmod(join(root, dn, fnm), 0o444);
    }
  }
}

interface Server {
  mnt: string;
  stop(): Promise<void>;
}

/** Starts a FUSE server on a fresh temp mountpoint (`args(mnt)`) and waits until it is mounted. */
async function startServer(
  name: string,
  command: string,
  args: (mnt: string) => string[],
): Promise<Server> {
  const mnt = await Deno.makeTempDir({ prefix: `bench-${name}-` });
  const child = new Deno.Command(command, {
    args: args(mnt),
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  await waitFor(() => mounted(mnt), name, child);
  return {
    mnt,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
      await Deno.remove(mnt);
    },
  };
}

async function startOurs(addrs: string[]): Promise<Server> {
  const s = await startServer("tvix-store", Deno.execPath(), (mnt) => [
    "run",
    "-A",
    MAIN,
    "--log-level=warn",
    "mount",
    mnt,
    `--threads=${THREADS}`,
    ...CACHE_FLAGS,
    ...addrs,
  ]);
  // Set asynchronously once its Workers serve: wait for it, or give up after
  // 10 s (2 s was too short on a loaded machine, and both sides then ran at 128 KiB).
  for (let i = 0; i < 200; i++) {
    const kb = Deno.readTextFileSync(bdiFile(s.mnt)).trim();
    if (kb !== "128" || i === 199) {
      oursReadaheadKb = kb;
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return s;
}

/** The sysfs file holding the kernel readahead (KiB) of the mount at `mnt`. */
function bdiFile(mnt: string): string {
  return readaheadFile(mountAt(mnt)!);
}

/**
 * What `tvix-store mount` set its readahead to (it raises the kernel's
 * 128 KiB to its largest READ when it may); the C server gets the same, so
 * both answer READs of the same size.
 */
let oursReadaheadKb: string | undefined;

async function startC(binary: string): Promise<Server> {
  const s = await startServer("fuse_memfs", binary, (mnt) => [mnt, "-t", String(THREADS)]);
  if (oursReadaheadKb) Deno.writeTextFileSync(bdiFile(s.mnt), oursReadaheadKb);
  return s;
}

/** Seconds taken by `fn`. */
async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

const readSecs = (path: string) =>
  timed(() => sh("dd", [`if=${path}`, "of=/dev/null", "bs=1M", "status=none"]));
const lsSecs = (path: string) => timed(() => sh("sh", ["-c", `ls -lR "${path}" > /dev/null`]));

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const work = await Deno.makeTempDir({ prefix: "bench-fuse-" });
try {
  console.error("building fuse_memfs…");
  const cBinary = join(work, "fuse_memfs");
  const flags = (await sh("pkg-config", ["fuse3", "--cflags", "--libs"])).trim().split(/\s+/);
  await sh("gcc", ["-O2", "-o", cBinary, C_SOURCE, ...flags]);

  console.error("generating data and importing it…");
  const data = join(work, "data");
  await Deno.mkdir(data);
  if (ONLY !== "ls") await writeBig(join(data, "big"));
  await writeTree(join(data, "tree"));
  const store = join(work, "store");
  // The embedded store's layout (pack blobs, SQLite metadata).
  const local = serviceAddrArgs(embeddedAddrs(store));
  const importSecs = await timed(async () => {
    const out = await sh(Deno.execPath(), [
      "run",
      "-A",
      MAIN,
      "--log-level=warn",
      "import",
      ...(ONLY === "ls" ? [] : [join(data, "big")]),
      join(data, "tree"),
      ...local,
    ]);
    const paths = out.trim().split("\n");
    bigName = paths.find((p) => p.endsWith("-big"))?.slice("/nix/store/".length) ?? "";
    treeName = paths.find((p) => p.endsWith("-tree"))!.slice("/nix/store/".length);
  });
  console.error(`imported in ${importSecs.toFixed(1)} s`);
  await Deno.remove(data, { recursive: true });
  // Write back what the import and the removal left dirty before timing
  // anything: otherwise the first run of both servers (1 GiB of pack
  // writes still going to disk) was 2-3x slower than the later ones.
  await sh("sync", []);
  // The import's own load would otherwise still be decaying during the
  // first rounds (the 1-minute average read 1.5-2.2 at the start).
  console.error(await waitForQuiet());

  // The bound of a cold read from the store: decompressing (where stored
  // compressed) and verifying every chunk, on one thread, as stored.
  let boundMBps = NaN;
  if (ONLY !== "ls") {
    const packs = join(store, "packs");
    const index = new DatabaseSync(join(packs, "index.sqlite"));
    let bytes = 0, secs = 0;
    const files = new Map<number, Uint8Array>();
    for (
      const row of index.prepare("SELECT digest, pack, offset, length, size, raw FROM chunks").all()
    ) {
      const pack = Number(row.pack);
      if (!files.has(pack)) files.set(pack, Deno.readFileSync(join(packs, `${pack}.pack`)));
      const at = Number(row.offset);
      const stored = files.get(pack)!.slice(at, at + Number(row.length));
      const t0 = performance.now();
      bytes += decodeChunkSync(stored, row.digest as Uint8Array, Number(row.size), row.raw === 1)
        .length;
      secs += (performance.now() - t0) / 1000;
    }
    index.close();
    boundMBps = bytes / 1e6 / secs;
    // That took the machine's load up again.
    console.error(await waitForQuiet());
  }

  const results: Record<string, number[]> = {
    readOurs: [],
    readC: [],
    warmOurs: [],
    warmC: [],
    lsOurs: [],
    lsC: [],
    readGrpc: [],
    lsGrpc: [],
  };
  const servers = [["Ours", () => startOurs(local)], ["C", () => startC(cBinary)]] as const;
  for (let run = 0; run < RUNS; run++) {
    for (const [which, start] of servers) {
      if (ONLY !== "ls") {
        const s = await start();
        try {
          const big = which === "Ours" ? join(s.mnt, bigName) : join(s.mnt, "big");
          results[`read${which}`].push(await readSecs(big));
          // Again on the same mount, with the kernel's page cache of the file dropped:
          // served from the server's memory (our chunk cache, if the file fits).
          await sh("dd", [`if=${big}`, "iflag=nocache", "count=0", "status=none"]);
          results[`warm${which}`].push(await readSecs(big));
        } finally {
          await s.stop();
        }
      }
      if (ONLY !== "read") {
        const s = await start();
        try {
          const tree = which === "Ours" ? join(s.mnt, treeName) : join(s.mnt, "tree");
          results[`ls${which}`].push(await lsSecs(tree));
        } finally {
          await s.stop();
        }
      }
    }
  }

  // The same read and listing through a daemon over gRPC.
  const daemon = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "daemon", "--listen-address=[::1]:0", ...local],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let address = "";
  const reader = (async () => {
    for await (const t of daemon.stderr.pipeThrough(new TextDecoderStream())) {
      const m = / listening address=(\S+)/.exec(t);
      if (m && !address) address = m[1];
    }
  })();
  try {
    await waitFor(() => address !== "", "daemon", daemon);
    const url = `grpc+http://${address}`;
    const grpc = [
      `--blob-service-addr=${url}`,
      `--directory-service-addr=${url}`,
      `--path-info-service-addr=${url}`,
    ];
    for (let run = 0; run < RUNS; run++) {
      const s = await startOurs(grpc);
      try {
        if (ONLY !== "ls") results.readGrpc.push(await readSecs(join(s.mnt, bigName)));
        if (ONLY !== "read") results.lsGrpc.push(await lsSecs(join(s.mnt, treeName)));
      } finally {
        await s.stop();
      }
    }
  } finally {
    daemon.kill("SIGTERM");
    await daemon.status;
    await reader;
  }

  const mbps = (secs: number[]) => secs.length ? BIG_SIZE / 1e6 / median(secs) : NaN;
  const ms = (secs: number[]) => secs.length ? median(secs) * 1000 : NaN;
  const rOurs = mbps(results.readOurs), rC = mbps(results.readC);
  const wOurs = mbps(results.warmOurs), wC = mbps(results.warmC);
  const lOurs = ms(results.lsOurs), lC = ms(results.lsC);
  const load = loadAverage();
  console.log(
    `FUSE benchmark (${THREADS} threads, median of ${RUNS} runs, fresh mounts, load ${load}` +
      `${CACHE_FLAGS.length ? ", " + CACHE_FLAGS.join(" ") : ""}, ` +
      `kernel readahead ${oursReadaheadKb ?? "?"} KiB for both)`,
  );
  // Parts skipped with --only print nothing rather than NaN rows.
  if (results.readOurs.length) {
    console.log(`sequential read 1 GiB, cold (ours: from the local store; C: memory)`);
    console.log(
      `  ours ${rOurs.toFixed(0)} MB/s, C ${rC.toFixed(0)} MB/s: ${(rOurs / rC).toFixed(2)}x` +
        ` (target >= 0.5x; bound: zstd + BLAKE3 of every chunk, ${
          boundMBps.toFixed(0)
        } MB/s per thread)`,
    );
  }
  if (results.warmOurs.length) {
    console.log(
      `sequential read 1 GiB, warm: page cache dropped, our chunk cache full (both from memory)`,
    );
    console.log(
      `  ours ${wOurs.toFixed(0)} MB/s, C ${wC.toFixed(0)} MB/s: ${
        (wOurs / wC).toFixed(2)
      }x (target >= 0.9x)`,
    );
  }
  if (results.readGrpc.length) {
    console.log(
      `sequential read 1 GiB, grpc+http daemon: ${mbps(results.readGrpc).toFixed(0)} MB/s` +
        (results.readC.length
          ? `: ${(mbps(results.readGrpc) / rC).toFixed(2)}x of C's cold read (target >= 0.2x)`
          : ""),
    );
  }
  if (results.lsOurs.length) {
    console.log(`ls -lR of 10,100 entries`);
    console.log(
      `  ours ${lOurs.toFixed(0)} ms, C ${lC.toFixed(0)} ms: ${
        (lOurs / lC).toFixed(2)
      }x (target <= 1.2x)`,
    );
  }
  if (results.lsGrpc.length) {
    console.log(`ls -lR of 10,100 entries, grpc+http daemon: ${ms(results.lsGrpc).toFixed(0)} ms`);
  }
  console.log(`raw seconds: ${JSON.stringify(results)}`);
} finally {
  await Deno.remove(work, { recursive: true });
}
