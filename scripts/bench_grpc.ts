/**
 * gRPC blob streaming benchmark: one large blob (default 1 GiB) through a
 * `tvix-store daemon` process (pack blobs in a temp dir, the embedded default), with
 * `Put` and then `Read` as single streams from a client process, beside
 * grpc-js on Node doing the same transfer with nothing behind it (so the
 * ratio is our whole stack against the bare transport). Also measures the
 * product read path (`openRead`: Stat, then each chunk read and verified).
 *
 * Our Deno client is also run against the Node server, to tell client
 * cost from server cost. Prints MB/s each way, the peak RSS (VmHWM) of
 * server and client for each phase, and checks the daemon's peak RSS stays within 400 MiB (exit 1 if
 * not). Node's grpc-js is installed with npm under `.bench/npm` on first use.
 *
 * Usage: `deno run -A scripts/bench_grpc.ts [--size-mib 1024]`
 * (the `--client …` form is how it runs its own client processes).
 *
 * @module
 */
import { join } from "node:path";
import { BlobServiceClient } from "../src/proto/tvix/castore/protos/rpc_blobstore.ts";
import { GrpcBlobService } from "../src/castore/blob/grpc.ts";
import { channelFor, clientOn, serverStream } from "../src/grpc/channel.ts";
import { fromHex, toHex } from "../src/castore/digest.ts";
import { MAIN, numberArg, resetPeakRss, watchLines } from "./support.ts";

const MiB = 1024 * 1024;
const ROOT = new URL("..", import.meta.url).pathname;
const NODE_SCRIPT = join(ROOT, "scripts", "bench_grpc_node.cjs");
const NPM_DIR = join(ROOT, ".bench", "npm");
const GRPC_JS = "@grpc/grpc-js@1.14.3";
/** The daemon's memory budget while streaming (issue #2). */
const DAEMON_RSS_LIMIT_KIB = 400 * 1024;

/** What a client process reports. */
interface ClientResult {
  seconds: number;
  bytes: number;
  hwmKiB: number;
  digest?: string;
  chunks?: number;
}

// ---------------------------------------------------------------- client side

/** A random MiB, stamped with the MiB's index every 4 KiB (as the Node baseline does). */
function generator(): (index: number, length: number) => Uint8Array {
  const buf = new Uint8Array(MiB);
  for (let at = 0; at < MiB; at += 65536) crypto.getRandomValues(buf.subarray(at, at + 65536));
  const words = new Uint32Array(buf.buffer);
  return (index, length) => {
    for (let w = 0; w < words.length; w += 1024) words[w] = index;
    return buf.subarray(0, length);
  };
}

function hwmKiB(pid: number | "self" = "self"): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
  if (!m) throw new Error(`no VmHWM for ${pid}`);
  return Number(m[1]);
}

async function runClient(mode: string, url: string, size: number, digestHex?: string) {
  const started = performance.now();
  const result: Omit<ClientResult, "seconds" | "hwmKiB"> = { bytes: 0 };
  if (mode === "put") {
    const blob = await GrpcBlobService.fromUrl(url);
    const writer = blob.openWrite();
    const gen = generator();
    // Writes copy the data before resolving, so one buffer is reused.
    for (let i = 0; result.bytes < size; i++) {
      const piece = gen(i, Math.min(MiB, size - result.bytes));
      await writer.write(piece);
      result.bytes += piece.length;
    }
    result.digest = toHex(await writer.close());
    await blob.close();
  } else if (mode === "read") {
    // The bare Read RPC as one stream, as the baseline does it.
    const lease = await channelFor(url);
    const client = clientOn(lease, BlobServiceClient);
    for await (const { data } of serverStream(client.read({ digest: fromHex(digestHex!) }))) {
      result.bytes += data.length;
    }
    lease.release();
  } else if (mode === "open") {
    // The product path: Stat(send_chunks), then every chunk read and verified.
    const blob = await GrpcBlobService.fromUrl(url);
    const digest = fromHex(digestHex!);
    result.chunks = (await blob.chunks(digest))?.length;
    const reader = await blob.openRead(digest);
    if (!reader) throw new Error("blob not found");
    for await (const piece of reader) result.bytes += piece.length;
    await blob.close();
  } else {
    throw new Error(`unknown client mode ${mode}`);
  }
  const seconds = (performance.now() - started) / 1000;
  console.log(JSON.stringify({ ...result, seconds, hwmKiB: hwmKiB() }));
}

