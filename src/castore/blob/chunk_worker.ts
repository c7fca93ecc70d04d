/**
 * A chunk Worker (node:worker_threads, started by `chunk_pool.ts`): runs
 * the synchronous chunk codec on request, so BLAKE3 and zstd of many chunks
 * proceed beside the main thread. Buffers travel as transferred
 * ArrayBuffers both ways, never copied.
 *
 * `deno compile` must be given `--include src/castore/blob/chunk_worker.ts`.
 *
 * @module
 */
import { parentPort } from "node:worker_threads";
import { decodeChunkSync, encodeChunkSync, release } from "./chunk_codec.ts";
import { CorruptionError, errorMessage, StorageError } from "../../errors.ts";

/** One stored chunk of a `decodeBatch` request. */
export interface BatchedDecode {
  compressed: ArrayBuffer;
  digest: Uint8Array;
  size: number | undefined;
}

/**
 * A failed job, as it crosses to the requesting thread: the message and
 * the error's class, which the other side rebuilds (`workerError` in
 * `chunk_pool.ts`): damage (`CorruptionError`) is told from other storage
 * failures by `verify`.
 */
export interface WorkerFailure {
  error: string;
  kind: "corruption" | "storage" | "other";
}

/** `err` as a {@linkcode WorkerFailure}. */
function failure(err: unknown): WorkerFailure {
  const kind = err instanceof CorruptionError
    ? "corruption"
    : err instanceof StorageError
    ? "storage"
    : "other";
  return { error: errorMessage(err), kind };
}

/** One answer of a `decodeBatch`: the chunk, or why it is not. */
export type BatchedResult = { data: ArrayBuffer } | WorkerFailure;

/** One chunk of an `encodeBatch` request. */
export interface BatchedEncode {
  chunk: ArrayBuffer;
  allowRaw: boolean;
  level: number;
}

/** One answer of an `encodeBatch`: the chunk encoded, or why it is not. */
export type BatchedEncoding =
  | { digest: Uint8Array; raw: boolean; data: ArrayBuffer }
  | WorkerFailure;

/** A request to a chunk Worker. */
export type ChunkRequest =
  | { id: number; op: "encode"; chunk: ArrayBuffer; allowRaw: boolean; level: number }
  | {
    id: number;
    op: "decode";
    compressed: ArrayBuffer;
    digest: Uint8Array;
    size: number | undefined;
    raw: boolean;
  }
  | { id: number; op: "decodeBatch"; chunks: BatchedDecode[] }
  | { id: number; op: "encodeBatch"; chunks: BatchedEncode[] };

/** A chunk Worker's answer to the request with the same `id`. */
export type ChunkResponse =
  | { id: number; digest?: Uint8Array; raw?: boolean; data: ArrayBuffer }
  | { id: number; batch: BatchedResult[] }
  | { id: number; encoded: BatchedEncoding[] }
  | ({ id: number } & WorkerFailure);

/** The first message of a chunk Worker, once it can take requests. */
export interface WorkerReady {
  ready: true;
}

/** Decodes every chunk of a batch; each fails or succeeds on its own. */
function answerBatch(id: number, chunks: BatchedDecode[]): [ChunkResponse, ArrayBuffer[]] {
  const transfer: ArrayBuffer[] = [];
  const batch = chunks.map((c): BatchedResult => {
    try {
      const data = decodeChunkSync(new Uint8Array(c.compressed), c.digest, c.size).buffer;
      transfer.push(data);
      return { data };
    } catch (err) {
      release(c.compressed);
      return failure(err);
    }
  });
  return [{ id, batch }, transfer];
}

/** Encodes every chunk of a batch; each fails or succeeds on its own. */
function answerEncodeBatch(id: number, chunks: BatchedEncode[]): [ChunkResponse, ArrayBuffer[]] {
  const transfer: ArrayBuffer[] = [];
  const encoded = chunks.map((c): BatchedEncoding => {
    let data: ArrayBuffer | undefined;
    try {
      const out = encodeChunkSync(new Uint8Array(c.chunk), c.allowRaw, c.level);
      data = out.stored.buffer as ArrayBuffer;
      transfer.push(data);
      return { digest: out.digest, raw: out.raw, data };
    } catch (err) {
      return failure(err);
    } finally {
      // As in `answer`: a raw chunk's input is also its answer.
      if (c.chunk !== data) release(c.chunk);
    }
  });
  return [{ id, encoded }, transfer];
}

function answer(req: ChunkRequest): [ChunkResponse, ArrayBuffer[]] {
  if (req.op === "decodeBatch") return answerBatch(req.id, req.chunks);
  if (req.op === "encodeBatch") return answerEncodeBatch(req.id, req.chunks);
  const input = req.op === "encode" ? req.chunk : req.compressed;
  let output: ArrayBuffer | undefined;
  try {
    if (req.op === "encode") {
      const { digest, stored, raw } = encodeChunkSync(
        new Uint8Array(req.chunk),
        req.allowRaw,
        req.level,
      );
      output = stored.buffer as ArrayBuffer;
      return [{ id: req.id, digest, raw, data: output }, [output]];
    }
    const plain = decodeChunkSync(new Uint8Array(req.compressed), req.digest, req.size, req.raw);
    output = plain.buffer;
    return [{ id: req.id, data: output }, [output]];
  } catch (err) {
    return [{ id: req.id, ...failure(err) }, []];
  } finally {
    // Frees the input now rather than at this Worker's next garbage
    // collection, which comes late: its heap holds little besides these.
    // A raw chunk's input is also its answer, still to be sent.
    if (input !== output) release(input);
  }
}

if (parentPort) {
  const port = parentPort;
  port.on("message", (req: ChunkRequest) => {
    const [res, transfer] = answer(req);
    port.postMessage(res, transfer);
  });
  // Tells the pool the module loaded (BLAKE3 included) and requests may come.
  port.postMessage({ ready: true } satisfies WorkerReady);
}
