/**
 * Where the object-store blob service runs its per-chunk work (see
 * `chunk_codec.ts`): a small pool of chunk Workers, shared by every service
 * in the process, or the calling thread.
 *
 * The pool starts Workers lazily (one more whenever every running one is
 * busy, up to its size) and keeps them unref'd while idle, so it never holds
 * a process open. If Workers cannot start at all, it runs the codec on the
 * calling thread instead, with identical results. A Worker that dies while
 * it has work fails that work with a {@linkcode StorageError} (a write then
 * fails and stores no index); the next task starts a fresh Worker.
 *
 * @module
 */
import { Worker } from "node:worker_threads";
import type { Digest } from "../digest.ts";
import { CorruptionError, errorMessage, StorageError } from "../../errors.ts";
import { log } from "../../log.ts";
import {
  decodeChunk,
  decodeChunkSync,
  decodeInline,
  ENCODE_INLINE_LIMIT,
  encodeChunk,
  type EncodedChunk,
  owned,
  ZSTD_LEVEL,
} from "./chunk_codec.ts";
import type { ChunkRequest, ChunkResponse, WorkerFailure, WorkerReady } from "./chunk_worker.ts";
import { smallFrameDecoderAvailable } from "./zstd_small.ts";
import { TurnBatch } from "../../turn_batch.ts";

/** A failure a chunk Worker reported, as the error class it was thrown as. */
function workerError(failure: WorkerFailure): Error {
  if (failure.kind === "corruption") return new CorruptionError(failure.error);
  if (failure.kind === "storage") return new StorageError(failure.error);
  return new Error(failure.error);
}
/** Runs the per-chunk work of the object-store blob service. */
export interface ChunkCodec {
  /**
   * Hashes and compresses a chunk (with `allowRaw`, keeps it uncompressed
   * where zstd saves too little). Takes ownership of `chunk`: its buffer
   * may be handed to another thread, so the caller must not use it again.
   */
  encode(chunk: Uint8Array, allowRaw?: boolean, level?: number): Promise<EncodedChunk>;
  /**
   * Decompresses a stored chunk (unless `raw`) and verifies it against
   * `digest` (and `size`, if known); {@linkcode StorageError} if it is not
   * exactly that chunk. Takes ownership of `compressed`.
   */
  decode(compressed: Uint8Array, digest: Digest, size?: number, raw?: boolean): Promise<Uint8Array>;
  /**
   * {@linkcode decode} done now, for a chunk that it would decode on the
   * calling thread anyway (raw, or small with a reused zstd context), with
   * the same checks, thrown; `undefined`, leaving `compressed` alone, for a
   * chunk it would hand elsewhere. Small files read together are then
   * answered without a chain of promises each. A view into a larger buffer
   * is only read; one that spans its whole buffer is taken as the caller's
   * to give away (like `decode`'s input), and may become the result.
   */
  decodeHere(
    compressed: Uint8Array,
    digest: Digest,
    size?: number,
    raw?: boolean,
  ): Uint8Array | undefined;
}

/** The codec on the calling thread (zstd itself runs on the libuv threadpool). */
export const inThreadCodec: ChunkCodec = {
  encode: (chunk, allowRaw, level) => encodeChunk(chunk, allowRaw, level),
  decode: (compressed, digest, size, raw) => decodeChunk(compressed, digest, size, raw),
  decodeHere: (compressed, digest, size, raw) =>
    raw || decodeInline(compressed, size)
      ? decodeChunkSync(compressed, digest, size, raw)
      : undefined,
};

/**
 * The codec inside a Worker: decoding runs synchronously on the Worker's
 * own thread. The Worker is the unit of parallelism there (a FUSE Worker per
 * channel), and handing each chunk to the libuv threadpool and back cost
 * more than it saved: a cold 1 GiB read through a 2-thread mount went from
 * 450-494 to ~560 MB/s and from ~3.7 to ~3.1 s of CPU with decoding inline.
 */
export const workerThreadCodec: ChunkCodec = {
  encode: (chunk, allowRaw, level) => encodeChunk(chunk, allowRaw, level),
  decode: (compressed, digest, size, raw) => {
    try {
      return Promise.resolve(decodeChunkSync(compressed, digest, size, raw));
    } catch (err) {
      return Promise.reject(err);
    }
  },
  decodeHere: (compressed, digest, size, raw) => decodeChunkSync(compressed, digest, size, raw),
};

