/**
 * BlobService backed by a remote `tvix.castore.v1.BlobService` over gRPC
 * (`grpc+unix://…`, `grpc+http://…`, `grpc+https://…`).
 *
 * Reads of blobs the server lists in chunks from their start are one `Read`
 * stream cut at the listed chunk boundaries, each chunk verified against
 * its own digest before any of it is returned; reads from an offset go
 * chunk by chunk (the next ones prefetched). Small blobs whose size the
 * caller knows, and chunks, are read whole and verified, many per call of
 * our `SmallBlobService.Read` where the server has it (one `Read` each
 * where it does not); other blobs come as one `Read` stream, checked whole
 * before any of it is returned (in memory, or a temporary file when large).
 * Uploads are one
 * `Put` stream that waits whenever grpc-js asks it to, so memory stays
 * bounded however large the blob; blobs smaller than one gathered message
 * go out in batches instead (`small_blob_batcher.ts`).
 *
 * @module
 */
import {
  BlobChunk,
  BlobServiceClient,
  type PutBlobResponse,
  type StatBlobResponse,
} from "../../proto/tvix/castore/protos/rpc_blobstore.ts";
import {
  B3_LEN,
  b3Display,
  blake3,
  bytesEqual,
  concatBytes,
  type Digest,
  digestKey,
  newBlake3Hasher,
} from "../digest.ts";
import { CorruptionError, InvalidRequestError, StorageError } from "../../errors.ts";
import {
  callError,
  cancelQuietly,
  channelFor,
  type ChannelLease,
  clientOn,
  ClientUpload,
  isNotFound,
  serverStream,
  unary,
} from "../../grpc/channel.ts";
import { releaseReceivedMessage } from "../../grpc/received_message.ts";
import { varintBytes, writeVarint } from "../../grpc/varint.ts";
import type { BlobReader, BlobService, BlobWriter, ChunkMeta } from "./service.ts";
import { LoadingCache } from "../../loading_cache.ts";
import {
  checkServerDigest,
  SmallBlobBatcher,
  type SmallBlobRead,
  SmallBlobReader,
} from "./small_blob_batcher.ts";
import { MAX_SMALL_BLOB_READ_BYTES } from "../../grpc/small_blobs.ts";
import { SpillFile } from "./spill_file.ts";

/** Largest `BlobChunk` we send; well below the 4 MiB receivers accept. */
export const MAX_PUT_MESSAGE = 1024 * 1024;

/** Writes smaller than this are gathered into messages of this size. */
export const COALESCE_BYTES = 256 * 1024;

/**
 * Blobs without a chunk list are verified whole before any byte is
 * yielded; up to this size in memory, beyond it in a temporary file.
 */
const VERIFY_IN_MEMORY_BYTES = 16 * 1024 * 1024;

/** Chunks fetched ahead of the one being consumed. */
const PREFETCH_CHUNKS = 2;

/**
 * Blobs up to this size (by the caller's hint) are read whole, without
 * asking `Stat` for a chunk list first, and verified before any byte is
 * returned: most files of a store path are this small, and the `Stat`
 * round trip was half of what each cost.
 */
export const SMALL_BLOB_BYTES = MAX_SMALL_BLOB_READ_BYTES;

/** Chunks remembered from chunk lists (see {@linkcode GrpcBlobService.openRead}). */
const KNOWN_CHUNKS = 1 << 16;

/** A BlobService that forwards every operation to a gRPC server. */
export class GrpcBlobService implements BlobService {
  /** Every call is a round trip to the server. */
  readonly remote = true;
  /** Small blobs read in one turn share a `SmallBlobService.Read` call. */
  readonly batchesReads = true;
  readonly #lease: ChannelLease;
  readonly #client: BlobServiceClient;
  /** Size of each chunk seen in a chunk list, by digest key (the most recently used). */
  readonly #knownChunks = new LoadingCache<string, bigint>(KNOWN_CHUNKS);
  readonly #batcher: SmallBlobBatcher;
  readonly #reader: SmallBlobReader;

