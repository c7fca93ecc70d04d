/**
 * A chunk Worker that answers its first request with the real codec and
 * then never answers again, as a Worker far behind on its queue looks to
 * the pool; used by `chunk_pool_test.ts`. The first answer tells the test
 * that the Worker is up (loading it may take a while on a fresh checkout).
 *
 * @module
 */
import { parentPort } from "node:worker_threads";
import { encodeChunkSync } from "../../src/castore/blob/chunk_codec.ts";
import type { ChunkRequest } from "../../src/castore/blob/chunk_worker.ts";

let served = 0;
parentPort!.on("message", (req: ChunkRequest) => {
  if (served++ > 0 || req.op !== "encode") return;
  const { digest, stored } = encodeChunkSync(new Uint8Array(req.chunk));
  const data = stored.buffer as ArrayBuffer;
  parentPort!.postMessage({ id: req.id, digest, data }, [data]);
});
parentPort!.postMessage({ ready: true });
