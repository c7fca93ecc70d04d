/**
 * S3 benchmark: how fast the store imports and serves NARs with its blobs
 * in S3 (`objectstore+s3://`) and its directories and path infos in
 * PostgreSQL (the scale-out deployment; SQLite where PostgreSQL is not
 * installed, which the output then says), against
 * the same on the local embedded store (packs + SQLite), and against raw S3
 * PUT/GET of the same bytes in 256 KiB objects through the same client
 * (`src/castore/objectstore/s3_client.ts`, 64 requests in flight).
 *
 * Each round runs every side in turn (the order rotates between rounds,
 * so drift in the machine's state hits every side alike), each into a
 * fresh bucket or directory:
 * - `tvix-store import` into the embedded layout, and into S3 + PostgreSQL
 *   (a fresh database per round, from `scripts/postgres_test_server.sh`);
 * - raw PUT of the tree's files cut into 256 KiB objects;
 * - the NAR served over HTTP by a fresh `tvix-store nar-bridge` on each
 *   store (what `nix copy --from` downloads);
 * - raw GET of the objects the raw PUT wrote.
 * Prints medians and spreads in MiB/s of tree (or NAR) bytes, the ratios
 * S3/local and S3/raw, and the load average before and after.
 *
 * The S3 server is `S3_ENDPOINT` (with `S3_ACCESS_KEY`, `S3_SECRET_KEY`,
 * `S3_REGION`) if set, else a radosgw started by `scripts/s3_test_server.sh`
 * (bluestore in a temp dir) and stopped at the end; without Ceph installed
 * the benchmark says so and exits 0. Usage:
 * `deno run -A scripts/bench_s3.ts [--size-mib 256] [--rounds 3]`.
 *
 * @module
 */
import { join } from "node:path";
import { S3Client } from "../src/castore/objectstore/s3_client.ts";
import { mapLimit } from "../src/concurrency.ts";
import { embeddedAddrs, type ServiceAddrs } from "../src/store/services.ts";
import { serviceAddrArgs } from "../src/cli/common.ts";
import { loadAverage, MAIN, median, numberArg } from "./support.ts";

const MiB = 1024 * 1024;
const SIZE_MIB = numberArg("size-mib", 256);
const ROUNDS = numberArg("rounds", 3);
const OBJECT = 256 * 1024;
const INFLIGHT = 64;
const SCRIPT = new URL("./s3_test_server.sh", import.meta.url).pathname;
const PG_SCRIPT = new URL("./postgres_test_server.sh", import.meta.url).pathname;
const td = new TextDecoder();

