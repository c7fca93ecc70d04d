/**
 * A blob's chunk list as the blob stores keep it: the `BlobIndex` message
 * (the fields and bytes of a `StatBlobResponse`, docs/storage.md), in the
 * pack store's `blobs` table and as the object store's index objects.
 *
 * @module
 */
import { B3_LEN, b3Display, bytesEqual, type Digest } from "../digest.ts";
import { CorruptionError, errorMessage } from "../../errors.ts";
import { BlobIndex } from "../../proto/tvix_ts/layout/v1/blob_index.ts";
import type { ChunkMeta } from "./service.ts";

/** Encodes `chunks` (in order) as a `BlobIndex`, canonically. */
export function encodeBlobIndex(chunks: readonly ChunkMeta[]): Uint8Array {
  return BlobIndex.encode({ chunks: [...chunks], bao: new Uint8Array(0) }).finish();
}

/**
 * Decodes the stored index of `blob` (its digest, or where the index was
 * found if that names no digest). Throws `CorruptionError` if
 * it does not decode, lists a chunk digest of the wrong length, or is not
 * the canonical encoding of what it decodes to: damage can still decode
 * (a flipped bit in a tag turns an entry into an unknown field, which
 * decoding skips), and the blob would then read short, or a sweep would
 * think the dropped chunk unused. Every index is written canonically,
 * ours and the reference's alike.
 */
export function decodeBlobIndex(blob: Digest | string, raw: Uint8Array): ChunkMeta[] {
  const name = `blob index ${typeof blob === "string" ? blob : b3Display(blob)}`;
  let index: BlobIndex;
  try {
    index = BlobIndex.decode(raw);
  } catch (err) {
    throw new CorruptionError(`${name} is corrupt: ${errorMessage(err)}`);
  }
  if (!bytesEqual(BlobIndex.encode(index).finish(), raw)) {
    throw new CorruptionError(`${name} is corrupt: it does not encode back to its stored bytes`);
  }
  return index.chunks.map((c, i) => {
    if (c.digest.length !== B3_LEN) {
      throw new CorruptionError(
        `${name}: Invalid digest length ${c.digest.length} for chunk #${i}`,
      );
    }
    return { digest: c.digest, size: c.size };
  });
}
