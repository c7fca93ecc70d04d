/**
 * The server of our `SmallBlobService` extension (`src/grpc/small_blobs.ts`,
 * docs/compatibility.md#small-blobs): many whole blobs per call, each
 * stored exactly as a `BlobService.Put` of it would be, or read and sent
 * whole as the backend returns it (verified, as every read of it is).
 *
 * @module
 */
import type { handleClientStreamingCall, handleServerStreamingCall } from "@grpc/grpc-js";
import { type BlobService, writeWholeBlob } from "../castore/blob/service.ts";
import { bytesEqual, concatBytes, type Digest, EMPTY_DIGEST } from "../castore/digest.ts";
import { JobSet } from "../concurrency.ts";
import { clientStreamHandler, receiveAll, serverStreamHandler } from "../grpc/server_call.ts";
import {
  MAX_SMALL_BLOB_READ_BYTES,
  MAX_SMALL_BLOB_READS,
  MAX_SMALL_BLOBS_PER_CALL,
  type PutSmallBlobsResponse,
  READ_RESPONSE_BYTES,
  type ReadSmallBlobsRequest,
  type ReadSmallBlobsResponse,
  type SmallBlob,
  type SmallBlobContents,
  SmallBlobOutcome,
} from "../grpc/small_blobs.ts";
import { Code, RpcError } from "../grpc/status.ts";
import { releaseReceivedMessage } from "../grpc/received_message.ts";
import { releaseWhole } from "../castore/blob/chunk_codec.ts";
import {
  checkChunkSize,
  checkDigest,
  MAX_PUT_MESSAGE_BYTES,
  STALL_MS,
  uploadError,
} from "./blob_handler.ts";

/**
 * Blobs of one call stored at once. Enough to keep the backend's chunk
 * Workers and writes busy; while they are, the call's stream is paused
 * and the client held back by HTTP/2 flow control.
 */
const STORES_IN_FLIGHT = 16;

/**
 * Blobs of one `Read` call being read at once, ahead of the one being
 * sent. Opened together, a pack store looks them up and reads them
 * together (`PackBlobService.#readSingles`); at most this many blobs of
 * up to {@linkcode MAX_SMALL_BLOB_READ_BYTES} each, and the message being
 * sent, are held per call (and only the message once the client has not
 * read for `STALL_MS`).
 */
const READS_AHEAD = 16;

/** Options of {@linkcode smallBlobHandler}. */
export interface SmallBlobHandlerOptions {
  /** Largest blob message accepted, in bytes (default `MAX_PUT_MESSAGE_BYTES`). */
  maxMessageBytes?: number;
}

