/**
 * narinfo benchmark: requests per second from 16 concurrent keep-alive
 * clients (Deno's fetch, one process), against a static file server
 * measured in the same run over the very same narinfo files.
 *
 * Setup: `--paths` (default 200) small trees are imported into a fresh
 * embedded store; `tvix-store nar-bridge` serves it, signing with a fresh
 * key. Its narinfos and NARs are mirrored into a directory, which is
 * - served by the baseline: a minimal `Deno.serve` file server in its own
 *   process (this script with `--serve-static DIR`) that reads each file
 *   from disk per request, 404 when absent. Same runtime, no caching, no
 *   logic: what answering a narinfo costs at the least;
 * - the upstream of a second bridge (empty memory store, `--upstream`),
 *   which pulls every path once before it is measured.
 *
 * Measured, interleaved in each of `--rounds` (default 3) rounds, each for
 * `--seconds` (default 5):
 * - hit: narinfos of stored paths, bridge vs static;
 * - miss: absent paths (404), bridge vs static;
 * - pull-through hit: the second bridge's narinfos after the pull, vs static.
 *
 * Prints each median with its spread (min–max), the ratios bridge/static,
 * and the load average before and after.
 *
 * Usage: `deno run -A scripts/bench_narinfo.ts [--paths 200] [--seconds 5] [--rounds 3]`.
 *
 * @module
 */
import { join } from "node:path";
import { serviceAddrArgs } from "../src/cli/common.ts";
import { embeddedAddrs } from "../src/store/services.ts";
import { parseNarInfo } from "../src/narbridge/narinfo.ts";
import * as nixbase32 from "../src/store/nixbase32.ts";
import {
  loadAverage,
  MAIN,
  median,
  numberArg,
  runTvix,
  stopChildren,
  stringArg,
  watchLines,
} from "./support.ts";

const CLIENTS = 16;

/** Baseline mode: serve files under DIR (as this script's child process). */
const staticDir = stringArg("serve-static");
if (staticDir !== undefined) {
  Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: (a) => console.log(`static listening address=127.0.0.1:${a.port}`),
  }, async (req) => {
    const path = new URL(req.url).pathname;
    if (path.includes("..")) return new Response("bad path\n", { status: 400 });
    try {
      const body = await Deno.readFile(join(staticDir, path));
      return new Response(body, {
        headers: {
          "content-type": path.endsWith(".narinfo")
            ? "text/x-nix-narinfo"
            : "application/octet-stream",
        },
      });
    } catch {
      return new Response("not found\n", { status: 404 });
    }
  });
} else {
  await main();
}

/** Starts a child (`deno run -A <args>`) and waits for its `listening address=` line. */
async function spawnServer(
  args: string[],
  pattern: RegExp,
): Promise<{ child: Deno.ChildProcess; base: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = watchLines(child.stdout, pattern);
  const err = watchLines(child.stderr, pattern);
  out.match.catch(() => {});
  err.match.catch(() => {});
  const m = await Promise.any([out.match, err.match]).catch(() => {
    throw new Error(`server did not start:\n${err.tail.join("\n")}`);
  });
  return { child, base: `http://${m[1]}` };
}

/**
 * GETs `urls` round-robin from {@linkcode CLIENTS} sequential loops for
 * `seconds`; every answer must have status `want`. Returns requests/s.
 */
async function hammer(urls: string[], want: number, seconds: number): Promise<number> {
  let next = 0;
  let done = 0;
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    while (performance.now() < end) {
      const url = urls[next++ % urls.length];
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.status !== want) throw new Error(`${url}: ${res.status}, want ${want}`);
      done++;
    }
  }));
  return done / ((performance.now() - t0) / 1000);
}

function summary(xs: number[]): string {
  return `${median(xs).toFixed(0).padStart(7)} req/s ` +
    `(${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)})`;
}