interface Server {
  endpoint: string;
  accessKey: string;
  secretKey: string;
  region: string;
  stop(): Promise<void>;
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** The S3 server to measure against; `undefined` if there is none to start. */
async function s3Server(tmp: string): Promise<Server | undefined> {
  const given = Deno.env.get("S3_ENDPOINT");
  if (given) {
    return {
      endpoint: given,
      accessKey: Deno.env.get("S3_ACCESS_KEY") ?? "",
      secretKey: Deno.env.get("S3_SECRET_KEY") ?? "",
      region: Deno.env.get("S3_REGION") ?? "us-east-1",
      stop: () => Promise.resolve(),
    };
  }
  const probe = await new Deno.Command("sh", { args: ["-c", "command -v radosgw"] }).output();
  if (!probe.success) return undefined;
  const base = 30000 + 100 * Math.floor(Math.random() * 250);
  const env = {
    S3_DIR: join(tmp, "rgw"),
    S3_PORT: String(freePort()),
    S3_MON_PORT: String(freePort()),
    S3_OSD_PORTS: `${base}-${base + 99}`,
    // Hundreds of MiB per round: on a sparse file, not in the OSD's memory.
    S3_OSD_STORE: "bluestore",
  };
  const out = await new Deno.Command("bash", { args: [SCRIPT, "start"], env, stdout: "piped" })
    .output();
  if (!out.success) throw new Error("scripts/s3_test_server.sh start failed");
  const vars = Object.fromEntries(
    td.decode(out.stdout).trim().split("\n").map((l) => l.split("=", 2) as [string, string]),
  );
  return {
    endpoint: vars.S3_ENDPOINT,
    accessKey: vars.S3_ACCESS_KEY,
    secretKey: vars.S3_SECRET_KEY,
    region: vars.S3_REGION,
    stop: async () => {
      await new Deno.Command("bash", { args: [SCRIPT, "stop"], env }).output();
    },
  };
}

/** A throw-away PostgreSQL cluster: a fresh database URL per call. */
interface Postgres {
  database(name: string): Promise<string>;
  stop(): Promise<void>;
}

/** Starts the test script's cluster in a temp dir; `undefined` if PostgreSQL is not installed. */
async function postgresServer(): Promise<Postgres | undefined> {
  const sh = (...args: string[]) =>
    new Deno.Command("sh", { args: [PG_SCRIPT, ...args], stdout: "piped", stderr: "piped" })
      .output();
  const bindir = await sh("bindir");
  if (!bindir.success) return undefined;
  // A directory of its own: as root, the script hands it to the postgres user.
  const dir = await Deno.makeTempDir({ prefix: "bench-s3-pg-" });
  const started = await sh("start", dir);
  if (!started.success) {
    throw new Error(`postgres_test_server.sh start failed:\n${td.decode(started.stderr)}`);
  }
  const socketDir = td.decode(started.stdout).trim();
  const psql = `${td.decode(bindir.stdout).trim()}/psql`;
  return {
    database: async (name) => {
      const out = await new Deno.Command(psql, {
        args: [
          "-h",
          socketDir,
          "-U",
          "postgres",
          "-d",
          "postgres",
          "-c",
          `CREATE DATABASE ${name}`,
        ],
        stdout: "null",
        stderr: "piped",
      }).output();
      if (!out.success) throw new Error(`CREATE DATABASE failed: ${td.decode(out.stderr)}`);
      return `postgres://postgres@${encodeURIComponent(socketDir)}/${name}`;
    },
    stop: async () => {
      await sh("stop", dir);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Writes a mixed tree of about `mib` MiB (half random, half text) below `root`. */
async function generate(root: string, mib: number): Promise<{ files: string[]; bytes: number }> {
  const sizes = [4 * 1024, 32 * 1024, 200 * 1024, MiB, 6 * MiB];
  const files: string[] = [];
  let bytes = 0;
  let seed = 7;
  for (let i = 0; bytes < mib * MiB; i++) {
    const dir = join(root, `d${i % 16}`);
    await Deno.mkdir(dir, { recursive: true });
    const size = sizes[i % sizes.length];
    const data = new Uint8Array(size);
    if (i % 2 === 0) {
      for (let o = 0; o < size; o += 65536) {
        crypto.getRandomValues(data.subarray(o, Math.min(size, o + 65536)));
      }
    } else {
      for (let o = 0; o < size; o++) {
        seed = (seed * 1103515245 + 12345) >>> 0;
        data[o] = 97 + ((seed >>> 16) % 12) + (o % 64 === 63 ? -87 : 0);
      }
    }
    const path = join(dir, `f${i}`);
    await Deno.writeFile(path, data);
    files.push(path);
    bytes += size;
  }
  return { files, bytes };
}

/** Runs `tvix-store import` of `tree`; returns seconds and the printed store path. */
async function importTree(
  tree: string,
  addrs: ServiceAddrs,
  env: Record<string, string>,
): Promise<{ secs: number; path: string }> {
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "import", "--no-stat-cache", ...serviceAddrArgs(addrs), tree],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const secs = (performance.now() - t0) / 1000;
  if (!out.success) throw new Error(`import failed:\n${td.decode(out.stderr)}`);
  return { secs, path: td.decode(out.stdout).trim() };
}

/**
 * Serves the NAR of `path` the way Nix fetches it: a `tvix-store nar-bridge`
 * on `addrs` (started fresh, so nothing is cached), its narinfo, then the
 * NAR over HTTP. Returns the seconds of the NAR download and its bytes.
 */
async function serveFrom(
  addrs: ServiceAddrs,
  path: string,
  env: Record<string, string>,
): Promise<{ secs: number; n: number }> {
  const bridge = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "nar-bridge", "-l", "127.0.0.1:0", ...serviceAddrArgs(addrs)],
    env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  try {
    let log = "";
    let address: string | undefined;
    for await (const text of bridge.stderr.pipeThrough(new TextDecoderStream())) {
      log += text;
      address = / listening address=(\S+)/.exec(log)?.[1];
      if (address) break;
    }
    if (!address) throw new Error(`nar-bridge did not start:\n${log}`);
    const hash = path.slice("/nix/store/".length, "/nix/store/".length + 32);
    const narinfo = await (await fetch(`http://${address}/${hash}.narinfo`)).text();
    const url = /^URL: (\S+)$/m.exec(narinfo)?.[1];
    if (!url) throw new Error(`no narinfo for ${path}: ${narinfo}`);
    const t0 = performance.now();
    const res = await fetch(`http://${address}/${url}`);
    if (res.status !== 200 || !res.body) throw new Error(`NAR: HTTP ${res.status}`);
    let n = 0;
    for await (const piece of res.body) n += piece.length;
    return { secs: (performance.now() - t0) / 1000, n };
  } finally {
    bridge.kill();
    await bridge.status;
  }
}

const tmp = await Deno.makeTempDir({ prefix: "bench-s3-" });
const server = await s3Server(tmp);
if (!server) {
  console.log("bench_s3: skipped, Ceph's radosgw is not installed and S3_ENDPOINT is not set");
  await Deno.remove(tmp, { recursive: true });
  Deno.exit(0);
}
const pg = await postgresServer().catch(async (err) => {
  await server.stop();
  throw err;
});
/** The S3 side's name: blobs in S3, the rest in PostgreSQL (or SQLite without it). */
const S3_SIDE = pg ? "S3 + PostgreSQL" : "S3 + SQLite";
try {
  const loadBefore = loadAverage();
  const tree = join(tmp, "tree");
  const { files, bytes } = await generate(tree, SIZE_MIB);
  // The raw side's objects: every file cut into 256 KiB pieces, read once now.
  const pieces: Uint8Array[] = [];
  for (const f of files) {
    const data = await Deno.readFile(f);
    for (let o = 0; o < data.length; o += OBJECT) pieces.push(data.subarray(o, o + OBJECT));
  }
  const env = {
    AWS_ACCESS_KEY_ID: server.accessKey,
    AWS_SECRET_ACCESS_KEY: server.secretKey,
    AWS_REGION: server.region,
    AWS_ENDPOINT_URL: server.endpoint,
  };
  const client = (bucket: string) =>
    new S3Client({
      endpoint: new URL(server.endpoint),
      bucket,
      region: server.region,
      credentials: { accessKeyId: server.accessKey, secretAccessKey: server.secretKey },
      maxRequests: INFLIGHT,
    });
  console.log(
    `bench_s3: ${files.length} files, ${(bytes / MiB).toFixed(0)} MiB (${pieces.length} ` +
      `objects of ≤256 KiB); S3 at ${server.endpoint}; ${S3_SIDE}; ${ROUNDS} rounds; ` +
      `load ${loadBefore}`,
  );

  const mibs: Record<string, number[]> = {};
  const record = (side: string, n: number, secs: number) =>
    (mibs[side] ??= []).push(n / MiB / secs);
  let storePath = "";
  for (let round = 0; round < ROUNDS; round++) {
    const bucket = `bench-${Date.now().toString(36)}-${round}`;
    await client(bucket).createBucket();
    const local = embeddedAddrs(join(tmp, `local-${round}`));
    const db = pg
      ? await pg.database(`bench_${round}`)
      : `sqlite://${join(tmp, `s3-${round}.sqlite`)}`;
    const s3: ServiceAddrs = {
      blobServiceAddr: `objectstore+s3://${bucket}/store`,
      directoryServiceAddr: db,
      pathInfoServiceAddr: db,
    };
    const raw = client(bucket);
    const sides: Record<string, () => Promise<void>> = {
      local: async () => {
        const r = await importTree(tree, local, env);
        record("import, local store", bytes, r.secs);
        storePath = r.path;
        const n = await serveFrom(local, r.path, env);
        record("NAR served, local store", n.n, n.secs);
      },
      s3: async () => {
        const r = await importTree(tree, s3, env);
        record(`import, ${S3_SIDE}`, bytes, r.secs);
        if (storePath && r.path !== storePath) throw new Error("store paths differ");
        storePath = r.path;
        const n = await serveFrom(s3, r.path, env);
        record(`NAR served, ${S3_SIDE}`, n.n, n.secs);
      },
      raw: async () => {
        let t0 = performance.now();
        await mapLimit(pieces, INFLIGHT, (p, i) => raw.putObject(`raw/${i}`, p));
        record("raw S3 PUT, same bytes", bytes, (performance.now() - t0) / 1000);
        t0 = performance.now();
        await mapLimit(pieces, INFLIGHT, (_, i) => raw.getObject(`raw/${i}`));
        record("raw S3 GET, same bytes", bytes, (performance.now() - t0) / 1000);
      },
    };
    const order = Object.keys(sides);
    for (let i = 0; i < order.length; i++) await sides[order[(i + round) % order.length]]();
    await Deno.remove(join(tmp, `local-${round}`), { recursive: true });
  }

  const m = (side: string) => median(mibs[side]);
  console.log(`  store path: ${storePath}`);
  for (const [side, xs] of Object.entries(mibs)) {
    const lo = Math.min(...xs).toFixed(1), hi = Math.max(...xs).toFixed(1);
    console.log(
      `  ${side.padEnd(28)} median ${m(side).toFixed(1).padStart(7)} MiB/s (${lo}–${hi})`,
    );
  }
  const ratio = (a: string, b: string) => (m(a) / m(b)).toFixed(2);
  console.log(
    `  import: S3/local ${ratio(`import, ${S3_SIDE}`, "import, local store")}, ` +
      `S3/raw PUT ${ratio(`import, ${S3_SIDE}`, "raw S3 PUT, same bytes")}`,
  );
  console.log(
    `  NAR:    S3/local ${ratio(`NAR served, ${S3_SIDE}`, "NAR served, local store")}, ` +
      `S3/raw GET ${ratio(`NAR served, ${S3_SIDE}`, "raw S3 GET, same bytes")}`,
  );
  console.log(`  load average before ${loadBefore}, after ${loadAverage()}`);
} finally {
  await pg?.stop();
  await server.stop();
  await Deno.remove(tmp, { recursive: true });
}
