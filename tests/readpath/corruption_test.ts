/**
 * A chunk damaged behind the store's back (one byte flipped in a pack file)
 * is an error on every reader, never wrong bytes: the built-in binary cache
 * and the standalone bridge over a daemon (a cut body, or a 5xx before it
 * starts), the daemon's gRPC `Read` (DATA_LOSS) and the FUSE mount (EIO),
 * also when the damaged chunk is one being read ahead: a chunk several
 * chunks into a large blob, and a small file far into a many-file tree.
 * What a reader got before the error is always a prefix of the right bytes.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { blake3 } from "../../src/castore/digest.ts";
import { GrpcBlobService } from "../../src/castore/blob/grpc.ts";
import { Code } from "../../src/grpc/status.ts";
import { BlobChunk } from "../../src/proto/tvix/castore/protos/rpc_blobstore.ts";
import { embeddedAddrs, type ServiceAddrs } from "../../src/store/services.ts";
import { remoteStoreArgs } from "../cli/helpers.ts";
import { generatePythonStubs, PyClient, startDaemon } from "../grpc/daemon_harness.ts";
import { Calls } from "../grpc/requests.ts";
import { startServer, waitFor } from "../narbridge/harness.ts";
import { SKIP as FUSE_SKIP, startMount } from "../fuse/harness.ts";
import {
  chunksOf,
  corruptChunk,
  importedTree,
  indexOfBytes,
  type ReadPathTree,
} from "./fixture.ts";

/**
 * Index of the damaged small file: past the renderer's first read-ahead
 * window (256 files), so it is met in a later burst of read-ahead.
 */
const BAD_SMALL = 450;

/** What a download got: its status, the bytes before it ended, and whether it was cut. */
async function download(url: string, range?: string) {
  const res = await fetch(url, { headers: range ? { range } : {} });
  const parts: Uint8Array[] = [];
  let cut = false;
  try {
    for await (const p of res.body!) parts.push(p);
  } catch {
    cut = true;
  }
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) bytes.set(p, (at += p.length) - p.length);
  return { status: res.status, bytes, cut };
}

function isPrefix(got: Uint8Array, of: Uint8Array): boolean {
  return got.length <= of.length && got.every((b, i) => b === of[i]);
}

/** The damaged tree: chunk 8 of big.bin (raw), its last chunk (zstd) and small file 450. */
async function damagedTree(): Promise<ReadPathTree & { bigDigest: Uint8Array }> {
  const t = await importedTree();
  const chunks = chunksOf(t.big);
  await corruptChunk(t.store, chunks[8].digest);
  await corruptChunk(t.store, chunks[chunks.length - 1].digest);
  await corruptChunk(t.store, blake3(t.small[BAD_SMALL]));
  return { ...t, bigDigest: blake3(t.big) };
}

/** Checks every NAR download of the damaged tree from the bridge at `base`. */
async function checkBridge(base: string, t: ReadPathTree, what: string): Promise<void> {
  const hash = t.storePath.slice("/nix/store/".length, "/nix/store/".length + 32);
  const narinfo = await (await fetch(`${base}/${hash}.narinfo`)).text();
  const url = `${base}/${/^URL: (\S+)$/m.exec(narinfo)![1]}`;
  const nar = t.nar;
  const failsCleanly = async (range: string | undefined, start: number, label: string) => {
    const got = await download(url, range);
    assert(got.cut || got.status >= 500, `${what} ${label}: the body must not end normally`);
    if (got.status < 500) {
      assert(isPrefix(got.bytes, nar.subarray(start)), `${what} ${label}: wrong bytes`);
      assert(got.bytes.length < nar.length - start, `${what} ${label}: all bytes arrived`);
    }
  };
  await failsCleanly(undefined, 0, "whole NAR");
  const big = indexOfBytes(nar, t.big.subarray(0, 64));
  const c8 = big + chunksOf(t.big)[8].offset;
  await failsCleanly(`bytes=${c8 - 10}-`, c8 - 10, "range into the damaged chunk");
  // Small files before the damaged one: the range starts after big.bin,
  // so its damaged chunks are never read, and the bytes are right.
  const f0 = indexOfBytes(nar, t.small[0]);
  const f100 = indexOfBytes(nar, t.small[100]);
  const ok = await download(url, `bytes=${f0}-${f100}`);
  assertEquals(ok.status, 206, `${what}: range before the damage`);
  assertEquals(ok.bytes, nar.subarray(f0, f100 + 1), `${what}: range before the damage`);
  // A range that reaches the damaged small file, read ahead with its neighbours.
  await failsCleanly(`bytes=${f100}-`, f100, "range over the damaged small file");
  // zstd: the compressed body is cut (its length was never promised).
  const zst = await download(`${url}.zst`);
  assert(zst.cut || zst.status >= 500, `${what} .nar.zst: the body must not end normally`);
  // The server keeps serving.
  assertEquals((await fetch(`${base}/nix-cache-info`).then((r) => r.text())).length > 0, true);
}