/** The `SmallBlobService` handlers over `blob`. */
export function smallBlobHandler(
  blob: BlobService,
  opts: SmallBlobHandlerOptions = {},
): {
  put: handleClientStreamingCall<SmallBlob, PutSmallBlobsResponse>;
  read: handleServerStreamingCall<ReadSmallBlobsRequest, ReadSmallBlobsResponse>;
} {
  const maxMessageBytes = opts.maxMessageBytes ?? MAX_PUT_MESSAGE_BYTES;
  return {
    put: clientStreamHandler<SmallBlob, PutSmallBlobsResponse>(
      "SmallBlobService/Put",
      async (call) => {
        const digests: Digest[] = [];
        const stores = new JobSet({
          maxJobs: STORES_IN_FLIGHT,
          // As `Put` reports it: UNAVAILABLE for a store out of reach.
          mapError: (err) =>
            err instanceof RpcError ? err : uploadError("error storing a blob", err),
        });
        let count = 0;
        const check = (m: SmallBlob) => {
          checkChunkSize(m.data.length, maxMessageBytes);
          if (++count > MAX_SMALL_BLOBS_PER_CALL) {
            throw new RpcError(
              Code.RESOURCE_EXHAUSTED,
              `more than ${MAX_SMALL_BLOBS_PER_CALL} blobs in one call`,
            );
          }
        };
        try {
          let index = 0;
          for await (const { data } of receiveAll(call, check)) {
            const at = index++;
            await stores.add(async () => {
              digests[at] = await writeWholeBlob(blob, data);
              // Stored: the backend has its copy (see BlobService.writeWhole).
              releaseReceivedMessage(data);
            });
          }
          await stores.drain();
        } catch (err) {
          // Blobs already stored are whole; nothing refers to them unless the
          // client retries, and garbage collection reclaims them otherwise.
          await stores.drain().catch(() => {});
          throw err;
        }
        return { digests };
      },
    ),
    read: serverStreamHandler<ReadSmallBlobsRequest, ReadSmallBlobsResponse>(
      "SmallBlobService/Read",
      async ({ digests }, send) => {
        if (digests.length > MAX_SMALL_BLOB_READS) {
          throw new RpcError(
            Code.INVALID_ARGUMENT,
            `more than ${MAX_SMALL_BLOB_READS} blobs in one call`,
          );
        }
        digests.forEach(checkDigest);
        // Blobs being read, ahead of the next message: digests[next - reads.length] up to next.
        const reads: BlobRead[] = [];
        let next = 0;
        // Opened in one synchronous run, so the backend sees them together.
        const readAhead = () => {
          while (next < digests.length && reads.length < READS_AHEAD) {
            reads.push(new BlobRead(blob, digests[next++]));
          }
        };
        // A client that stops reading should not pin the read-ahead (up to
        // READS_AHEAD blobs of 1 MiB) for as long as it likes: after STALL_MS
        // it is dropped, and read again once the client reads on.
        const park = () => {
          next -= reads.length;
          reads.length = 0;
        };
        while (reads.length > 0 || next < digests.length) {
          if (reads.length === 0) readAhead();
          // The next blob, and after it those already read, up to a message's worth.
          const blobs: SmallBlobContents[] = [];
          let bytes = 0;
          do {
            const read = reads.shift()!;
            let contents: SmallBlobContents;
            try {
              contents = await read.contents;
            } catch (err) {
              if (blobs.length === 0) throw err;
              // The blobs before it are good: they go out first, then this
              // one fails the call, as `BlobService.Read` of it would.
              reads.unshift(read);
              break;
            }
            blobs.push(contents);
            bytes += contents.data.length;
          } while (reads.length > 0 && reads[0].done && bytes < READ_RESPONSE_BYTES);
          if (reads.length <= READS_AHEAD / 2) readAhead();
          const stall = setTimeout(park, STALL_MS);
          const open = await send({ blobs }).finally(() => clearTimeout(stall));
          // A client gone: what was read ahead is dropped with the call.
          if (!open) return;
          // Taken, so serialized: the blobs' buffers are ours (pieces belong
          // to the reader, see BlobService.openRead) and are freed now. Left
          // to the collector, a mount reading through here spent a fifth of
          // the daemon's CPU on them.
          for (const { data } of blobs) releaseWhole(data);
        }
      },
    ),
  };
}

/** One blob of a `Read` call, being read. */
class BlobRead {
  /** The blob; rejects as `BlobService.Read` of it would fail. */
  readonly contents: Promise<SmallBlobContents>;
  /** Whether {@linkcode contents} has settled. */
  done = false;

  constructor(blob: BlobService, digest: Digest) {
    this.contents = readWhole(blob, digest);
    const settled = () => {
      this.done = true;
    };
    this.contents.then(settled, settled); // a rejection surfaces when its turn comes
  }
}

/**
 * One blob for a `Read` call: whole, absent, or too large (its reader is
 * closed as soon as that is clear). A blob that fails to read fails the
 * call, with the status `BlobService.Read` would give.
 */
async function readWhole(blob: BlobService, digest: Digest): Promise<SmallBlobContents> {
  const absent = { data: new Uint8Array(0), outcome: SmallBlobOutcome.NOT_FOUND };
  // Some backends can always read the empty blob; `Read` answers by whether it was stored.
  if (bytesEqual(digest, EMPTY_DIGEST)) {
    return await blob.chunks(digest)
      ? { data: new Uint8Array(0), outcome: SmallBlobOutcome.FOUND }
      : absent;
  }
  const whole = await blob.readWhole?.(digest);
  if (whole) {
    if (whole.length <= MAX_SMALL_BLOB_READ_BYTES) {
      return { data: whole, outcome: SmallBlobOutcome.FOUND };
    }
    releaseWhole(whole);
    return { data: new Uint8Array(0), outcome: SmallBlobOutcome.TOO_LARGE };
  }
  const reader = await blob.openRead(digest);
  if (!reader) return absent;
  const pieces: Uint8Array[] = [];
  let length = 0;
  for await (const piece of reader) {
    length += piece.length;
    // Leaving the loop closes the reader and what it read ahead.
    if (length > MAX_SMALL_BLOB_READ_BYTES) {
      return { data: new Uint8Array(0), outcome: SmallBlobOutcome.TOO_LARGE };
    }
    pieces.push(piece);
  }
  const data = pieces.length === 1 ? pieces[0] : concatBytes(pieces);
  return { data, outcome: SmallBlobOutcome.FOUND };
}
