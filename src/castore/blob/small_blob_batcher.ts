/**
 * Uploads of small blobs gathered into calls of our `SmallBlobService`
 * extension (`src/grpc/small_blobs.ts`,
 * docs/compatibility.md#small-blob-uploads), so that an import of many
 * small files pays for a few calls instead of one per file.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import { B3_LEN, type Digest } from "../digest.ts";
import { StorageError } from "../../errors.ts";
import { callError, type ChannelLease, clientOn } from "../../grpc/channel.ts";
import {
  type PutSmallBlobsResponse,
  SMALL_BLOB_SERVICE_NAME,
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

interface SmallBlobClient {
  put(
    callback: (err: grpc.ServiceError | null, res: PutSmallBlobsResponse) => void,
  ): grpc.ClientWritableStream<Uint8Array>;
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
  #batch: Pending[] = [];
  #bytes = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
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
    this.#batch.push({ message, resolve, reject });
    this.#bytes += message.length;
    if (this.#batch.length >= BATCH_BLOBS || this.#bytes >= BATCH_BYTES) this.#send();
    else this.#timer ??= setTimeout(() => this.#send(), 0);
    return promise;
  }

  #send(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    const batch = this.#batch;
    this.#batch = [];
    this.#bytes = 0;
    if (batch.length === 0) return;
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
    this.#send();
  }
}
