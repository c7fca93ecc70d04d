/**
 * A chunk Worker that serves two requests with the real codec and then dies
 * of an uncaught exception on the third, as a Worker hit by a fatal bug
 * would; used by `chunk_pool_test.ts`. Only the first such Worker of a
 * process dies: it leaves the file named by `CRASHING_CHUNK_WORKER_MARK`
 * behind, and Workers started after it (the pool's replacements) serve
 * every request, however many chunks of the failed write still reach them.
 *
 * @module
 */
import { existsSync, writeFileSync } from "node:fs";
import { parentPort } from "node:worker_threads";
import { decodeChunkSync, encodeChunkSync } from "../../src/castore/blob/chunk_codec.ts";
import type { ChunkRequest } from "../../src/castore/blob/chunk_worker.ts";

const mark = Deno.env.get("CRASHING_CHUNK_WORKER_MARK");
if (!mark) throw new Error("CRASHING_CHUNK_WORKER_MARK is not set");
const crashes = !existsSync(mark);
let served = 0;
parentPort!.on("message", (req: ChunkRequest) => {
  if (crashes && ++served > 2) {
    writeFileSync(mark, "crashed\n");
    throw new Error("chunk worker crashed on purpose");
  }
  if (req.op === "encode") {
    const { digest, stored } = encodeChunkSync(new Uint8Array(req.chunk));
    const data = stored.buffer as ArrayBuffer;
    parentPort!.postMessage({ id: req.id, digest, data }, [data]);
  } else if (req.op === "encodeBatch") {
    const encoded = req.chunks.map((c) => {
      const { digest, stored, raw } = encodeChunkSync(new Uint8Array(c.chunk), c.allowRaw, c.level);
      return { digest, raw, data: stored.buffer as ArrayBuffer };
    });
    parentPort!.postMessage({ id: req.id, encoded }, encoded.map((e) => e.data));
  } else if (req.op === "decode") {
    const data = decodeChunkSync(new Uint8Array(req.compressed), req.digest, req.size).buffer;
    parentPort!.postMessage({ id: req.id, data }, [data]);
  }
});
parentPort!.postMessage({ ready: true });