Deno.test("a damaged chunk fails the daemon's binary cache, the bridge over it and gRPC Read", async () => {
  const t = await damagedTree();
  const stubs = await generatePythonStubs();
  const daemon = await startDaemon({
    home: t.store,
    listen: "127.0.0.1:0",
    args: ["--nar-bridge-listen-address=127.0.0.1:0"],
  });
  let bridge: Awaited<ReturnType<typeof startServer>> | undefined;
  const py = new PyClient(stubs, daemon.grpcioTarget);
  try {
    const http = await waitFor(
      () => /nar-bridge listening address=(\S+)/.exec(daemon.log())?.[1],
      "the built-in bridge's address",
    );
    await checkBridge(`http://${http}`, t, "built-in bridge");

    bridge = await startServer([
      "nar-bridge",
      "-l",
      "127.0.0.1:0",
      ...remoteStoreArgs(`grpc+http://${daemon.address}`),
    ]);
    await checkBridge(`http://${bridge.address}`, t, "bridge over the daemon");

    const calls = new Calls(py);
    for (
      const [digest, data] of [[t.bigDigest, t.big], [
        blake3(t.small[BAD_SMALL]),
        t.small[BAD_SMALL],
      ]]
    ) {
      const a = await calls.blobRead(digest);
      assertEquals(a.code, Code.DATA_LOSS, a.details);
      const got = a.responses.map((m) => BlobChunk.decode(m).data);
      const bytes = new Uint8Array(got.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of got) bytes.set(p, (at += p.length) - p.length);
      assert(isPrefix(bytes, data) && bytes.length < data.length, "Read sent wrong bytes");
    }
    // Undamaged blobs still read.
    const fine = await calls.blobReadOk(blake3(t.small[BAD_SMALL - 1]));
    assertEquals(fine.length, 1);
    assertEquals(fine[0], t.small[BAD_SMALL - 1]);

    // Our client reads the damaged file with its neighbours in one batch
    // call (SmallBlobService.Read): only the damaged one fails.
    const client = await GrpcBlobService.fromUrl(`grpc+http://${daemon.address}`);
    try {
      const around = [-3, -2, -1, 0, 1, 2, 3].map((d) => t.small[BAD_SMALL + d]);
      const results = await Promise.allSettled(around.map(async (data) => {
        const reader = await client.openRead(blake3(data), 0, data.length);
        const parts: Uint8Array[] = [];
        for await (const p of reader!) parts.push(p);
        return parts;
      }));
      for (const [i, r] of results.entries()) {
        if (i === 3) {
          assert(r.status === "rejected", "the damaged file must fail");
          assert(/DATA_LOSS/.test(String(r.reason)), String(r.reason));
        } else {
          assert(
            r.status === "fulfilled",
            `neighbour ${i - 3}: ${(r as PromiseRejectedResult).reason}`,
          );
          assertEquals(r.value.length, 1);
          assertEquals(r.value[0], around[i]);
        }
      }
    } finally {
      await client.close();
    }
  } catch (err) {
    console.error(daemon.log());
    throw err;
  } finally {
    await py.close();
    await bridge?.stop();
    await daemon.stop();
    await Deno.remove(stubs, { recursive: true });
    await t.remove();
  }
});

/** Reads the damaged tree through a mount of `addrs` and checks what fails and what does not. */
async function checkMount(addrs: ServiceAddrs, t: ReadPathTree, what: string): Promise<void> {
  const mount = await startMount({ addrs });
  try {
    const base = join(mount.mountpoint, t.storePath.slice("/nix/store/".length));
    const readFile = async (name: string): Promise<Uint8Array | Error> => {
      try {
        return await Deno.readFile(join(base, name));
      } catch (err) {
        return err as Error;
      }
    };
    const isEio = (r: Uint8Array | Error) =>
      r instanceof Error && /EIO|Input\/output error/.test(String(r));
    // Sequential read of big.bin: the damaged chunk 8 is met by readahead.
    const big = await readFile("big.bin");
    assert(isEio(big), `${what}: big.bin must fail with EIO, got ${big}`);
    // Its undamaged start still reads (a range before chunk 8).
    const f = await Deno.open(join(base, "big.bin"));
    const head = new Uint8Array(100_000);
    assertEquals(await f.read(head), head.length);
    f.close();
    assertEquals(head, t.big.subarray(0, head.length), what);
    const bad = await readFile(`small/f${BAD_SMALL}`);
    assert(isEio(bad), `${what}: small/f${BAD_SMALL} must fail with EIO, got ${bad}`);
    assertEquals(await readFile(`small/f${BAD_SMALL - 1}`), t.small[BAD_SMALL - 1], what);
  } finally {
    await mount.stop();
  }
}

Deno.test({
  name: "a damaged chunk is EIO on the mount, local or over a daemon, read ahead or not",
  ignore: FUSE_SKIP,
  fn: async () => {
    const t = await damagedTree();
    try {
      await checkMount(embeddedAddrs(t.store), t, "local mount");
      const daemon = await startDaemon({ home: t.store, listen: "127.0.0.1:0" });
      try {
        const url = `grpc+http://${daemon.address}`;
        await checkMount(
          { blobServiceAddr: url, directoryServiceAddr: url, pathInfoServiceAddr: url },
          t,
          "mount over a daemon",
        );
      } finally {
        await daemon.stop();
      }
    } finally {
      await t.remove();
    }
  },
});
