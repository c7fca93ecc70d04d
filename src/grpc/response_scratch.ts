/**
 * One reused buffer per thread for encoding gRPC response messages.
 *
 * grpc-js (1.14, pinned in deno.json) calls a method's response
 * serializer only while framing a message, and copies what it returns
 * into the frame (after the 5-byte gRPC header) before it returns. The
 * serializer's own buffer is therefore garbage at once; streaming a blob
 * allocated one per message, and a daemon serving reads spent a large
 * part of its time collecting them. Encoding into this buffer instead
 * costs nothing per message. Serializations never overlap: grpc-js runs
 * each one (serialize, then copy) in one synchronous step, when the
 * message leaves the stream's write queue, and its server does not
 * compress responses. Re-check both when upgrading grpc-js.
 *
 * @module
 */
import { Buffer } from "node:buffer";

/**
 * Size of the reused buffer: the largest message that is encoded in place.
 * Room for both users' largest messages, a 1 MiB `BlobService.Read`
 * message and a `SmallBlobService.Read` response (a 1 MiB blob after up
 * to 256 KiB of others).
 */
export const RESPONSE_SCRATCH_BYTES = 2 * 1024 * 1024 + 64;

let scratch: Buffer | undefined;

/**
 * A buffer of `size` bytes to encode one response message into, valid only
 * until the serializer returns: the shared scratch if it fits, else a
 * buffer of its own.
 */
export function responseScratch(size: number): Buffer {
  if (size > RESPONSE_SCRATCH_BYTES) return Buffer.allocUnsafe(size);
  scratch ??= Buffer.allocUnsafe(RESPONSE_SCRATCH_BYTES);
  return scratch.subarray(0, size);
}
