/**
 * In-process BlobService (`memory://`): blobs in a Map, lost on exit.
 *
 * @module
 */
import {
  checkDigestLength,
  concatBytes,
  type Digest,
  digestKey,
  newBlake3Hasher,
} from "../digest.ts";
import { InvalidRequestError } from "../../errors.ts";
import type { BlobReader, BlobService, BlobWriter, ChunkMeta } from "./service.ts";

/** Pieces handed out by readers, so large blobs stream instead of arriving in one piece. */
const READ_PIECE = 64 * 1024;

/** A BlobService keeping every blob in memory. */
export class MemoryBlobService implements BlobService {
  readonly #blobs = new Map<string, Uint8Array>();

  /** Whether the blob exists. */
  has(digest: Digest): Promise<boolean> {
    checkDigestLength(digest);
    return Promise.resolve(this.#blobs.has(digestKey(digest)));
  }

  /** `[]` (no finer chunking) when the blob exists, else `undefined`. */
  chunks(digest: Digest): Promise<ChunkMeta[] | undefined> {
    checkDigestLength(digest);
    return Promise.resolve(this.#blobs.has(digestKey(digest)) ? [] : undefined);
  }

  /** The blob from `offset` on (empty past the end), or `undefined`. */
  openRead(digest: Digest, offset = 0): Promise<BlobReader | undefined> {
    checkDigestLength(digest);
    const data = this.#blobs.get(digestKey(digest));
    if (!data) return Promise.resolve(undefined);
    return Promise.resolve((async function* () {
      for (let pos = offset; pos < data.length; pos += READ_PIECE) {
        yield data.slice(pos, pos + READ_PIECE);
      }
    })());
  }

  /** Buffers the upload and stores it on close (if not already present). */
  openWrite(): BlobWriter {
    const pieces: Uint8Array[] = [];
    let state: "open" | "closed" | "aborted" = "open";
    let closing: Promise<Digest> | undefined;
    const hasher = newBlake3Hasher();
    const blobs = this.#blobs;
    return {
      async write(data: Uint8Array): Promise<void> {
        if (state !== "open") throw new InvalidRequestError(`blob writer already ${state}`);
        // Copy (not `slice`, a view for a Node Buffer): the caller may
        // reuse or free its buffer once the write resolved.
        const copy = new Uint8Array(data);
        (await hasher).update(copy);
        pieces.push(copy);
      },
      close(): Promise<Digest> {
        if (state === "aborted") {
          return Promise.reject(new InvalidRequestError("blob writer already aborted"));
        }
        state = "closed";
        // Closing again returns the same (possibly still pending) result.
        closing ??= (async () => {
          const digest = (await hasher).digest();
          const key = digestKey(digest);
          if (!blobs.has(key)) {
            blobs.set(key, concatBytes(pieces));
          }
          pieces.length = 0;
          return digest;
        })();
        return closing;
      },
      abort(): Promise<void> {
        if (state === "open") state = "aborted";
        pieces.length = 0;
        return Promise.resolve();
      },
    };
  }

  /** Nothing to release. */
  close(): Promise<void> {
    return Promise.resolve();
  }
}