  /** Wraps a leased channel; prefer {@linkcode GrpcBlobService.fromUrl}. */
  constructor(lease: ChannelLease) {
    this.#lease = lease;
    this.#client = clientOn(lease, BlobServiceClient);
    this.#batcher = new SmallBlobBatcher(lease, (message) => this.#putOne(message));
    this.#reader = new SmallBlobReader(lease, (digest, size) => this.#readSmall(digest, size));
  }

  /** Uploads one blob, given as one encoded `BlobChunk`, with its own `Put` call. */
  async #putOne(message: Uint8Array): Promise<Digest> {
    const upload = new ClientUpload<PutBlobResponse>((cb) => this.#client.put(cb));
    if (message.length > 0) await upload.write(message);
    return checkServerDigest((await upload.finish()).digest);
  }

  /** Connects to the server named by a `grpc+…` URL (docs/architecture.md#service-urls). */
  static async fromUrl(url: string): Promise<GrpcBlobService> {
    return new GrpcBlobService(await channelFor(url));
  }

  /** `Stat` without flags: true unless the server says NOT_FOUND. */
  async has(digest: Digest): Promise<boolean> {
    const res = await unary<StatBlobResponse>((cb) =>
      this.#client.stat({ digest, sendChunks: false, sendBao: false }, cb)
    );
    return res !== undefined;
  }

  /** `Stat` with `send_chunks`, validated (docs/compatibility.md#chunk-lists). */
  async chunks(digest: Digest): Promise<ChunkMeta[] | undefined> {
    const res = await unary<StatBlobResponse>((cb) =>
      this.#client.stat({ digest, sendChunks: true, sendBao: false }, cb)
    );
    if (!res) return undefined;
    const list = res.chunks.map((c, i) => {
      if (c.digest.length !== B3_LEN) {
        throw new StorageError(`Invalid digest length ${c.digest.length} for chunk #${i}`);
      }
      return { digest: c.digest, size: c.size };
    });
    if (list.length >= 2) {
      for (const c of list) this.#knownChunks.set(digestKey(c.digest), c.size);
    }
    return list;
  }

