/**
 * Uploads and reads of small blobs gathered into calls of our
 * `SmallBlobService` extension (`src/grpc/small_blobs.ts`,
 * docs/compatibility.md#small-blobs), so that an import of many small
 * files, or a NAR of them served over a daemon, pays for a few calls
 * instead of one per file.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import { B3_LEN, b3Display, blake3, bytesEqual, type Digest } from "../digest.ts";
import { CorruptionError, StorageError } from "../../errors.ts";
import { callError, cancelQuietly, type ChannelLease, clientOn } from "../../grpc/channel.ts";
import { releaseReceivedMessage } from "../../grpc/received_message.ts";
import { TurnBatch } from "../../turn_batch.ts";
import {
  type PutSmallBlobsResponse,
  type ReadSmallBlobsRequest,
  type ReadSmallBlobsResponse,
  SMALL_BLOB_SERVICE_NAME,
  type SmallBlobContents,
  SmallBlobOutcome,
  smallBlobServiceDefinition,
} from "../../grpc/small_blobs.ts";

/**
 * Blobs per call. Small enough that an importer with dozens of uploads in
 * flight keeps several calls going (one being stored while the next
 * fills), large enough that the per-call cost is spread thin.
 */
export const BATCH_BLOBS = 16;

/** A call is sent once its blobs reach this many bytes. */
export const BATCH_BYTES = 1024 * 1024;

/** `digest` as a server returned it for an upload; a StorageError unless it is a BLAKE3 digest. */
export function checkServerDigest(digest: Uint8Array): Digest {
  if (digest.length !== B3_LEN) {
    throw new StorageError(`server returned a digest of ${digest.length} bytes`);
  }
  return digest;
}

/**
 * Blobs per `Read` call. A NAR renderer reads ahead in bursts of half its
 * 256 files, so a burst is one call; the next is in flight while it
 * renders what came back.
 */
export const READ_BATCH_BLOBS = 128;

/** A `Read` call is sent once the sizes of its blobs reach this many bytes. */
export const READ_BATCH_BYTES = 4 * 1024 * 1024;

interface SmallBlobClient {
  put(
    callback: (err: grpc.ServiceError | null, res: PutSmallBlobsResponse) => void,
  ): grpc.ClientWritableStream<Uint8Array>;
  read(request: ReadSmallBlobsRequest): grpc.ClientReadableStream<ReadSmallBlobsResponse>;
}

const SmallBlobClientCtor = grpc.makeGenericClientConstructor(
  smallBlobServiceDefinition,
  SMALL_BLOB_SERVICE_NAME,
) as unknown as Parameters<typeof clientOn<SmallBlobClient>>[1];

interface Pending {
  /** The blob as an encoded `BlobChunk` message. */
  message: Uint8Array;
  resolve(digest: Digest): void;
  reject(err: unknown): void;
}

/**
 * Sends whole small blobs in batches: a batch goes out when it holds
 * {@linkcode BATCH_BLOBS} blobs or {@linkcode BATCH_BYTES} bytes, or when
 * the caller yields to the event loop, so a lone upload is not held back.
 * Against a server without the extension (UNIMPLEMENTED) it sends each
 * blob with `fallback` from then on.
 */
export class SmallBlobBatcher {
  readonly #client: SmallBlobClient;
  readonly #fallback: (message: Uint8Array) => Promise<Digest>;
  readonly #batch = new TurnBatch<Pending>(
    (batch) => this.#send(batch),
    (send) => setTimeout(send, 0),
  );
  #bytes = 0;
  #unsupported = false;

  /**
   * Batches calls on `lease`; `fallback` uploads one encoded `BlobChunk`
   * message through the upstream `Put`.
   */
  constructor(lease: ChannelLease, fallback: (message: Uint8Array) => Promise<Digest>) {
    this.#client = clientOn(lease, SmallBlobClientCtor);
    this.#fallback = fallback;
  }

  /**
   * Uploads one whole blob, given as an encoded `BlobChunk` message that
   * must not change afterwards; resolves with the digest the server
   * computed, once the blob is stored.
   */
  put(message: Uint8Array): Promise<Digest> {
    if (this.#unsupported) return this.#fallback(message);
    const { promise, resolve, reject } = Promise.withResolvers<Digest>();
    this.#batch.add({ message, resolve, reject });
    this.#bytes += message.length;
    if (this.#batch.size >= BATCH_BLOBS || this.#bytes >= BATCH_BYTES) this.#batch.flush();
    return promise;
  }

  #send(batch: Pending[]): void {
    this.#bytes = 0;
    const call = this.#client.put((err, res) => {
      if (err) return this.#failed(batch, err);
      if (res.digests.length !== batch.length) {
        const bad = new StorageError(
          `server returned ${res.digests.length} digests for ${batch.length} blobs`,
        );
        for (const p of batch) p.reject(bad);
        return;
      }
      for (const [i, p] of batch.entries()) {
        try {
          p.resolve(checkServerDigest(res.digests[i]));
        } catch (err) {
          p.reject(err);
        }
      }
    });
    // The outcome, errors included, arrives through the callback.
    call.on("error", () => {});
    for (const p of batch) call.write(p.message);
    call.end();
  }

  #failed(batch: Pending[], err: grpc.ServiceError): void {
    if (err.code === grpc.status.UNIMPLEMENTED) {
      // An upstream server: upload these and every later blob one by one.
      this.#unsupported = true;
      for (const p of batch) this.#fallback(p.message).then(p.resolve, p.reject);
      return;
    }
    const failure = callError(err);
    for (const p of batch) p.reject(failure);
  }

  /** Sends what is gathered now (before the channel closes). */
  flush(): void {
    this.#batch.flush();
  }
}

