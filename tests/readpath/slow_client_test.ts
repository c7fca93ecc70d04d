/**
 * Memory of the daemon's binary cache while clients download a large NAR:
 * slow clients (raw TCP, a few KiB per second) hold only a bounded amount
 * each, full-speed downloads of the same NAR do not pile up buffers for
 * the garbage collector, and everything is released when the slow clients
 * hang up. The bound: the daemon's peak resident memory grows by at most
 * {@linkcode GROWTH_BOUND_MIB} over what it had after a first, small read.
 */
import { join } from "node:path";
import { createHash } from "node:crypto";
import { assert, assertEquals } from "../assert.ts";
import * as nixbase32 from "../../src/store/nixbase32.ts";
import { localStoreArgs } from "../cli/helpers.ts";
import { startDaemon } from "../grpc/daemon_harness.ts";
import { tvixStore, waitFor } from "../narbridge/harness.ts";

/** How far the daemon's peak RSS may grow while the NAR is being downloaded. */
const GROWTH_BOUND_MIB = 64;
const NAR_MIB = 96;
const SLOW_CLIENTS = 4;
const MiB = 1 << 20;

function memKiB(pid: number, field: "VmHWM" | "VmRSS"): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(Deno.readTextFileSync(`/proc/${pid}/status`));
  assert(m, `${field} of ${pid}`);
  return Number(m[1]);
}

/** A raw HTTP/1.1 client that sends a GET and then reads 4 KiB every 200 ms until stopped. */
async function slowClient(addr: string, path: string) {
  const [host, port] = [
    addr.slice(0, addr.lastIndexOf(":")),
    addr.slice(addr.lastIndexOf(":") + 1),
  ];
  const conn = await Deno.connect({ hostname: host, port: Number(port) });
  await conn.write(new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: ${addr}\r\n\r\n`));
  let stop = false;
  let received = 0;
  const buf = new Uint8Array(4096);
  const done = (async () => {
    while (!stop) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) break;
      received += n;
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  return {
    received: () => received,
    close: async () => {
      stop = true;
      conn.close();
      await done;
    },
  };
}

Deno.test("slow NAR downloads hold bounded memory in the daemon and free it when they hang up", async () => {
  const dir = await Deno.makeTempDir({ prefix: "readpath-slow-" });
  const store = join(dir, "store");
  await Deno.mkdir(join(dir, "tree"));
  const f = await Deno.open(join(dir, "tree", "big.bin"), { write: true, create: true });
  const block = new Uint8Array(MiB);
  for (let i = 0; i < NAR_MIB; i++) {
    for (let o = 0; o < MiB; o += 65536) crypto.getRandomValues(block.subarray(o, o + 65536));
    await f.write(block);
  }
  f.close();
  const storePath = (await tvixStore(["import", ...localStoreArgs(store), join(dir, "tree")]))
    .trim();
  const daemon = await startDaemon({
    home: store,
    listen: "127.0.0.1:0",
    args: ["--nar-bridge-listen-address=127.0.0.1:0"],
  });
  const slow: Awaited<ReturnType<typeof slowClient>>[] = [];
  try {
    const http = await waitFor(
      () => /nar-bridge listening address=(\S+)/.exec(daemon.log())?.[1],
      "the built-in bridge's address",
    );
    const hash = storePath.slice("/nix/store/".length, "/nix/store/".length + 32);
    const narinfo = await (await fetch(`http://${http}/${hash}.narinfo`)).text();
    const narPath = "/" + /^URL: (\S+)$/m.exec(narinfo)![1];
    const narHash = /^NarHash: sha256:(\S+)$/m.exec(narinfo)![1];
    // Warm-up: the code paths of a NAR download, then the peak is reset.
    const warm = await fetch(`http://${http}${narPath}`, { headers: { range: "bytes=0-4194303" } });
    assertEquals((await warm.arrayBuffer()).byteLength, 4 * MiB);
    const pid = daemon.child.pid;
    await Deno.writeTextFile(`/proc/${pid}/clear_refs`, "5"); // resets VmHWM
    const base = memKiB(pid, "VmHWM");

    for (let i = 0; i < SLOW_CLIENTS; i++) slow.push(await slowClient(http, narPath));
    // Full-speed downloads meanwhile, checked against the NAR hash.
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`http://${http}${narPath}`);
      const sha = createHash("sha256");
      let size = 0;
      for await (const piece of res.body!) {
        sha.update(piece);
        size += piece.length;
      }
      assertEquals(nixbase32.encode(sha.digest()), narHash);
      assert(size > NAR_MIB * MiB);
    }
    await new Promise((r) => setTimeout(r, 2000));
    for (const c of slow) assert(c.received() > 0, "slow clients got their first bytes");
    const growthMiB = (memKiB(pid, "VmHWM") - base) / 1024;
    assert(
      growthMiB <= GROWTH_BOUND_MIB,
      `daemon peak RSS grew by ${growthMiB.toFixed(1)} MiB (bound ${GROWTH_BOUND_MIB})`,
    );

    // Hanging up releases each response (and the renderer's readers).
    for (const c of slow.splice(0)) await c.close();
    const released = () => daemon.log().split("client went away, response released").length - 1;
    for (let i = 0; i < 200 && released() < SLOW_CLIENTS; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assertEquals(released(), SLOW_CLIENTS, "every slow response was released");
    // And the cache goes on serving.
    const again = await fetch(`http://${http}${narPath}`, { headers: { range: "bytes=-10" } });
    assertEquals(again.status, 206);
    assertEquals((await again.arrayBuffer()).byteLength, 10);
  } catch (err) {
    console.error(daemon.log().split("\n").slice(-30).join("\n"));
    throw err;
  } finally {
    for (const c of slow) await c.close();
    await daemon.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