  /**
   * Reads from byte `offset` on. A small blob of known `size` is one `Read`
   * verified whole; a blob listed in two or more chunks is one `Read`
   * verified chunk by chunk from offset 0, and otherwise fetched chunk by
   * chunk from the one covering `offset`; any other blob is one `Read`
   * stream. An offset past the end is an `InvalidRequestError`; exactly at
   * the end yields nothing.
   */
  async openRead(digest: Digest, offset = 0, size?: number): Promise<BlobReader | undefined> {
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new InvalidRequestError(`invalid offset ${offset}`);
    }
    // A chunk of a listed blob is read as one verified piece without
    // asking `Stat` about it first: a FUSE read of a large file fetches its
    // chunks one by one, and the extra round trip per chunk cost half the
    // time.
    const known = this.#knownChunks.get(digestKey(digest));
    if (known !== undefined) return this.#readKnownChunk({ digest, size: known }, offset);
    if (size !== undefined && size <= SMALL_BLOB_BYTES) {
      const data = await this.#reader.read(digest, size);
      if (data === "absent") return undefined;
      if (data !== "larger") {
        if (offset > data.length) throw new InvalidRequestError("seeked beyond EOF");
        return (async function* () {
          if (offset < data.length) yield data.subarray(offset);
        })();
      }
    }
    const chunks = await this.chunks(digest);
    if (!chunks) return undefined;
    if (chunks.length >= 2) {
      return offset === 0
        ? this.#readListed(digest, chunks)
        : this.#readChunked(chunks, BigInt(offset));
    }
    return this.#readWhole(digest, offset);
  }

  /**
   * A blob of known `size` up to {@linkcode SMALL_BLOB_BYTES}, fetched
   * whole (batched with others asked for at the same time) and verified.
   */
  async readWhole(digest: Digest, size?: number): Promise<Uint8Array | undefined> {
    if (size === undefined || size > SMALL_BLOB_BYTES) return undefined;
    const data = await this.#reader.read(digest, size);
    return typeof data === "string" ? undefined : data;
  }

  /**
   * One `Read` of a blob expected to have `size` bytes, verified against
   * its digest before it is returned. "larger" (the call cancelled) if more
   * than `size` bytes arrive: the caller reads it the general way.
   */
  async #readSmall(digest: Digest, size: number): Promise<SmallBlobRead> {
    const call = this.#client.read({ digest });
    const pieces: Uint8Array[] = [];
    let length = 0;
    try {
      for await (const { data } of call as AsyncIterable<BlobChunk>) {
        length += data.length;
        if (length > size) {
          cancelQuietly(call);
          return "larger";
        }
        pieces.push(data);
      }
    } catch (err) {
      if (isNotFound(err)) return "absent";
      throw callError(err);
    }
    const bytes = pieces.length === 1 ? pieces[0] : concatBytes(pieces);
    if (!bytesEqual(blake3(bytes), digest)) {
      throw new CorruptionError(`blob ${b3Display(digest)} arrived with wrong contents`);
    }
    return bytes;
  }

  /**
   * A blob of several listed chunks as one `Read` stream, re-cut at the
   * chunk boundaries: each chunk is checked against its digest before it is
   * yielded, and the whole against the blob's digest at the end, since the
   * chunk list is the server's word (a list of other contents fails the
   * read before it completes). One call per blob instead of one per chunk;
   * grpc-js buffers a bounded number of messages when the consumer is
   * slower.
   */
  async *#readListed(digest: Digest, chunks: ChunkMeta[]): AsyncGenerator<Uint8Array> {
    const blobHash = await newBlake3Hasher();
    const check = (bytes: Uint8Array, chunk: ChunkMeta) => {
      if (!bytesEqual(blake3(bytes), chunk.digest)) {
        throw new CorruptionError(`chunk ${b3Display(chunk.digest)} arrived with wrong contents`);
      }
      blobHash.update(bytes);
      return bytes;
    };
    const call = this.#client.read({ digest });
    let index = 0;
    let buf: Uint8Array | undefined;
    let filled = 0;
    for await (const { data } of serverStream(call)) {
      // Every chunk is copied into a buffer of its own, which a consumer may
      // release once written (as the binary cache does), and the message is
      // released once copied out. Left to the collector, these buffers piled
      // up: a bridge over a daemon grew by hundreds of MiB per large NAR.
      for (let at = 0; at < data.length;) {
        if (index >= chunks.length) {
          throw new CorruptionError(`blob ${b3Display(digest)} arrived longer than its chunk list`);
        }
        const chunk = chunks[index];
        const size = Number(chunk.size);
        buf ??= new Uint8Array(size);
        const n = Math.min(size - filled, data.length - at);
        buf.set(data.subarray(at, at + n), filled);
        filled += n;
        at += n;
        if (filled === size) {
          const whole = buf;
          buf = undefined;
          filled = 0;
          index++;
          yield check(whole, chunk);
        }
      }
      releaseReceivedMessage(data);
    }
    if (index < chunks.length) {
      throw new CorruptionError(
        `blob ${b3Display(digest)} ended after ${index} of its ${chunks.length} chunks`,
      );
    }
    if (!bytesEqual(blobHash.digest(), digest)) {
      throw new CorruptionError(
        `blob ${b3Display(digest)}: the chunks its server listed do not add up to it`,
      );
    }
  }

  /**
   * An upload: small blobs go out in batches through our `SmallBlobService`
   * (docs/compatibility.md#small-blobs), larger ones as one `Put`
   * stream each; see {@linkcode GrpcBlobWriter}.
   */
  openWrite(): BlobWriter {
    return new GrpcBlobWriter(this.#client, this.#batcher);
  }

  /** Releases this backend's hold on the shared channel. */
  close(): Promise<void> {
    this.#batcher.flush();
    this.#reader.flush();
    this.#lease.release();
    return Promise.resolve();
  }

  /**
   * A blob without a chunk list, as one `Read` stream: verified whole
   * against its digest before any byte is yielded, since nothing finer can
   * be checked and a reader may stop early (a FUSE read, a NAR range) or
   * pass bytes on as they come. Up to {@linkcode VERIFY_IN_MEMORY_BYTES}
   * are held in memory, a larger blob in a temporary file. Our own servers
   * list the chunks of every blob above 512 KiB; other servers may not.
   */
  async *#readWhole(digest: Digest, offset: number): AsyncGenerator<Uint8Array> {
    const hasher = await newBlake3Hasher();
    const call = this.#client.read({ digest });
    const held: Uint8Array[] = [];
    let spill: SpillFile | undefined;
    let seen = 0;
    try {
      for await (const { data } of serverStream(call)) {
        if (data.length === 0) continue;
        hasher.update(data);
        seen += data.length;
        if (!spill && seen <= VERIFY_IN_MEMORY_BYTES) {
          held.push(data);
          continue;
        }
        if (!spill) {
          spill = SpillFile.create();
          for (const piece of held.splice(0)) spill.append(piece);
        }
        spill.append(data);
        releaseReceivedMessage(data);
      }
      const actual = hasher.digest();
      if (!bytesEqual(actual, digest)) {
        throw new CorruptionError(
          `blob ${b3Display(digest)} arrived with digest ${b3Display(actual)}`,
        );
      }
      if (offset > seen) throw new InvalidRequestError("seeked beyond EOF");
      if (spill) {
        yield* spill.readFrom(offset);
        return;
      }
      let start = 0;
      for (const piece of held) {
        const end = start + piece.length;
        if (end > offset) yield start >= offset ? piece : piece.subarray(offset - start);
        start = end;
      }
    } finally {
      cancelQuietly(call);
      spill?.close();
    }
  }

  async *#readChunked(chunks: ChunkMeta[], offset: bigint): AsyncGenerator<Uint8Array> {
    let index = 0;
    let start = 0n;
    while (index < chunks.length && start + chunks[index].size <= offset) {
      start += chunks[index].size;
      index++;
    }
    if (index === chunks.length && offset > start) {
      throw new InvalidRequestError("seeked beyond EOF");
    }
    let skip = Number(offset - start);
    const pending: ChunkFetch[] = [];
    const fill = () => {
      while (pending.length <= PREFETCH_CHUNKS && index < chunks.length) {
        pending.push(this.#fetchChunk(chunks[index++]));
      }
    };
    try {
      fill();
      while (pending.length > 0) {
        const data = await pending[0].data;
        pending.shift();
        fill();
        const piece = skip > 0 ? data.subarray(skip) : data;
        skip = 0;
        if (piece.length > 0) yield piece;
      }
    } finally {
      for (const fetch of pending) fetch.cancel();
    }
  }

  async *#readKnownChunk(chunk: ChunkMeta, offset: number): AsyncGenerator<Uint8Array> {
    if (BigInt(offset) > chunk.size) throw new InvalidRequestError("seeked beyond EOF");
    const bytes = await this.#fetchChunk(chunk).data;
    if (offset < bytes.length) yield bytes.subarray(offset);
  }

  /**
   * Reads a listed chunk straight into `target` (of the chunk's size),
   * verified: the FUSE reader fills its shared cache this way, without a
   * buffer of its own per chunk to copy from and free.
   */
  async readChunkInto(digest: Digest, target: Uint8Array): Promise<void> {
    const got = await this.#fetchChunk({ digest, size: BigInt(target.length) }, target).data;
    if (got !== target) target.set(got);
  }

  /**
   * Reads one chunk completely and verifies its size and digest: through
   * the batched reads if it is small enough (copied into `into`, if given,
   * which is then the result), else with a `Read` of its own.
   */
  #fetchChunk(chunk: ChunkMeta, into?: Uint8Array): ChunkFetch {
    if (chunk.size <= BigInt(SMALL_BLOB_BYTES)) {
      const data = this.#reader.read(chunk.digest, Number(chunk.size), into).then((got) => {
        if (got === "absent") {
          throw new CorruptionError(`chunk ${b3Display(chunk.digest)} listed but not found`);
        }
        const length = got === "larger" ? "more" : got.length;
        if (got === "larger" || BigInt(got.length) !== chunk.size) {
          throw new StorageError(
            `chunk ${b3Display(chunk.digest)} has ${length} bytes, listed with ${chunk.size}`,
          );
        }
        return got;
      });
      data.catch(() => {}); // as below
      // Part of a call for several chunks: it finishes, and is small.
      return { data, cancel: () => {} };
    }
    const call = this.#client.read({ digest: chunk.digest });
    const data = (async () => {
      const pieces: Uint8Array[] = [];
      let length = 0;
      try {
        for await (const { data } of call as AsyncIterable<BlobChunk>) {
          length += data.length;
          if (BigInt(length) > chunk.size) break;
          pieces.push(data);
        }
      } catch (err) {
        if (isNotFound(err)) {
          throw new CorruptionError(`chunk ${b3Display(chunk.digest)} listed but not found`);
        }
        throw callError(err);
      }
      if (BigInt(length) !== chunk.size) {
        cancelQuietly(call);
        throw new StorageError(
          `chunk ${b3Display(chunk.digest)} has ${length > chunk.size ? "more" : length} bytes, ` +
            `listed with ${chunk.size}`,
        );
      }
      // One piece (the usual case) is used as is.
      const bytes = pieces.length === 1 ? pieces[0] : concatBytes(pieces);
      if (!bytesEqual(blake3(bytes), chunk.digest)) {
        throw new CorruptionError(`chunk ${b3Display(chunk.digest)} arrived with wrong contents`);
      }
      return bytes;
    })();
    // A prefetch may fail before anyone awaits it; the reader still sees
    // the rejection when it gets there.
    data.catch(() => {});
    return { data, cancel: () => cancelQuietly(call) };
  }
}

