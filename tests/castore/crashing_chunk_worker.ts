/**
 * A chunk Worker that serves two requests with the real codec and then dies
 * of an uncaught exception on the third, as a Worker hit by a fatal bug
 * would; used by `chunk_pool_test.ts`.
 *
 * @module
 */
import { parentPort } from "node:worker_threads";
import { decodeChunkSync, encodeChunkSync } from "../../src/castore/blob/chunk_codec.ts";
import type { ChunkRequest } from "../../src/castore/blob/chunk_worker.ts";

let served = 0;
parentPort!.on("message", (req: ChunkRequest) => {
  if (++served > 2) throw new Error("chunk worker crashed on purpose");
  if (req.op === "encode") {
    const { digest, stored } = encodeChunkSync(new Uint8Array(req.chunk));
    const data = stored.buffer as ArrayBuffer;
    parentPort!.postMessage({ id: req.id, digest, data }, [data]);
  } else if (req.op === "decode") {
    const data = decodeChunkSync(new Uint8Array(req.compressed), req.digest, req.size).buffer;
    parentPort!.postMessage({ id: req.id, data }, [data]);
  }
});
parentPort!.postMessage({ ready: true });