async function main(): Promise<void> {
  const PATHS = numberArg("paths", 200);
  const SECONDS = numberArg("seconds", 5);
  const ROUNDS = numberArg("rounds", 3);
  const tmp = await Deno.makeTempDir({ prefix: "bench-narinfo-" });
  const children: Deno.ChildProcess[] = [];
  try {
    console.log(`load average before: ${loadAverage()}`);
    const trees: string[] = [];
    for (let i = 0; i < PATHS; i++) {
      const dir = join(tmp, "trees", `t${i}`);
      await Deno.mkdir(dir, { recursive: true });
      await Deno.writeTextFile(join(dir, "file"), `tree ${i}\n`.repeat(1 + (i % 50)));
      trees.push(dir);
    }
    const storeArgs = serviceAddrArgs(embeddedAddrs(join(tmp, "store")));
    console.log(`importing ${PATHS} paths ...`);
    const paths = (await runTvix(["import", "--quiet", ...storeArgs, ...trees])).trim().split("\n");
    const sec = join(tmp, "key.sec"), pub = join(tmp, "key.pub");
    const keygen = await new Deno.Command("nix-store", {
      args: ["--generate-binary-cache-key", "bench-1", sec, pub],
    }).output();
    if (!keygen.success) throw new Error("nix-store --generate-binary-cache-key failed");

    const listening = / listening address=(\S+)/;
    const bridge = await spawnServer([
      MAIN,
      "nar-bridge",
      "-l",
      "127.0.0.1:0",
      `--signing-key-file=${sec}`,
      ...storeArgs,
    ], /nar-bridge listening address=(\S+)/);
    children.push(bridge.child);
    console.log("mirroring into a static cache, pulling through ...");
    // Mirror the signed narinfos and their NARs: the static cache.
    const cache = join(tmp, "cache");
    await Deno.mkdir(join(cache, "nar"), { recursive: true });
    const digests = paths.map((p) => p.slice("/nix/store/".length, "/nix/store/".length + 32));
    for (const d of digests) {
      const text = await (await fetch(`${bridge.base}/${d}.narinfo`)).text();
      await Deno.writeTextFile(join(cache, `${d}.narinfo`), text);
      const url = parseNarInfo(text).url;
      const nar = new Uint8Array(await (await fetch(`${bridge.base}/${url}`)).arrayBuffer());
      await Deno.writeFile(join(cache, url), nar);
    }
    const staticServer = await spawnServer(
      [new URL(import.meta.url).pathname, "--serve-static", cache],
      listening,
    );
    children.push(staticServer.child);
    const puller = await spawnServer([
      MAIN,
      "nar-bridge",
      "-l",
      "127.0.0.1:0",
      `--upstream=${staticServer.base}`,
      `--upstream-trusted-public-keys=${(await Deno.readTextFile(pub)).trim()}`,
      "--blob-service-addr=memory://",
      "--directory-service-addr=memory://",
      "--path-info-service-addr=memory://",
    ], /nar-bridge listening address=(\S+)/);
    children.push(puller.child);
    for (const d of digests) {
      const res = await fetch(`${puller.base}/${d}.narinfo`);
      await res.arrayBuffer();
      if (res.status !== 200) throw new Error(`pull of ${d}: ${res.status}`);
    }

    const urls = (base: string, ds: string[]) => ds.map((d) => `${base}/${d}.narinfo`);
    // Absent paths: random digests (valid nixbase32, so the bridge looks them up).
    const absent = Array.from(
      { length: 64 },
      () => nixbase32.encode(crypto.getRandomValues(new Uint8Array(20))),
    );
    const r = {
      hit: [] as number[],
      staticHit: [] as number[],
      miss: [] as number[],
      staticMiss: [] as number[],
      pulled: [] as number[],
      staticPulled: [] as number[],
    };
    for (let round = 0; round < ROUNDS; round++) {
      r.staticHit.push(await hammer(urls(staticServer.base, digests), 200, SECONDS));
      r.hit.push(await hammer(urls(bridge.base, digests), 200, SECONDS));
      r.staticMiss.push(await hammer(urls(staticServer.base, absent), 404, SECONDS));
      r.miss.push(await hammer(urls(bridge.base, absent), 404, SECONDS));
      r.staticPulled.push(await hammer(urls(staticServer.base, digests), 200, SECONDS));
      r.pulled.push(await hammer(urls(puller.base, digests), 200, SECONDS));
    }
    const ratio = (a: number[], b: number[]) => (median(a) / median(b)).toFixed(2);
    console.log(
      `${CLIENTS} keep-alive clients, ${PATHS} paths, ${ROUNDS} rounds of ${SECONDS} s; ` +
        `median (min–max):`,
    );
    console.log(`  hit              bridge ${summary(r.hit)}  static ${summary(r.staticHit)}`);
    console.log(`  miss (404)       bridge ${summary(r.miss)}  static ${summary(r.staticMiss)}`);
    console.log(
      `  pull-through hit bridge ${summary(r.pulled)}  static ${summary(r.staticPulled)}`,
    );
    console.log(`  ratio hit (bridge / static)              ${ratio(r.hit, r.staticHit)}`);
    console.log(`  ratio miss (bridge / static)             ${ratio(r.miss, r.staticMiss)}`);
    console.log(`  ratio pull-through hit (bridge / static) ${ratio(r.pulled, r.staticPulled)}`);
    console.log(`load average after: ${loadAverage()}`);
  } finally {
    await stopChildren(children);
    await Deno.remove(tmp, { recursive: true });
  }
}