interface ChunkFetch {
  data: Promise<Uint8Array>;
  cancel(): void;
}

/**
 * Room before the bytes gathered for a message, for the `BlobChunk` field
 * header (a tag byte and the length as a varint of at most 5 bytes), so a
 * gathered message is encoded in place.
 */
const FIELD_HEADER_ROOM = 6;

/** Writes the header of field 1 (`data`, length-delimited) of `length` bytes ending at `end`. */
function writeDataHeader(buf: Uint8Array, end: number, length: number): number {
  const start = end - varintBytes(length) - 1;
  buf[start] = 0x0a; // field 1, wire type 2 (length-delimited)
  writeVarint(buf, start + 1, length);
  return start;
}

/** A `BlobChunk` message holding a copy of `data` (one copy, exact size). */
export function encodeBlobChunk(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(FIELD_HEADER_ROOM + data.length);
  out.set(data, FIELD_HEADER_ROOM);
  return out.subarray(writeDataHeader(out, FIELD_HEADER_ROOM, data.length));
}

/**
 * An upload as one client-streaming `Put`. Small writes are gathered into
 * messages of up to {@linkcode COALESCE_BYTES} (a message per tiny write
 * would cost far more than the bytes), large ones are sent in messages of
 * at most {@linkcode MAX_PUT_MESSAGE}. Every byte is copied into its
 * encoded message before `write` resolves, and `write` waits whenever
 * grpc-js has no room, so memory stays bounded; `abort` cancels the call,
 * and the server stores nothing. The gathering buffer grows with what is
 * written: most uploads are one small file, and a fixed 256 KiB buffer
 * per upload made an import of 20,000 files spend more time collecting
 * garbage than reading them.
 */
