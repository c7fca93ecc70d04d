/**
 * The server of our `SmallBlobService` extension (`src/grpc/small_blobs.ts`,
 * docs/compatibility.md#small-blob-uploads): many whole blobs per call,
 * each stored exactly as a `BlobService.Put` of it would be.
 *
 * @module
 */
import type { handleClientStreamingCall } from "@grpc/grpc-js";
import type { BlobService } from "../castore/blob/service.ts";
import type { Digest } from "../castore/digest.ts";
import { JobSet } from "../concurrency.ts";
import { clientStreamHandler, receiveAll } from "../grpc/server_call.ts";
import {
  MAX_SMALL_BLOBS_PER_CALL,
  type PutSmallBlobsResponse,
  type SmallBlob,
} from "../grpc/small_blobs.ts";
import { Code, RpcError } from "../grpc/status.ts";
import { releaseReceivedMessage } from "../grpc/received_message.ts";
import { checkChunkSize, MAX_PUT_MESSAGE_BYTES, uploadError } from "./blob_handler.ts";

/**
 * Blobs of one call stored at once. Enough to keep the backend's chunk
 * Workers and writes busy; while they are, the call's stream is paused
 * and the client held back by HTTP/2 flow control.
 */
const STORES_IN_FLIGHT = 16;

/** Options of {@linkcode smallBlobHandler}. */
export interface SmallBlobHandlerOptions {
  /** Largest blob message accepted, in bytes (default `MAX_PUT_MESSAGE_BYTES`). */
  maxMessageBytes?: number;
}

/** The `SmallBlobService` handlers over `blob`. */
export function smallBlobHandler(
  blob: BlobService,
  opts: SmallBlobHandlerOptions = {},
): { put: handleClientStreamingCall<SmallBlob, PutSmallBlobsResponse> } {
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
              const writer = blob.openWrite();
              try {
                if (data.length > 0) await writer.write(data);
                // The writer has its copy (see BlobWriter.write).
                releaseReceivedMessage(data);
                digests[at] = await writer.close();
              } catch (err) {
                await writer.abort().catch(() => {});
                throw err;
              }
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
  };
}
