/**
 * Our `SmallBlobService` extension (docs/compatibility.md#small-blobs):
 * a daemon process stores every blob of a batch call exactly as `Put` would,
 * refuses oversized messages and keeps serving after a cancelled call, and
 * reads many blobs per call; our client batches small uploads and reads
 * against it and falls back to one `Put` or `Read` per blob against a
 * server without the extension.
 */
import * as grpc from "@grpc/grpc-js";
import { blake3, concatBytes, toHex } from "../../src/castore/digest.ts";
import { GrpcBlobService } from "../../src/castore/blob/grpc.ts";
import {
  MAX_SMALL_BLOB_READ_BYTES,
  MAX_SMALL_BLOB_READS,
  type PutSmallBlobsResponse,
  type ReadSmallBlobsResponse,
  SMALL_BLOB_SERVICE_NAME,
  SmallBlobOutcome,
  smallBlobServiceDefinition,
} from "../../src/grpc/small_blobs.ts";
import { assert, assertEquals } from "../assert.ts";
import { pseudoRandom } from "../fixtures.ts";
import { sampleValue, scrape } from "../prometheus.ts";
import { startDaemon } from "./daemon_harness.ts";
import { memoryServices, startServer } from "./client_harness.ts";

/**
 * Runs `body` against a daemon process with a raw client of the
 * extension, which sends and accepts messages of any size.
 */