/**
 * Chunk Workers to use by default: one per core beyond the first, at least
 * one, at most four. Encoding (writes) uses all but one of them when there
 * are several, since the writer's own thread is busy hashing the whole blob
 * and chunking it; decoding (reads) uses all. On two cores one Worker it
 * is: a second made a lone reader ~20 % faster, but not the daemon (whose
 * main thread and client already fill both cores), while each Worker adds
 * ~40 MiB of resident memory against the daemon's 400 MiB budget. Inside a
 * Worker (e.g. a FUSE Worker, where the embedding code already spreads work
 * over threads) none: the codec runs on that Worker's thread.
 */
export function defaultChunkWorkers(): number {
  if (!isMainThread()) return 0;
  return Math.min(4, Math.max(1, (navigator.hardwareConcurrency ?? 2) - 1));
}

function isMainThread(): boolean {
  // Deno Workers have WorkerGlobalScope; node:worker_threads Workers a parentPort.
  return !("WorkerGlobalScope" in globalThis);
}

/**
 * Small chunks asked for together from this many on are split between
 * this thread and a Worker (see {@linkcode ChunkWorkerPool.decode}).
 */
const SMALL_BATCH_SPLIT = 4;

/**
 * Chunks up to this size that go to a Worker to be encoded go in one
 * message per turn of the event loop (see {@linkcode ChunkWorkerPool.encode}):
 * whole files too large to encode inline but smaller than a FastCDC chunk
 * (at least 128 KiB), and the last chunks of larger blobs. Full chunks
 * still go one per message, so a large blob's chunks come back as each
 * is done.
 */
export const ENCODE_BATCH_LIMIT = 128 * 1024;

/** A small chunk waiting to be decoded, and its caller. */
interface SmallDecode {
  compressed: Uint8Array;
  digest: Digest;
  size: number | undefined;
  resolve: (data: Uint8Array) => void;
  reject: (err: Error) => void;
}

/** A chunk waiting to be sent to a Worker for encoding, and its caller. */
interface PendingEncode {
  chunk: ArrayBuffer;
  allowRaw: boolean;
  level: number;
  resolve: (encoded: EncodedChunk) => void;
  reject: (err: Error) => void;
}

function decodeSmallHere(d: SmallDecode): void {
  try {
    d.resolve(decodeChunkSync(d.compressed, d.digest, d.size));
  } catch (err) {
    d.reject(err instanceof Error ? err : new Error(String(err)));
  }
}

const WORKER_URL = new URL("./chunk_worker.ts", import.meta.url);

/** A Worker's successful answer. */
type ChunkResult = Exclude<ChunkResponse, { error: string }>;
/** A Worker's successful answer to one `encode` or `decode`. */
type DataResult = Extract<ChunkResponse, { data: ArrayBuffer }>;

interface Task {
  req: ChunkRequest;
  transfer: ArrayBuffer[];
  resolve: (res: ChunkResult) => void;
  reject: (err: Error) => void;
  /** Runs the task on the calling thread instead (Workers unavailable). */
  fallback: () => void;
}

/** One Worker and the tasks it owes answers to. */
class Slot {
  readonly worker: Worker;
  readonly pending = new Map<number, Task>();
  /** Whether the Worker has loaded its module (answered anything yet). */
  ready = false;
  /** Tasks waiting for the Worker to load. */
  readonly queued: Task[] = [];

  constructor(worker: Worker) {
    this.worker = worker;
  }

  get load(): number {
    return this.pending.size + this.queued.length;
  }
}

/**
 * A pool of chunk Workers implementing {@linkcode ChunkCodec}. Most code
 * uses the process-wide pool through {@linkcode acquireChunkCodec}.
 */
