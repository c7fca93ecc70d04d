/**
 * Child of write_batching_test.ts: a daemon's gRPC server and our client in
 * one process, an 8 MiB blob uploaded and read back through them, so that
 * every HTTP/2 frame of both directions is written by this process.
 */
import { GrpcBlobService } from "../../src/castore/blob/grpc.ts";
import { blake3, bytesEqual, concatBytes } from "../../src/castore/digest.ts";
import { memoryServices, startServer } from "./client_harness.ts";
import { pseudoRandom } from "../fixtures.ts";

const data = pseudoRandom(8 << 20, 42);
const server = await startServer(memoryServices(), "127.0.0.1:0");
const blob = await GrpcBlobService.fromUrl(server.url);
const writer = blob.openWrite();
for (let at = 0; at < data.length; at += 1 << 20) {
  await writer.write(data.subarray(at, at + (1 << 20)));
}
const digest = await writer.close();
const parts: Uint8Array[] = [];
for await (const piece of (await blob.openRead(digest))!) parts.push(piece);
await blob.close();
await server.stop();
if (!bytesEqual(digest, blake3(data)) || !bytesEqual(concatBytes(parts), data)) {
  console.error("blob did not round-trip");
  Deno.exit(1);
}
