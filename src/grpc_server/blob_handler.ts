/**
 * The `tvix.castore.v1.BlobService` server over a {@linkcode BlobService}
 * backend (docs/compatibility.md#blob-service).
 *
 * @module
 */
import { Buffer } from "node:buffer";
import {
  type BlobChunk,
  type BlobServiceServer,
  BlobServiceService,
  type PutBlobResponse,
  type ReadBlobRequest,
  type StatBlobRequest,
  type StatBlobResponse,
} from "../proto/tvix/castore/protos/rpc_blobstore.ts";
import type { BlobService, ChunkMeta } from "../castore/blob/service.ts";
import { B3_LEN, b3Display, concatBytes, type Digest } from "../castore/digest.ts";
import { release } from "../castore/blob/chunk_codec.ts";
import { releaseReceivedMessage } from "../grpc/received_message.ts";
import { responseScratch } from "../grpc/response_scratch.ts";
import { errorMessage, StorageError, UnavailableError } from "../errors.ts";
import {
  clientStreamHandler,
  receiveAll,
  serverStreamHandler,
  unaryHandler,
} from "../grpc/server_call.ts";
import { Code, RpcError } from "../grpc/status.ts";
import { varintBytes, writeVarint } from "../grpc/varint.ts";

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

/**
 * How long a Read may wait for the client to take a message before the
 * blob's reader, with its read-ahead, is closed (and reopened once the
 * client reads on). A stalled client then pins only the messages HTTP/2
 * holds for it.
 */
export const STALL_MS = 1000;

/**
 * Chunks a Read fetches ahead of the one being sent, once the client has
 * shown that it reads (see {@linkcode WARM_UP_CHUNKS}). With one, each pack
 * read ran on the main thread as soon as it was issued: profiled on a
 * 256 MiB blob, reads took ~1 s of the daemon's main thread and the
 * collector ~0.5 s, against ~0.1 s and ~0.3 s with three, which the
 * threadpool serves beside it (and the chunk Worker decodes beside it).
 * A client that stalls pins these for {@linkcode STALL_MS} at most.
 */
const CHUNKS_AHEAD = 3;

/** Chunks a Read sends before it starts fetching ahead (see {@linkcode listedChunks}). */
const WARM_UP_CHUNKS = 2;