export class GrpcBlobWriter implements BlobWriter {
  readonly #client: BlobServiceClient;
  readonly #batcher: SmallBlobBatcher | undefined;
  /** The `Put` call, started once the blob outgrows one gathered message. */
  #upload: ClientUpload<PutBlobResponse> | undefined;
  /** Gathered bytes from {@linkcode FIELD_HEADER_ROOM} on, allocated on demand. */
  #pending: Uint8Array | undefined;
  #pendingLength = 0;
  #closed: Promise<Digest> | undefined;
  #aborted = false;

  /**
   * An upload through `client`. With a `batcher`, a blob that ends before
   * filling one gathered message is handed to it whole instead of getting
   * a `Put` call of its own.
   */
  constructor(client: BlobServiceClient, batcher?: SmallBlobBatcher) {
    this.#client = client;
    this.#batcher = batcher;
  }

  #call(): ClientUpload<PutBlobResponse> {
    return this.#upload ??= new ClientUpload((cb) => this.#client.put(cb));
  }

  /** Queues `data` for sending; resolves when the caller may reuse it. */
  async write(data: Uint8Array): Promise<void> {
    if (this.#closed || this.#aborted) throw new InvalidRequestError("blob writer is closed");
    while (data.length > 0) {
      if (this.#pendingLength === 0 && data.length >= COALESCE_BYTES) {
        const n = Math.min(data.length, MAX_PUT_MESSAGE);
        await this.#call().write(encodeBlobChunk(data.subarray(0, n)));
        data = data.subarray(n);
        continue;
      }
      const n = Math.min(COALESCE_BYTES - this.#pendingLength, data.length);
      this.#gather(data.subarray(0, n));
      data = data.subarray(n);
      if (this.#pendingLength === COALESCE_BYTES) await this.#flush();
    }
  }

  /** Sends what is left, half-closes the stream, returns the server's digest. */
  close(): Promise<Digest> {
    if (this.#aborted) return Promise.reject(new InvalidRequestError("blob writer was aborted"));
    this.#closed ??= (async () => {
      if (!this.#upload && this.#batcher) return await this.#batcher.put(this.#take());
      await this.#flush();
      return checkServerDigest((await this.#call().finish()).digest);
    })();
    return this.#closed;
  }

  /** Cancels the call; nothing of the upload is stored. */
  abort(): Promise<void> {
    if (!this.#closed && !this.#aborted) {
      this.#aborted = true;
      this.#upload?.cancel();
    }
    return Promise.resolve();
  }

  /** Appends `data` to the gathered bytes, growing the buffer as needed. */
  #gather(data: Uint8Array): void {
    const need = FIELD_HEADER_ROOM + this.#pendingLength + data.length;
    if (!this.#pending || this.#pending.length < need) {
      const size = Math.min(
        FIELD_HEADER_ROOM + COALESCE_BYTES,
        Math.max(need, 2 * (this.#pending?.length ?? 0)),
      );
      const grown = new Uint8Array(size);
      if (this.#pending) {
        grown.set(this.#pending.subarray(0, FIELD_HEADER_ROOM + this.#pendingLength));
      }
      this.#pending = grown;
    }
    this.#pending.set(data, FIELD_HEADER_ROOM + this.#pendingLength);
    this.#pendingLength += data.length;
  }

  /** Sends the gathered bytes as one message. */
  #flush(): Promise<void> {
    if (this.#pendingLength === 0) return Promise.resolve();
    return this.#call().write(this.#take());
  }

  /**
   * The gathered bytes as one `BlobChunk` message, encoded in place (an
   * empty message for no bytes, as the generated encoder gives).
   */
  #take(): Uint8Array {
    const pending = this.#pending;
    if (!pending || this.#pendingLength === 0) return new Uint8Array(0);
    const end = FIELD_HEADER_ROOM + this.#pendingLength;
    const start = writeDataHeader(pending, FIELD_HEADER_ROOM, this.#pendingLength);
    this.#pending = undefined;
    this.#pendingLength = 0;
    return pending.subarray(start, end);
  }
}
