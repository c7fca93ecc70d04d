/**
 * A chunk Worker that serves requests with the real codec, except that it
 * refuses to encode a chunk whose first byte is 0xEE (as a storage
 * failure), a chunk small enough for a batch that came alone, and one
 * starting with 0xEB that came in a batch of one; used by `chunk_pool_test.ts` (which
 * imports {@linkcode REFUSED} from here) to see that one chunk of a batch
 * fails without the others.
 *
 * @module
 */
import { parentPort } from "node:worker_threads";
import { encodeChunkSync } from "../../src/castore/blob/chunk_codec.ts";
import type { BatchedEncoding, ChunkRequest } from "../../src/castore/blob/chunk_worker.ts";
import { ENCODE_BATCH_LIMIT } from "../../src/castore/blob/chunk_pool.ts";

/** The first byte of chunks this Worker refuses. */
export const REFUSED = 0xee;
/** The first byte of chunks this Worker refuses in a batch of one. */
export const NOT_ALONE = 0xeb;

function encode(chunk: ArrayBuffer, allowRaw: boolean, level: number): BatchedEncoding {
  const bytes = new Uint8Array(chunk);
  if (bytes[0] === REFUSED) return { error: "refused on purpose", kind: "storage" };
  const { digest, stored, raw } = encodeChunkSync(bytes, allowRaw, level);
  return { digest, raw, data: stored.buffer as ArrayBuffer };
}

if (parentPort) {
  const port = parentPort;
  port.on("message", (req: ChunkRequest) => {
    if (req.op === "encodeBatch") {
      const encoded = req.chunks.map((c): BatchedEncoding =>
        req.chunks.length === 1 && new Uint8Array(c.chunk)[0] === NOT_ALONE
          ? { error: "a chunk came in a batch of one", kind: "other" }
          : encode(c.chunk, c.allowRaw, c.level)
      );
      const transfer = encoded.flatMap((e) => "data" in e ? [e.data] : []);
      port.postMessage({ id: req.id, encoded }, transfer);
    } else if (req.op === "encode") {
      // The pool must send chunks this small in batches.
      const e: BatchedEncoding = req.chunk.byteLength <= ENCODE_BATCH_LIMIT
        ? { error: "a small chunk came alone", kind: "other" }
        : encode(req.chunk, req.allowRaw, req.level);
      port.postMessage({ id: req.id, ...e }, "data" in e ? [e.data] : []);
    } else {
      port.postMessage({ id: req.id, error: `${req.op} is not served`, kind: "other" });
    }
  });
  port.postMessage({ ready: true });
}