/** `digest` if it has a BLAKE3 digest's length, else INVALID_ARGUMENT. */
export function checkDigest(digest: Uint8Array): Digest {
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

/** Reads one listed chunk whole, checking its length against the list. */
async function readListedChunk(blob: BlobService, chunk: ChunkMeta): Promise<Uint8Array> {
  const reader = await blob.openRead(chunk.digest);
  if (!reader) throw new StorageError(`chunk ${b3Display(chunk.digest)} is listed but missing`);
  const pieces: Uint8Array[] = [];
  for await (const piece of reader) pieces.push(piece);
  const data = pieces.length === 1 ? pieces[0] : concatBytes(pieces);
  if (BigInt(data.length) !== chunk.size) {
    throw new StorageError(
      `chunk ${b3Display(chunk.digest)} has ${data.length} bytes, listed with ${chunk.size}`,
    );
  }
  return data;
}

/**
 * The bytes of a chunked blob from `offset` on, chunk by chunk. The first
 * {@linkcode WARM_UP_CHUNKS} are fetched when asked for; after that, when
 * the client has shown that it reads, {@linkcode CHUNKS_AHEAD} are fetched
 * ahead of the one yielded. A client that takes a message or two and then
 * stops thus never costs a chunk that was read for nothing.
 */
async function* listedChunks(
  blob: BlobService,
  list: ChunkMeta[],
  offset: number,
  own: (chunk: Uint8Array) => void,
): AsyncGenerator<Uint8Array> {
  let index = 0;
  let start = 0;
  while (index < list.length && start + Number(list[index].size) <= offset) {
    start += Number(list[index].size);
    index++;
  }
  let skip = offset - start;
  const pending: Promise<Uint8Array>[] = [];
  const fetchNext = () => {
    const fetch = readListedChunk(blob, list[index++]);
    // Rejections surface when awaited; a read dropped early must not leave
    // them unhandled.
    fetch.catch(() => {});
    pending.push(fetch);
  };
  for (let yielded = 0; pending.length > 0 || index < list.length; yielded++) {
    if (pending.length === 0) fetchNext();
    const data = await pending.shift()!;
    own(data);
    if (yielded >= WARM_UP_CHUNKS) {
      while (pending.length < CHUNKS_AHEAD && index < list.length) fetchNext();
    }
    yield skip > 0 ? data.subarray(skip) : data;
    skip = 0;
  }
}

/**
 * The messages of one Read: a blob's bytes front to back, re-cut by
 * {@linkcode rechunk}. A chunked blob is read chunk by chunk with
 * {@linkcode CHUNKS_AHEAD} fetched ahead, instead of through the backend's
 * whole-blob reader, whose read-ahead (four chunks for the pack store)
 * a client that stops reading would pin. {@linkcode park} lets go of what
 * was read ahead; the next message then comes from a read reopened at the
 * offset reached, which yields the same bytes since blobs never change.
 *
 * Chunk buffers of such a read are released ({@linkcode sent}) as soon as
 * their last byte has gone out, not at some later collection: a read
 * passes every byte of a blob through them, and 100 reads starting at
 * once left ~30 MiB of them for the collector.
 */
class BlobMessages {
  #pieces: AsyncIterator<Uint8Array> | undefined;
  #offset = 0;
  /** Whole chunk buffers this read fetched and nothing else refers to. */
  readonly #owned = new WeakSet<ArrayBufferLike>();

  private constructor(
    private readonly blob: BlobService,
    private readonly digest: Digest,
    /** The blob's chunk list; fewer than two chunks mean one whole-blob read. */
    private readonly list: ChunkMeta[],
  ) {}

  /** Starts reading `digest`; undefined if the backend does not have it. */
  static async open(blob: BlobService, digest: Digest): Promise<BlobMessages | undefined> {
    const list = await blob.chunks(digest);
    if (!list) return undefined;
    const messages = new BlobMessages(blob, digest, list);
    if (list.length < 2) {
      const reader = await blob.openRead(digest);
      if (!reader) return undefined;
      messages.#pieces = rechunk(reader)[Symbol.asyncIterator]();
    }
    return messages;
  }

  /** The next message's data, or undefined at the end of the blob. */
  async next(): Promise<Uint8Array | undefined> {
    this.#pieces ??= rechunk(await this.#openAt(this.#offset))[Symbol.asyncIterator]();
    const { done, value } = await this.#pieces.next();
    if (done) return undefined;
    this.#offset += value.length;
    return value;
  }

  async #openAt(offset: number): Promise<AsyncIterable<Uint8Array>> {
    if (this.list.length >= 2) {
      // A backend's pieces belong to the reader (see BlobService.openRead),
      // and readListedChunk returns one of them or a fresh concatenation.
      const own = (chunk: Uint8Array) => {
        const buffer = chunk.buffer;
        if (chunk.byteOffset === 0 && chunk.byteLength === buffer.byteLength) {
          this.#owned.add(buffer);
        }
      };
      return listedChunks(this.blob, this.list, offset, own);
    }
    const reader = await this.blob.openRead(this.digest, offset);
    if (!reader) {
      throw new StorageError(`blob ${b3Display(this.digest)} vanished while being read`);
    }
    return reader;
  }

  /**
   * Tells that `data`, returned by {@linkcode next}, has been serialized
   * into a response. If it ends a chunk buffer of this read, the buffer is
   * released: messages are sent in order, so all of it has gone out, and
   * {@linkcode rechunk} holds on only to pieces of buffers it has not
   * passed to the end yet.
   */
  sent(data: Uint8Array): void {
    const buffer = data.buffer;
    if (
      this.#owned.has(buffer) && buffer instanceof ArrayBuffer &&
      data.byteOffset + data.byteLength === buffer.byteLength
    ) {
      this.#owned.delete(buffer);
      release(buffer);
    }
  }

  /** Drops the current read and what it read ahead; {@linkcode next} reopens it. Never throws. */
  async park(): Promise<void> {
    const pieces = this.#pieces;
    this.#pieces = undefined;
    await pieces?.return?.()?.catch(() => {});
  }
}

