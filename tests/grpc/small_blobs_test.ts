/**
 * Our `SmallBlobService` extension (docs/compatibility.md#small-blob-uploads):
 * a daemon process stores every blob of a batch call exactly as `Put` would,
 * refuses oversized messages and keeps serving after a cancelled call; our
 * client batches small uploads against it and falls back to one `Put` per
 * blob against a server without the extension.
 */
import * as grpc from "@grpc/grpc-js";
import { blake3, concatBytes, toHex } from "../../src/castore/digest.ts";
import { GrpcBlobService } from "../../src/castore/blob/grpc.ts";
import {
  type PutSmallBlobsResponse,
  SMALL_BLOB_SERVICE_NAME,
  smallBlobServiceDefinition,
} from "../../src/grpc/small_blobs.ts";
import { assert, assertEquals } from "../assert.ts";
import { pseudoRandom } from "../fixtures.ts";
import { startDaemon } from "./daemon_harness.ts";
import { memoryServices, startServer } from "./client_harness.ts";

const SmallBlobClient = grpc.makeGenericClientConstructor(
  smallBlobServiceDefinition,
  SMALL_BLOB_SERVICE_NAME,
);

interface RawClient {
  put(
    cb: (err: grpc.ServiceError | null, res: PutSmallBlobsResponse) => void,
  ): grpc.ClientWritableStream<{ data: Uint8Array }>;
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

/** 200 small blobs (one empty, the rest up to 20 KiB) and two larger than a gathered message. */
function mixedBlobs(): Uint8Array[] {
  const blobs: Uint8Array[] = [new Uint8Array(0)];
  for (let i = 1; i < 200; i++) blobs.push(blobBytes(i, (i * 97) % 20_000 + 1));
  blobs.push(blobBytes(1000, 300 * 1024), blobBytes(1001, 1024 * 1024 + 3));
  return blobs;
}

Deno.test({
  name: "small blobs: our client batches uploads to a daemon process, digests and bytes exact",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const home = await Deno.makeTempDir();
  const daemon = await startDaemon({ home });
  try {
    const service = await GrpcBlobService.fromUrl(`grpc+http://${daemon.address}`);
    try {
      await uploadAndCheck(service, mixedBlobs());
    } finally {
      await service.close();
    }
  } finally {
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test({
  name: "small blobs: against a server without the extension the client falls back to Put",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const services = memoryServices();
  const server = await startServer(services, "127.0.0.1:0", { smallBlobs: false });
  try {
    const service = await GrpcBlobService.fromUrl(server.url);
    try {
      await uploadAndCheck(service, mixedBlobs());
      // The blobs really reached the server's backend.
      assert(await services.blob.has(blake3(blobBytes(5, 486))));
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
}, async () => {
  const home = await Deno.makeTempDir();
  const daemon = await startDaemon({ home });
  const client = new SmallBlobClient(
    daemon.address,
    grpc.credentials.createInsecure(),
    { "grpc.max_send_message_length": -1 },
  ) as unknown as RawClient;
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
  try {
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
  } finally {
    client.close();
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
});
