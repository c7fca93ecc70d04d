/**
 * The `tvix.castore.v1.BlobService` server over a {@linkcode BlobService}
 * backend (docs/compatibility.md#blob-service).
 *
 * @module
 */
import type {
  BlobChunk,
  BlobServiceServer,
  PutBlobResponse,
  ReadBlobRequest,
  StatBlobRequest,
  StatBlobResponse,
} from "../proto/tvix/castore/protos/rpc_blobstore.ts";
import type { BlobReader, BlobService } from "../castore/blob/service.ts";
import { B3_LEN, b3Display, type Digest } from "../castore/digest.ts";
import { errorMessage } from "../errors.ts";
import {
  clientStreamHandler,
  receiveAll,
  serverStreamHandler,
  unaryHandler,
} from "../grpc/server_call.ts";
import { Code, RpcError } from "../grpc/status.ts";

/**
 * Largest `BlobChunk.data` the server sends. 1 MiB keeps per-message
 * overhead negligible, stays far below the 4 MiB that the reference's
 * clients accept, and bounds what one stream holds in memory.
 */
export const READ_MESSAGE_BYTES = 1024 * 1024;

/**
 * Smallest message sent (except a blob's last): backends that yield many
 * small reads are merged up to this, not sent as many tiny messages.
 */
const COALESCE_BYTES = 64 * 1024;

function checkDigest(digest: Uint8Array): Digest {
  if (digest.length !== B3_LEN) throw new RpcError(Code.INVALID_ARGUMENT, "invalid digest length");
  return digest;
}

function notFound(digest: Digest): RpcError {
  return new RpcError(Code.NOT_FOUND, `blob ${b3Display(digest)} not found`);
}

/**
 * Re-cuts a blob's pieces into messages of `min` to `max` bytes (only the
 * last may be shorter). Pieces that already fit are passed on as views
 * without copying; only small pieces are copied together.
 */
export async function* rechunk(
  source: AsyncIterable<Uint8Array>,
  max = READ_MESSAGE_BYTES,
  min = COALESCE_BYTES,
): AsyncGenerator<Uint8Array> {
  const pending: Uint8Array[] = [];
  let pendingBytes = 0;
  const take = (n: number): Uint8Array => {
    pendingBytes -= n;
    if (pending[0].length >= n) {
      const out = pending[0].subarray(0, n);
      pending[0] = pending[0].subarray(n);
      if (pending[0].length === 0) pending.shift();
      return out;
    }
    const out = new Uint8Array(n);
    for (let at = 0; at < n;) {
      const part = pending[0].subarray(0, n - at);
      out.set(part, at);
      at += part.length;
      pending[0] = pending[0].subarray(part.length);
      if (pending[0].length === 0) pending.shift();
    }
    return out;
  };
  for await (const piece of source) {
    if (piece.length === 0) continue;
    pending.push(piece);
    pendingBytes += piece.length;
    while (pendingBytes >= min) yield take(Math.min(pendingBytes, max));
  }
  if (pendingBytes > 0) yield take(pendingBytes);
}

/** Builds the BlobService handlers. */
export function blobHandler(blob: BlobService): BlobServiceServer {
  return {
    stat: unaryHandler<StatBlobRequest, StatBlobResponse>("BlobService/Stat", async (req) => {
      const digest = checkDigest(req.digest);
      // As upstream (docs/compatibility.md#q3-blob-stat-ignores-its-request-flags):
      // the chunk list is sent whether or not send_chunks was asked for, and
      // bao stays empty.
      const chunks = await blob.chunks(digest);
      if (!chunks) throw notFound(digest);
      return { chunks, bao: new Uint8Array(0) };
    }),

    read: serverStreamHandler<ReadBlobRequest, BlobChunk>(
      "BlobService/Read",
      async (req, send) => {
        const digest = checkDigest(req.digest);
        const reader: BlobReader | undefined = await blob.openRead(digest);
        if (!reader) throw notFound(digest);
        // Leaving the loop early (client gone) releases the reader.
        for await (const data of rechunk(reader)) {
          if (!await send({ data })) return;
        }
      },
    ),

    put: clientStreamHandler<BlobChunk, PutBlobResponse>("BlobService/Put", async (call) => {
      const writer = blob.openWrite();
      try {
        for await (const chunk of receiveAll(call)) {
          try {
            await writer.write(chunk.data);
          } catch (err) {
            throw new RpcError(Code.INTERNAL, `error copying: ${errorMessage(err)}`);
          }
        }
      } catch (err) {
        // A failed or cancelled upload leaves nothing behind.
        await writer.abort().catch(() => {});
        throw err;
      }
      try {
        return { digest: await writer.close() };
      } catch (err) {
        await writer.abort().catch(() => {});
        throw new RpcError(Code.INTERNAL, `error closing stream: ${errorMessage(err)}`);
      }
    }),
  };
}