/** Length of a `BlobChunk` message whose `data` has `length` bytes (tag, length, data). */
function blobChunkMessageBytes(length: number): number {
  return length === 0 ? 0 : 1 + varintBytes(length) + length;
}

/**
 * `BlobChunk` encoded as the generated encoder does (field 1, omitted when
 * empty), into the reused response buffer ({@linkcode responseScratch}).
 * The generated serializer copied the data twice (encoder, then
 * `Buffer.from`) into buffers that were garbage right away: a Read sends
 * every byte of a blob through here, and 100 reads starting together left
 * ~60 MiB of that for the collector.
 */
function serializeBlobChunk(message: BlobChunk): Buffer {
  const data = message.data;
  const size = blobChunkMessageBytes(data.length);
  const out = responseScratch(size);
  if (data.length === 0) return out;
  out[0] = 0x0a; // field 1, length-delimited
  out.set(data, writeVarint(out, 1, data.length));
  return out;
}

/**
 * The BlobService definition the server registers: the generated one,
 * with Read responses serialized by {@linkcode serializeBlobChunk}.
 */
export const blobServiceDefinition: typeof BlobServiceService = {
  ...BlobServiceService,
  read: { ...BlobServiceService.read, responseSerialize: serializeBlobChunk },
};

/**
 * Refuses an uploaded `BlobChunk` larger than the request limit. The
 * server's own message limit has to admit large directories
 * (`MAX_DIRECTORY_MESSAGE_BYTES`), so blob messages are held to the
 * smaller limit here, before anything of them is written.
 */
export function checkChunkSize(length: number, max: number): void {
  const size = blobChunkMessageBytes(length);
  if (size > max) {
    throw new RpcError(
      Code.RESOURCE_EXHAUSTED,
      `BlobChunk message of ${size} bytes is larger than the ${max}-byte limit for blob data`,
    );
  }
}

/** Options of {@linkcode blobHandler}. */
export interface BlobHandlerOptions {
  /** Largest `BlobChunk` message accepted by Put, in bytes (default {@linkcode MAX_PUT_MESSAGE_BYTES}). */
  maxMessageBytes?: number;
}

/** Default largest `BlobChunk` accepted: the 4 MiB every gRPC stack accepts by default. */
export const MAX_PUT_MESSAGE_BYTES = 4 * 1024 * 1024;

/**
 * A failed upload: INTERNAL as in the reference, but UNAVAILABLE when the
 * store is out of reach, so the client knows a retry may succeed.
 */
export function uploadError(what: string, err: unknown): RpcError {
  const code = err instanceof UnavailableError ? Code.UNAVAILABLE : Code.INTERNAL;
  return new RpcError(code, `${what}: ${errorMessage(err)}`);
}

/** Builds the BlobService handlers. */
export function blobHandler(blob: BlobService, opts: BlobHandlerOptions = {}): BlobServiceServer {
  const maxMessageBytes = opts.maxMessageBytes ?? MAX_PUT_MESSAGE_BYTES;
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
        const source = await BlobMessages.open(blob, digest);
        if (!source) throw notFound(digest);
        try {
          while (true) {
            const data = await source.next();
            if (!data) return;
            // A reader that takes nothing for a while should not pin the
            // backend's read-ahead: let go of it until this message is out.
            const stall = setTimeout(() => source.park(), STALL_MS);
            const open = await send({ data }).finally(() => clearTimeout(stall));
            if (!open) return;
            source.sent(data);
          }
        } finally {
          // Done, failed or cancelled: the reader and its read-ahead go now.
          await source.park();
        }
      },
    ),

    put: clientStreamHandler<BlobChunk, PutBlobResponse>("BlobService/Put", async (call) => {
      const writer = blob.openWrite();
      try {
        const check = (chunk: BlobChunk) => checkChunkSize(chunk.data.length, maxMessageBytes);
        for await (const chunk of receiveAll(call, check)) {
          try {
            await writer.write(chunk.data);
            // The writer has its copy (see BlobWriter.write).
            releaseReceivedMessage(chunk.data);
          } catch (err) {
            throw uploadError("error copying", err);
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
        throw uploadError("error closing stream", err);
      }
    }),
  };
}