async function withRawClient(
  body: (daemon: { address: string }, client: RawClient) => Promise<void>,
): Promise<void> {
  const home = await Deno.makeTempDir();
  const daemon = await startDaemon({ home });
  const client = new SmallBlobClient(daemon.address, grpc.credentials.createInsecure(), {
    "grpc.max_send_message_length": -1,
    "grpc.max_receive_message_length": -1,
  }) as unknown as RawClient;
  try {
    await body(daemon, client);
  } finally {
    client.close();
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
}

const SmallBlobClient = grpc.makeGenericClientConstructor(
  smallBlobServiceDefinition,
  SMALL_BLOB_SERVICE_NAME,
);

interface RawClient {
  put(
    cb: (err: grpc.ServiceError | null, res: PutSmallBlobsResponse) => void,
  ): grpc.ClientWritableStream<{ data: Uint8Array }>;
  read(req: { digests: Uint8Array[] }): grpc.ClientReadableStream<ReadSmallBlobsResponse>;
  close(): void;
}

/** Deterministic bytes: blob `i` of `size` bytes. */
const blobBytes = (i: number, size: number): Uint8Array => pseudoRandom(size, i + 1);

async function readAll(service: GrpcBlobService, digest: Uint8Array): Promise<Uint8Array> {
  const reader = await service.openRead(digest);
  assert(reader, `blob ${toHex(digest)} not found`);
  const parts: Uint8Array[] = [];
  for await (const piece of reader) parts.push(piece);
  return concatBytes(parts);
}

/** Uploads `blobs` concurrently through `service` and checks every digest and read-back. */
async function uploadAndCheck(service: GrpcBlobService, blobs: Uint8Array[]): Promise<void> {
  const digests = await Promise.all(blobs.map(async (data) => {
    const w = service.openWrite();
    // Two writes per blob, so gathering across writes is exercised too.
    await w.write(data.subarray(0, data.length >> 1));
    await w.write(data.subarray(data.length >> 1));
    return await w.close();
  }));
  for (const [i, data] of blobs.entries()) {
    assertEquals(toHex(digests[i]), toHex(blake3(data)), `digest of blob ${i}`);
  }
  for (const i of [0, 1, 7, blobs.length - 1]) {
    assertEquals(await readAll(service, digests[i]), blobs[i], `read-back of blob ${i}`);
  }
}

/**
 * Reads `blobs` back concurrently with their sizes as hints (as a NAR
 * renderer does), plus a digest nobody stored, and checks every byte.
 */
async function readBackAndCheck(service: GrpcBlobService, blobs: Uint8Array[]): Promise<void> {
  const absent = blake3(new TextEncoder().encode("never uploaded"));
  const got = await Promise.all([...blobs, undefined].map(async (data) => {
    const reader = await service.openRead(data ? blake3(data) : absent, 0, data?.length ?? 100);
    if (!reader) return undefined;
    const parts: Uint8Array[] = [];
    for await (const piece of reader) parts.push(piece);
    return concatBytes(parts);
  }));
  for (const [i, data] of blobs.entries()) {
    assert(got[i], `blob ${i} found`);
    assertEquals(toHex(blake3(got[i]!)), toHex(blake3(data)), `bytes of blob ${i}`);
  }
  assertEquals(got[blobs.length], undefined, "an unknown blob is absent");
}

/** 200 small blobs (one empty, the rest up to 20 KiB) and two larger than a gathered message. */
function mixedBlobs(): Uint8Array[] {
  const blobs: Uint8Array[] = [new Uint8Array(0)];
  for (let i = 1; i < 200; i++) blobs.push(blobBytes(i, (i * 97) % 20_000 + 1));
  blobs.push(blobBytes(1000, 300 * 1024), blobBytes(1001, 1024 * 1024 + 3));
  return blobs;
}

Deno.test({
  name: "small blobs: our client batches uploads and reads with a daemon process, bytes exact",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const home = await Deno.makeTempDir();
  const daemon = await startDaemon({ home, args: ["--metrics-listen-address=127.0.0.1:0"] });
  try {
    const service = await GrpcBlobService.fromUrl(`grpc+http://${daemon.address}`);
    const blobs = mixedBlobs();
    try {
      await uploadAndCheck(service, blobs);
    } finally {
      await service.close();
    }
    // The daemon's own call counts: the 200 small blobs came in a few batch
    // calls, only the two large ones as Put streams of their own.
    const metricsAddress = /serving metrics address=(\S+)/.exec(daemon.log())?.[1];
    assert(metricsAddress, "the daemon serves metrics");
    const families = await scrape(metricsAddress);
    const calls = (method: string) =>
      sampleValue(families, "tvix_grpc_server_handled_total", {
        grpc_method: method,
        grpc_code: "OK",
      });
    const batches = calls("/tvix_ts.castore.v1.SmallBlobService/Put");
    assert(batches >= 200 / 16 && batches < 200, `${batches} batch calls for 200 small blobs`);
    assertEquals(calls("/tvix.castore.v1.BlobService/Put"), 2);

    // Read back by a fresh client: the small blobs, and the one of 300 KiB,
    // in a few batch calls; the one over 1 MiB is answered TOO_LARGE there
    // and read with the upstream Read.
    const reader = await GrpcBlobService.fromUrl(`grpc+http://${daemon.address}`);
    try {
      await readBackAndCheck(reader, blobs);
    } finally {
      await reader.close();
    }
    const after = await scrape(metricsAddress);
    const readCalls = sampleValue(after, "tvix_grpc_server_handled_total", {
      grpc_method: "/tvix_ts.castore.v1.SmallBlobService/Read",
      grpc_code: "OK",
    });
    assert(readCalls >= 2 && readCalls < 20, `${readCalls} batch calls for 203 reads`);
    const reads = calls("/tvix.castore.v1.BlobService/Read");
    const readsAfter = sampleValue(after, "tvix_grpc_server_handled_total", {
      grpc_method: "/tvix.castore.v1.BlobService/Read",
      grpc_code: "OK",
    });
    assertEquals(readsAfter - reads, 1, "one upstream Read, of the blob over 1 MiB");
  } finally {
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test({
  name: "small blobs: against a server without the extension the client falls back to Put and Read",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const services = memoryServices();
  const server = await startServer(services, "127.0.0.1:0", { smallBlobs: false });
  try {
    const service = await GrpcBlobService.fromUrl(server.url);
    try {
      const blobs = mixedBlobs();
      await uploadAndCheck(service, blobs);
      // The blobs really reached the server's backend.
      assert(await services.blob.has(blake3(blobBytes(5, 486))));
      await readBackAndCheck(service, blobs);
    } finally {
      await service.close();
    }
  } finally {
    await server.stop();
  }
});

Deno.test({
  name: "small blobs: the daemon refuses an oversized message and survives a cancelled call",
  sanitizeResources: false,
  sanitizeOps: false,
}, () =>
  withRawClient(async (daemon, client) => {
    const putAll = (blobs: Uint8Array[], cancelAfter?: number) =>
      new Promise<PutSmallBlobsResponse>((resolve, reject) => {
        const call = client.put((err, res) => (err ? reject(err) : resolve(res)));
        call.on("error", () => {});
        for (const [i, data] of blobs.entries()) {
          if (i === cancelAfter) return call.cancel();
          call.write({ data });
        }
        call.end();
      });
    {
      const ok = [blobBytes(1, 10), new Uint8Array(0), blobBytes(2, 5000)];
      const res = await putAll(ok);
      assertEquals(res.digests.map(toHex), ok.map((d) => toHex(blake3(d))));

      const tooBig = putAll([blobBytes(3, 100), blobBytes(4, 4 * 1024 * 1024 + 1)]);
      const err = await tooBig.then(() => undefined, (e: grpc.ServiceError) => e);
      assertEquals(err?.code, grpc.status.RESOURCE_EXHAUSTED, String(err?.details));

      const cancelled = await putAll([blobBytes(5, 100), blobBytes(6, 100)], 1).then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      assertEquals(cancelled?.code, grpc.status.CANCELLED);

      // Still serving, and the earlier blobs are readable through the upstream service.
      const again = await putAll([blobBytes(7, 64)]);
      assertEquals(toHex(again.digests[0]), toHex(blake3(blobBytes(7, 64))));
      const service = await GrpcBlobService.fromUrl(`grpc+http://${daemon.address}`);
      try {
        assertEquals(await readAll(service, res.digests[2]), ok[2]);
      } finally {
        await service.close();
      }
    }
  }));

Deno.test({
  name: "small blobs: a daemon answers batched reads blob by blob and refuses bad requests",
  sanitizeResources: false,
  sanitizeOps: false,
}, () =>
  withRawClient(async (daemon, client) => {
    const readAll = (digests: Uint8Array[]) =>
      new Promise<ReadSmallBlobsResponse[]>((resolve, reject) => {
        const messages: ReadSmallBlobsResponse[] = [];
        const call = client.read({ digests });
        call.on("data", (m: ReadSmallBlobsResponse) => messages.push(m));
        call.on("error", reject);
        call.on("end", () => resolve(messages));
      });
    {
      const small = blobBytes(1, 5000);
      const large = blobBytes(2, MAX_SMALL_BLOB_READ_BYTES + 1);
      const service = await GrpcBlobService.fromUrl(`grpc+http://${daemon.address}`);
      try {
        for (const data of [small, large, new Uint8Array(0)]) {
          const w = service.openWrite();
          await w.write(data);
          await w.close();
        }
      } finally {
        await service.close();
      }
      const absent = blake3(blobBytes(3, 10));
      const asked = [small, absent, large, new Uint8Array(0), small].map((d) =>
        d === absent ? absent : blake3(d)
      );
      const blobs = (await readAll(asked)).flatMap((m) => m.blobs);
      assertEquals(blobs.map((b) => b.outcome), [
        SmallBlobOutcome.FOUND,
        SmallBlobOutcome.NOT_FOUND,
        SmallBlobOutcome.TOO_LARGE,
        SmallBlobOutcome.FOUND,
        SmallBlobOutcome.FOUND,
      ]);
      assertEquals(blobs.map((b) => b.data.length), [5000, 0, 0, 0, 5000]);
      assertEquals(toHex(blake3(blobs[4].data)), toHex(blake3(small)));

      const refused = (digests: Uint8Array[]) =>
        readAll(digests).then(() => undefined, (e: grpc.ServiceError) => e);
      const badDigest = await refused([blake3(small), new Uint8Array(31)]);
      assertEquals(badDigest?.code, grpc.status.INVALID_ARGUMENT, String(badDigest?.details));
      const tooMany = await refused(new Array(MAX_SMALL_BLOB_READS + 1).fill(blake3(small)));
      assertEquals(tooMany?.code, grpc.status.INVALID_ARGUMENT, String(tooMany?.details));

      // A call abandoned after its first message leaves the daemon serving.
      await new Promise<void>((resolve) => {
        const call = client.read({ digests: new Array(MAX_SMALL_BLOB_READS).fill(blake3(small)) });
        call.on("error", (err) => {
          if ((err as grpc.ServiceError).code !== grpc.status.CANCELLED) throw err;
        });
        call.once("data", () => {
          call.cancel();
          resolve();
        });
      });
      const again = (await readAll([blake3(small)])).flatMap((m) => m.blobs);
      assertEquals(toHex(blake3(again[0].data)), toHex(blake3(small)));
    }
  }));