export class ChunkWorkerPool implements ChunkCodec {
  #size: number;
  readonly #url: URL;
  readonly #slots = new Set<Slot>();
  #nextId = 1;
  /** Set once a Worker failed to start: from then on the codec runs in-thread. */
  #disabled = false;
  /** Small chunks to decode at the next microtask checkpoint (see {@linkcode #decodeSmall}). */
  readonly #smallDecodes = new TurnBatch<SmallDecode>((batch) => this.#decodeSmall(batch));
  /** Chunks to send for encoding together (see {@linkcode encode}). */
  readonly #batchedEncodes = new TurnBatch<PendingEncode>(
    (batch) => this.#encodeBatch(batch),
    setImmediate,
  );

  /**
   * `size`: most Workers to run; `workerUrl`: another module speaking the
   * same protocol (for tests).
   */
  constructor(size: number, workerUrl: URL = WORKER_URL) {
    this.#size = Math.max(1, size);
    this.#url = workerUrl;
  }

  /** Whether the pool has given up on Workers and runs the codec in-thread. */
  get inThread(): boolean {
    return this.#disabled;
  }

  /** Workers currently running. */
  get workers(): number {
    return this.#slots.size;
  }

  /** Workers that encode: all but one when there are several (see {@linkcode defaultChunkWorkers}). */
  get #encodeWorkers(): number {
    return Math.max(1, this.#size - 1);
  }

  /** Raises the pool size (never lowers it). */
  grow(size: number): void {
    this.#size = Math.max(this.#size, size);
  }

  async encode(chunk: Uint8Array, allowRaw = false, level = ZSTD_LEVEL): Promise<EncodedChunk> {
    if (this.#disabled || chunk.length <= ENCODE_INLINE_LIMIT) {
      return await inThreadCodec.encode(chunk, allowRaw, level);
    }
    if (chunk.length <= ENCODE_BATCH_LIMIT) {
      // A message to a Worker, and its answer, each cost a wake-up of the
      // other thread: importing 20,000 files of 0.1-30 KiB into a pack
      // store, sending the chunks of a turn together took 2.12-2.32 s and
      // 3.05-3.10 CPU-s against 2.34-2.52 s and 3.39-3.53 CPU-s (three
      // interleaved pairs by hand).
      const buf = owned(chunk).buffer;
      return await new Promise((resolve, reject) => {
        this.#batchedEncodes.add({ chunk: buf, allowRaw, level, resolve, reject });
      });
    }
    // Only Workers encode large chunks, even when they fall behind. Letting
    // the writer's thread take the next chunk once its Worker had four
    // waiting made one 512 MiB write 20-30 % faster by hand, but imports
    // slower (the importer's thread is busy walking, reading and hashing)
    // and 10-30 MiB larger at peak: in interleaved `bench import` runs the
    // embedded store's medians were 4.15-4.69 s against 3.08-3.67 s.
    const buf = owned(chunk).buffer;
    const res = await this.#run(
      this.#encodeWorkers,
      (id) => ({ id, op: "encode", chunk: buf, allowRaw, level }),
      [buf],
      () => inThreadCodec.encode(new Uint8Array(buf), allowRaw, level),
    );
    return "stored" in res ? res : {
      digest: (res as DataResult).digest!,
      stored: new Uint8Array((res as DataResult).data),
      raw: (res as DataResult).raw ?? false,
    };
  }

  decodeHere(
    compressed: Uint8Array,
    digest: Digest,
    size?: number,
    raw = false,
  ): Uint8Array | undefined {
    if (this.#disabled) return inThreadCodec.decodeHere(compressed, digest, size, raw);
    // A raw chunk only needs hashing, and a small one of known size takes
    // a few µs with the reused zstd context (zstd_small.ts): less than
    // handing it to a Worker costs.
    return raw ||
        (size !== undefined && decodeInline(compressed, size) && smallFrameDecoderAvailable())
      ? decodeChunkSync(compressed, digest, size, raw)
      : undefined;
  }

  async decode(
    compressed: Uint8Array,
    digest: Digest,
    size?: number,
    raw = false,
  ): Promise<Uint8Array> {
    if (this.#disabled) return await inThreadCodec.decode(compressed, digest, size, raw);
    const here = this.decodeHere(compressed, digest, size, raw);
    if (here !== undefined) return here;
    if (decodeInline(compressed, size)) {
      return await new Promise((resolve, reject) => {
        this.#smallDecodes.add({ compressed, digest, size, resolve, reject });
      });
    }
    const buf = owned(compressed).buffer;
    const res = await this.#run(
      this.#size,
      // A copy of the digest: it may be a view into a larger buffer (a
      // decoded index), which structured cloning would copy whole.
      (id) => ({ id, op: "decode", compressed: buf, digest: digest.slice(), size, raw }),
      [buf],
      () => inThreadCodec.decode(new Uint8Array(buf), digest, size),
    );
    return res instanceof Uint8Array ? res : new Uint8Array((res as DataResult).data);
  }

  /**
   * Decodes the small chunks asked for since the last microtask checkpoint.
   * One alone (a lone reader) is decoded here at once: a Worker would only
   * add latency. Several (a reader prefetching many small files) are
   * split: the first ones are decoded here, the later ones by a Worker in
   * one message, so both threads work and the reader, which consumes them
   * in order, finds the Worker's share done when it gets there.
   */
  #decodeSmall(batch: SmallDecode[]): void {
    const here = batch.length < SMALL_BATCH_SPLIT ? batch.length : Math.ceil(batch.length / 2);
    const away = batch.slice(here);
    if (away.length > 0) {
      const chunks = away.map((d) => ({
        compressed: owned(d.compressed).buffer,
        digest: d.digest.slice(),
        size: d.size,
      }));
      const inThread = () => {
        for (const [i, d] of away.entries()) {
          decodeSmallHere({ ...d, compressed: new Uint8Array(chunks[i].compressed) });
        }
        return Promise.resolve(undefined);
      };
      this.#run(
        this.#size,
        (id) => ({ id, op: "decodeBatch", chunks }),
        chunks.map((c) => c.compressed),
        inThread,
      ).then((res) => {
        if (!res || !("batch" in res)) return;
        for (const [i, r] of res.batch.entries()) {
          if ("data" in r) away[i].resolve(new Uint8Array(r.data));
          else away[i].reject(workerError(r));
        }
      }, (err) => {
        for (const d of away) d.reject(err);
      });
    }
    for (const d of batch.slice(0, here)) decodeSmallHere(d);
  }

  /**
   * Encodes the chunks gathered in {@linkcode encode}: one message per
   * encoding Worker the pool may run; each chunk fails or succeeds on its
   * own. Without Workers they are encoded here.
   */
  #encodeBatch(batch: PendingEncode[]): void {
    // Split over the encoding Workers, as single chunks would be.
    const per = Math.ceil(batch.length / Math.min(this.#encodeWorkers, batch.length));
    for (let i = 0; i < batch.length; i += per) this.#sendEncodes(batch.slice(i, i + per));
  }

  /** One `encodeBatch` message for `batch` (see {@linkcode #encodeBatch}). */
  #sendEncodes(batch: PendingEncode[]): void {
    const chunks = batch.map(({ chunk, allowRaw, level }) => ({ chunk, allowRaw, level }));
    const inThread = async () => {
      for (const e of batch) {
        await inThreadCodec.encode(new Uint8Array(e.chunk), e.allowRaw, e.level)
          .then(e.resolve, e.reject);
      }
      return undefined;
    };
    this.#run(
      this.#encodeWorkers,
      (id) => ({ id, op: "encodeBatch", chunks }),
      chunks.map((c) => c.chunk),
      inThread,
    ).then((res) => {
      if (!res || !("encoded" in res)) return;
      for (const [i, r] of res.encoded.entries()) {
        if ("data" in r) {
          batch[i].resolve({ digest: r.digest, stored: new Uint8Array(r.data), raw: r.raw });
        } else {
          batch[i].reject(workerError(r));
        }
      }
    }, (err) => {
      for (const e of batch) e.reject(err);
    });
  }

  /**
   * Stops every Worker. Their unanswered tasks fail with a StorageError;
   * later tasks start new Workers.
   */
  async terminate(): Promise<void> {
    const slots = [...this.#slots];
    this.#slots.clear();
    const stopped = new StorageError("chunk worker was stopped");
    for (const slot of slots) this.#fail(slot, stopped);
    // Gathered for a Worker and not sent yet: sent after this, they would
    // start a Worker that nothing stops.
    for (const e of this.#batchedEncodes.take()) e.reject(stopped);
    for (const d of this.#smallDecodes.take()) d.reject(stopped);
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  /** Runs a request on one of the first `limit` Workers (see {@linkcode defaultChunkWorkers}). */
  #run<T>(
    limit: number,
    request: (id: number) => ChunkRequest,
    transfer: ArrayBuffer[],
    inThread: () => Promise<T>,
  ): Promise<ChunkResult | T> {
    return new Promise((resolve, reject) => {
      const task: Task = {
        req: request(this.#nextId++),
        transfer,
        resolve,
        reject,
        fallback: () => inThread().then(resolve, reject),
      };
      const slot = this.#pick(limit);
      if (!slot) return task.fallback();
      if (slot.ready) this.#send(slot, task);
      else slot.queued.push(task);
      slot.worker.ref();
    });
  }

  /**
   * The least busy of the first `limit` Workers, or a new one if all of
   * them are busy and there are fewer; undefined if none can start.
   */
  #pick(limit: number): Slot | undefined {
    let best: Slot | undefined;
    let seen = 0;
    for (const s of this.#slots) {
      if (seen++ >= limit) break;
      if (!best || s.load < best.load) best = s;
    }
    if (best && (best.load === 0 || seen >= limit)) return best;
    return this.#spawn() ?? best;
  }

  #spawn(): Slot | undefined {
    let worker: Worker;
    try {
      worker = new Worker(this.#url);
    } catch (err) {
      this.#giveUp(errorMessage(err));
      return undefined;
    }
    const slot = new Slot(worker);
    this.#slots.add(slot);
    worker.on("message", (msg: ChunkResponse | WorkerReady) => this.#onMessage(slot, msg));
    worker.on("error", (err: unknown) => this.#onDeath(slot, `failed: ${errorMessage(err)}`));
    worker.on("exit", (code: number) => this.#onDeath(slot, `exited (code ${code})`));
    // Tasks wait for the Worker's "ready" before they are sent: one whose
    // module cannot load never gets any data, so its tasks can run in-thread.
    // (Deno also drops messages that arrive before the Worker's listener is
    // attached, which happens only after its module's top-level await.)
    worker.unref();
    return slot;
  }

  #onMessage(slot: Slot, msg: ChunkResponse | WorkerReady): void {
    if ("ready" in msg) {
      slot.ready = true;
      for (const task of slot.queued.splice(0)) this.#send(slot, task);
      return;
    }
    const task = slot.pending.get(msg.id);
    if (!task) return;
    slot.pending.delete(msg.id);
    if (slot.load === 0) slot.worker.unref();
    if ("error" in msg) {
      task.reject(workerError(msg));
    } else {
      task.resolve(msg);
    }
  }

  #send(slot: Slot, task: Task): void {
    slot.pending.set(task.req.id, task);
    slot.worker.postMessage(task.req, task.transfer);
  }

  #onDeath(slot: Slot, what: string): void {
    if (!this.#slots.delete(slot)) return;
    if (!slot.ready) {
      // It never loaded: Workers do not work here. Its tasks still hold
      // their buffers (nothing was sent), so they run in-thread.
      this.#giveUp(what);
      for (const task of slot.queued.splice(0)) task.fallback();
      void slot.worker.terminate();
      return;
    }
    this.#fail(slot, new StorageError(`chunk worker ${what}`));
    void slot.worker.terminate();
  }

  #giveUp(why: string): void {
    if (!this.#disabled) {
      log.warn("chunk workers unavailable, chunks are processed in-thread", { why });
    }
    this.#disabled = true;
  }

  #fail(slot: Slot, err: StorageError): void {
    for (const task of slot.pending.values()) task.reject(err);
    for (const task of slot.queued) task.reject(err);
    slot.pending.clear();
    slot.queued.length = 0;
  }
}

let shared: ChunkWorkerPool | undefined;
let sharedUsers = 0;

/** A use of a codec; `release()` once done with it. */
export interface ChunkCodecLease {
  readonly codec: ChunkCodec;
  release(): Promise<void>;
}

/**
 * The process-wide chunk codec for `workers` Workers: the shared pool
 * (started on first use, grown to the largest size asked for) or, for
 * `workers <= 0`, the in-thread codec. The pool's Workers stop when the
 * last lease is released.
 */
export function acquireChunkCodec(workers: number = defaultChunkWorkers()): ChunkCodecLease {
  if (workers <= 0) {
    const codec = isMainThread() ? inThreadCodec : workerThreadCodec;
    return { codec, release: () => Promise.resolve() };
  }
  if (shared) shared.grow(workers);
  else shared = new ChunkWorkerPool(workers);
  sharedUsers++;
  const pool = shared;
  let released = false;
  return {
    codec: pool,
    release: async () => {
      if (released) return;
      released = true;
      if (--sharedUsers > 0) return;
      if (shared === pool) shared = undefined;
      await pool.terminate();
    },
  };
}