/**
 * What {@linkcode SmallBlobReader.read} gives: the blob, verified;
 * "absent" if the server does not have it; "larger" if it is too large
 * for the extension (the caller reads it the upstream way).
 */
export type SmallBlobRead = Uint8Array | "absent" | "larger";

interface PendingRead {
  digest: Digest;
  size: number;
  /** Where the blob is wanted, if the caller has room of exactly its size. */
  into?: Uint8Array;
  resolve(result: SmallBlobRead): void;
  reject(err: unknown): void;
}

/**
 * Reads whole small blobs in batches through `SmallBlobService.Read`.
 * Reads asked for in one synchronous run (a NAR renderer's read-ahead over
 * a directory) go out together at the next microtask checkpoint, in calls
 * of up to {@linkcode READ_BATCH_BLOBS} blobs or {@linkcode READ_BATCH_BYTES}.
 * Every blob is checked against its digest before it is handed out; one
 * that arrives wrong fails its own read only, and so does one the server
 * cannot read (DATA_LOSS: the rest of its call is read one by one). Against
 * a server without the extension (UNIMPLEMENTED) every read goes to
 * `fallback` from then on.
 */
export class SmallBlobReader {
  readonly #client: SmallBlobClient;
  readonly #fallback: (digest: Digest, size: number) => Promise<SmallBlobRead>;
  readonly #batch = new TurnBatch<PendingRead>((batch) => this.#send(batch));
  #bytes = 0;
  #unsupported = false;

  /**
   * Reads through calls on `lease`; `fallback` reads one blob of the
   * expected size with the upstream `Read`.
   */
  constructor(
    lease: ChannelLease,
    fallback: (digest: Digest, size: number) => Promise<SmallBlobRead>,
  ) {
    this.#client = clientOn(lease, SmallBlobClientCtor);
    this.#fallback = fallback;
  }

  /**
   * Reads the blob `digest`, expected to have `size` bytes (a hint). Given
   * `into` (of `size` bytes), a blob of that size is verified and copied
   * there, and `into` is the result. Otherwise the result is a view into
   * the received message (a batched read's, or the upstream `Read`
   * fallback's), which no one else writes to and `releaseWhole` leaves
   * alone.
   */
  read(digest: Digest, size: number, into?: Uint8Array): Promise<SmallBlobRead> {
    if (this.#unsupported) return this.#fallback(digest, size);
    const { promise, resolve, reject } = Promise.withResolvers<SmallBlobRead>();
    this.#batch.add({ digest, size, into, resolve, reject });
    this.#bytes += size;
    if (this.#batch.size >= READ_BATCH_BLOBS || this.#bytes >= READ_BATCH_BYTES) {
      this.#batch.flush();
    }
    return promise;
  }

  #send(batch: PendingRead[]): void {
    this.#bytes = 0;
    this.#call(batch).catch((err) => {
      for (const p of batch) p.reject(err); // those still waiting; settled ones ignore it
    });
  }

  /** Sends what is gathered now (before the channel closes). */
  flush(): void {
    this.#batch.flush();
  }

  async #call(batch: PendingRead[]): Promise<void> {
    let answered = 0;
    try {
      // Inside the try: on a closed channel grpc-js throws right here.
      const call = this.#client.read({ digests: batch.map((p) => p.digest) });
      for await (const { blobs, received } of call as AsyncIterable<ReadSmallBlobsResponse>) {
        // Whether a blob was handed out as a view into this message.
        let viewed = false;
        for (const contents of blobs) {
          const pending = batch[answered++];
          if (!pending) {
            cancelQuietly(call);
            throw new StorageError(
              `server answered more than the ${batch.length} blobs asked for`,
            );
          }
          try {
            const got = checkContents(pending.digest, contents);
            if (typeof got === "string") pending.resolve(got);
            else if (pending.into?.length === got.length) {
              pending.into.set(got);
              pending.resolve(pending.into);
            } else {
              // A view: a copy each (a buffer per file of a few KiB) cost a
              // NAR of small files more than the message's memory does.
              viewed = true;
              pending.resolve(got);
            }
          } catch (err) {
            pending.reject(err);
          }
        }
        // Left to the collector, the messages of a mount reading a large
        // file through a daemon (all copied into its cache) cost the mount a
        // fifth of its CPU.
        if (received && !viewed) releaseReceivedMessage(received);
      }
      if (answered < batch.length) {
        throw new StorageError(`server answered ${answered} of ${batch.length} blobs`);
      }
    } catch (err) {
      const rest = batch.slice(answered);
      const code = (err as grpc.ServiceError).code;
      if (code === grpc.status.UNIMPLEMENTED) {
        // An upstream server: read these and every later blob one by one.
        this.#unsupported = true;
      }
      if (code === grpc.status.UNIMPLEMENTED || code === grpc.status.DATA_LOSS) {
        // DATA_LOSS: one blob could not be read (the server sent those before
        // it). The others are fine: read one by one, only it fails again.
        for (const p of rest) this.#fallback(p.digest, p.size).then(p.resolve, p.reject);
        return;
      }
      const failure = err instanceof StorageError ? err : callError(err);
      for (const p of rest) p.reject(failure);
    }
  }
}

/** One `Read` response for `digest`, checked. */
function checkContents(digest: Digest, message: SmallBlobContents): SmallBlobRead {
  switch (message.outcome) {
    case SmallBlobOutcome.FOUND:
      if (!bytesEqual(blake3(message.data), digest)) {
        throw new CorruptionError(`blob ${b3Display(digest)} arrived with wrong contents`);
      }
      return message.data;
    case SmallBlobOutcome.NOT_FOUND:
      return "absent";
    case SmallBlobOutcome.TOO_LARGE:
      return "larger";
    default:
      throw new StorageError(`server answered blob ${b3Display(digest)} with ${message.outcome}`);
  }
}
