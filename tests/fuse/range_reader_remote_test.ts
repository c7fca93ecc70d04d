/**
 * The FUSE range reader over a daemon process (`grpc+http://`), as a mount
 * uses it: two Workers' readers sharing a chunk cache, a sequential reader
 * whose requests alternate between them. Readahead from a remote service
 * goes out in bursts, so the client batches many chunks per
 * `SmallBlobService.Read` call instead of sending one call per chunk or
 * two; the daemon's own call count shows it.
 */
import { assert, assertEquals } from "../assert.ts";
import { pseudoRandom } from "../fixtures.ts";
import { sampleValue, scrape } from "../prometheus.ts";
import { startDaemon } from "../grpc/daemon_harness.ts";
import { putBlob } from "../conformance/blob_suite.ts";
import { GrpcBlobService } from "../../src/castore/blob/grpc.ts";
import { bytesEqual, concatBytes } from "../../src/castore/digest.ts";
import { BlobRangeReader } from "../../src/fuse/range_reader.ts";
import { SharedChunkCache } from "../../src/fuse/shared_chunks.ts";

const MIB = 1024 * 1024;
/** Dozens of chunks of 128-512 KiB (79 as FastCDC cuts this one). */
const SIZE = 24 * MIB;
/** What the kernel asks a mount for at a time. */
const READ = 128 * 1024;

Deno.test({
  name: "range reader over a daemon: a sequential read fetches its readahead in bursts of chunks",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const home = await Deno.makeTempDir({ prefix: "tvix-remote-read-" });
  const daemon = await startDaemon({ home, args: ["--metrics-listen-address=127.0.0.1:0"] });
  try {
    const data = pseudoRandom(SIZE, 7);
    const uploader = await GrpcBlobService.fromUrl(`grpc+http://${daemon.address}`);
    const digest = await putBlob(uploader, data).finally(() => uploader.close());
    const metrics = /serving metrics address=(\S+)/.exec(daemon.log())?.[1];
    assert(metrics, "the daemon serves metrics");
    const readCalls = async () =>
      sampleValue(await scrape(metrics), "tvix_grpc_server_handled_total", {
        grpc_method: "/tvix_ts.castore.v1.SmallBlobService/Read",
        grpc_code: "OK",
      });

    const service = await GrpcBlobService.fromUrl(`grpc+http://${daemon.address}`);
    try {
      assert(service.remote, "a daemon is a remote service");
      const chunks = (await service.chunks(digest))!;
      assert(chunks.length >= 40, `${chunks.length} chunks`);
      const before = await readCalls();
      const shared = SharedChunkCache.create(64 * MIB, 512 * 1024, 256 * 1024);
      const readers = [0, 1].map((workerId) =>
        new BlobRangeReader(service, { shared, workerId, workers: 2 })
      );
      for (let offset = 0, n = 0; offset < SIZE; offset += READ, n++) {
        const { pieces, release } = await readers[n % 2].read(digest, SIZE, offset, READ);
        const got = pieces.length === 1 ? pieces[0] : concatBytes(pieces);
        const ok = bytesEqual(got, data.subarray(offset, offset + READ));
        release?.();
        assert(ok, `bytes at ${offset}`);
      }
      for (const r of readers) {
        for (let waited = 0; r.loading > 0; waited++) {
          assert(waited < 5000, "readahead did not finish");
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
      }
      const calls = await readCalls() - before;
      // Each Worker tops its 8 MiB window up once half of it is used: about
      // 4 MiB of chunks per burst, shared by two Workers (11 calls when
      // written). Topped up on every read, it took 53.
      assert(calls <= chunks.length / 3, `${calls} read calls for ${chunks.length} chunks`);
      assertEquals(readers.reduce((n, r) => n + r.loading, 0), 0);
    } finally {
      await service.close();
    }
  } finally {
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
});