// ---------------------------------------------------------- orchestrator side

async function spawnJson<T>(cmd: string, args: string[], env?: Record<string, string>): Promise<T> {
  const out = await new Deno.Command(cmd, { args, env, stdin: "null", stderr: "inherit" }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed (exit ${out.code}): ${text}`);
  return JSON.parse(text.split("\n").at(-1)!) as T;
}

/** A phase body running our Deno client (this script's `--client` form) against `url`. */
function ourClient(
  url: string,
  size: number,
  mode: string,
  digest: string,
): () => Promise<ClientResult> {
  return () =>
    spawnJson<ClientResult>(Deno.execPath(), [
      "run",
      "-A",
      import.meta.filename!,
      "--client",
      mode,
      url,
      String(size),
      digest,
    ]);
}

interface Phase {
  name: string;
  client: ClientResult;
  serverHwmKiB: number;
}

/** Runs one client phase against the server process `pid`. */
async function phase(
  name: string,
  pid: number,
  run: () => Promise<ClientResult>,
): Promise<Phase> {
  resetPeakRss(pid);
  const client = await run();
  return { name, client, serverHwmKiB: hwmKiB(pid) };
}

async function ensureNodeGrpc(): Promise<void> {
  try {
    Deno.statSync(join(NPM_DIR, "node_modules", "@grpc", "grpc-js", "package.json"));
    return;
  } catch { /* not installed yet */ }
  console.log(`installing ${GRPC_JS} for the Node baseline into ${NPM_DIR} ...`);
  Deno.mkdirSync(NPM_DIR, { recursive: true });
  const npm = await new Deno.Command("npm", {
    args: ["install", "--prefix", NPM_DIR, "--no-audit", "--no-fund", GRPC_JS],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!npm.success) throw new Error("npm install failed");
}

async function benchDaemon(size: number): Promise<Phase[]> {
  const dir = await Deno.makeTempDir({ prefix: "bench-grpc-" });
  const daemon = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      MAIN,
      "daemon",
      "--listen-address",
      "127.0.0.1:0",
      "--blob-service-addr",
      `pack://${join(dir, "packs")}`,
      "--directory-service-addr",
      "memory://",
      "--path-info-service-addr",
      "memory://",
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log = watchLines(daemon.stderr, /listening address=(\S+)/);
  try {
    const url = `grpc+http://${(await log.match)[1]}`;
    const client = (mode: string, digest = "") => ourClient(url, size, mode, digest);
    const put = await phase("Put", daemon.pid, client("put"));
    const digest = put.client.digest!;
    const read = await phase("Read", daemon.pid, client("read", digest));
    const open = await phase("openRead (chunked, verified)", daemon.pid, client("open", digest));
    for (const p of [put, read, open]) {
      if (p.client.bytes !== size) throw new Error(`${p.name} moved ${p.client.bytes} bytes`);
    }
    console.log(`daemon: blob ${digest} in ${open.client.chunks} chunks`);
    return [put, read, open];
  } catch (err) {
    console.error(log.tail.join("\n"));
    throw err;
  } finally {
    try {
      daemon.kill("SIGTERM");
    } catch { /* already gone */ }
    const status = await daemon.status;
    if (status.code !== 0 && status.signal === null) {
      console.error(`daemon exited with ${status.code}:\n${log.tail.join("\n")}`);
    }
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * The Node baseline server; against it, the Node client and (to isolate
 * our client from our server) our Deno client.
 */
async function benchNode(size: number): Promise<{ node: Phase[]; denoClient: Phase[] }> {
  const env = { NODE_PATH: join(NPM_DIR, "node_modules") };
  const server = new Deno.Command("node", {
    args: [NODE_SCRIPT, "server"],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const out = watchLines(server.stdout, /"port":(\d+)/);
  try {
    const port = (await out.match)[1];
    const client = (mode: string) => () =>
      spawnJson<ClientResult>("node", [NODE_SCRIPT, mode, port, String(size)], env);
    const put = await phase("Put", server.pid, client("put"));
    const read = await phase("Read", server.pid, client("read"));
    const url = `grpc+http://127.0.0.1:${port}`;
    const deno = (mode: string, digest = "") => ourClient(url, size, mode, digest);
    // This server takes the size to serve from the request's digest field.
    const sizeHex = toHex(new TextEncoder().encode(String(size)));
    const denoPut = await phase("Put", server.pid, deno("put"));
    const denoRead = await phase("Read", server.pid, deno("read", sizeHex));
    return { node: [put, read], denoClient: [denoPut, denoRead] };
  } finally {
    server.kill("SIGTERM");
    await server.status;
  }
}

const mbps = (p: Phase) => p.client.bytes / 1e6 / p.client.seconds;
const mib = (kib: number) => `${(kib / 1024).toFixed(0)} MiB`;

async function main(): Promise<void> {
  const size = numberArg("size-mib", 1024) * MiB;
  const load = Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  console.log(
    `gRPC blob streaming, ${size / MiB} MiB, one stream each way ` +
      `(Deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} cores, load ${load})`,
  );
  await ensureNodeGrpc();
  const ours = await benchDaemon(size);
  const { node, denoClient } = await benchNode(size);
  const baseline = (p: Phase) =>
    node.find((n) => n.name === p.name) ??
      (p.name.startsWith("openRead") ? node.find((n) => n.name === "Read") : undefined);

  console.log(
    "\nWhole stack: our client + daemon (pack store) vs grpc-js Node client + server",
  );
  console.log(
    "phase                          tvix-store        Node baseline   ratio   " +
      "daemon peak   client peak   Node server/client peak",
  );
  for (const p of ours) {
    const base = baseline(p);
    console.log(
      [
        p.name.padEnd(30),
        `${mbps(p).toFixed(0)} MB/s`.padStart(10),
        (base ? `${mbps(base).toFixed(0)} MB/s` : "-").padStart(20),
        (base ? (mbps(p) / mbps(base)).toFixed(2) : "-").padStart(7),
        mib(p.serverHwmKiB).padStart(13),
        mib(p.client.hwmKiB).padStart(13),
        (base ? `${mib(base.serverHwmKiB)} / ${mib(base.client.hwmKiB)}` : "-").padStart(26),
      ].join(" "),
    );
  }
  console.log("\nClient alone: our Deno client vs the Node client, both against the Node server");
  console.log(
    "phase                          Deno client       Node client     ratio   client peak",
  );
  for (const p of denoClient) {
    const base = baseline(p)!;
    console.log(
      [
        p.name.padEnd(30),
        `${mbps(p).toFixed(0)} MB/s`.padStart(11),
        `${mbps(base).toFixed(0)} MB/s`.padStart(17),
        (mbps(p) / mbps(base)).toFixed(2).padStart(9),
        `${mib(p.client.hwmKiB)} (Node ${mib(base.client.hwmKiB)})`.padStart(26),
      ].join(" "),
    );
  }
  const peak = Math.max(...ours.map((p) => p.serverHwmKiB));
  const ok = peak <= DAEMON_RSS_LIMIT_KIB;
  console.log(
    `\ndaemon peak RSS ${mib(peak)} (limit ${mib(DAEMON_RSS_LIMIT_KIB)}): ${
      ok ? "ok" : "OVER LIMIT"
    }`,
  );
  if (!ok) Deno.exit(1);
}

if (Deno.args[0] === "--client") {
  const [, mode, url, size, digest] = Deno.args;
  await runClient(mode, url, Number(size), digest);
  // grpc-js may keep timers referenced; the client is done.
  Deno.exit(0);
} else {
  await main();
}
