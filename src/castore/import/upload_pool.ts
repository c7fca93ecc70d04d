/**
 * A pool of Workers uploading local files to a BlobService given by URL,
 * so that BLAKE3 hashing, chunking and compression of many files use every
 * core instead of only the main thread's.
 *
 * Workers need a few hundred milliseconds to start; until one is ready,
 * uploads run in this thread through the caller's own BlobService, so small
 * imports never wait for them. A URL a Worker cannot open on its own (such as
 * `memory://`, whose data would be private to the Worker) must not be given
 * to the pool; {@linkcode canUseWorkers} says which ones can.
 *
 * @module
 */
import type { BlobService } from "../blob/service.ts";
import type { Digest } from "../digest.ts";
import { IngestError, uploadFile } from "./fs.ts";

/** Files in flight per Worker. */
const PER_WORKER = 8;

/** Whether Workers can reach the same blobs through `url` (not in-memory stores). */
export function canUseWorkers(url: string): boolean {
  return !/^(memory:|objectstore\+memory:)/.test(url);
}

interface Job {
  id: number;
  path: string;
  size: number;
  resolve(d: Digest): void;
  reject(e: unknown): void;
}

interface Slot {
  worker: Worker;
  ready: boolean;
  dead: boolean;
  inflight: Map<number, Job>;
  closed?: () => void;
}

/** Uploads files through Workers (with an in-thread fallback). */
export class WorkerUploadPool {
  readonly #slots: Slot[] = [];
  readonly #queue: Job[] = [];
  #nextId = 0;
  #settle!: (anyReady: boolean) => void;
  /** Resolves once a Worker is ready (true) or none can start (false). */
  readonly ready: Promise<boolean> = new Promise((r) => (this.#settle = r));

  /** Starts `workers` Workers, each opening `blobUrl`; `local` serves until one is ready. */
  constructor(
    private readonly blobUrl: string,
    private readonly local: BlobService,
    workers = 2,
  ) {
    for (let i = 0; i < workers; i++) {
      let worker: Worker;
      try {
        worker = new Worker(new URL("./upload_worker.ts", import.meta.url).href, {
          type: "module",
        });
      } catch {
        // E.g. a compiled binary built without the worker module: upload in this thread.
        break;
      }
      const slot: Slot = { worker, ready: false, dead: false, inflight: new Map() };
      worker.onmessage = (e) => this.#onMessage(slot, e.data);
      worker.onerror = (e) => {
        e.preventDefault();
        this.#kill(slot, new Error(`upload worker failed: ${e.message}`));
      };
      this.#slots.push(slot);
    }
    if (this.#slots.length === 0) this.#settle(false);
  }

  /** Uploads the file at `path` (expected to be `size` bytes); resolves to its digest. */
  upload(path: string, size: number): Promise<Digest> {
    if (!this.#slots.some((s) => s.ready && !s.dead)) {
      return uploadFile(this.local, path, size);
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ id: this.#nextId++, path, size, resolve, reject });
      this.#pump();
    });
  }

  /** Lets the Workers close their services, then stops them. */
  async close(): Promise<void> {
    await Promise.all(this.#slots.map(async (slot) => {
      if (slot.ready && !slot.dead) {
        const closed = new Promise<void>((r) => (slot.closed = r));
        slot.worker.postMessage({ close: true });
        await closed;
      }
      slot.dead = true;
      slot.worker.terminate();
    }));
    for (const job of this.#queue.splice(0)) job.reject(new Error("upload pool closed"));
  }

  #pump(): void {
    while (this.#queue.length > 0) {
      let best: Slot | undefined;
      for (const s of this.#slots) {
        if (s.ready && !s.dead && s.inflight.size < PER_WORKER) {
          if (!best || s.inflight.size < best.inflight.size) best = s;
        }
      }
      if (!best) {
        // No live Worker left at all: finish the queue in this thread.
        if (!this.#slots.some((s) => s.ready && !s.dead)) {
          for (const job of this.#queue.splice(0)) {
            uploadFile(this.local, job.path, job.size).then(job.resolve, job.reject);
          }
        }
        return;
      }
      const job = this.#queue.shift()!;
      best.inflight.set(job.id, job);
      best.worker.postMessage({ id: job.id, path: job.path, size: job.size });
    }
  }

  #onMessage(slot: Slot, m: Record<string, unknown>): void {
    if (m.loaded) {
      slot.worker.postMessage({ init: this.blobUrl });
      return;
    }
    if (m.ready) {
      slot.ready = true;
      this.#settle(true);
      this.#pump();
      return;
    }
    if (m.initError !== undefined) {
      slot.dead = true;
      slot.worker.terminate();
      if (this.#slots.every((s) => s.dead)) this.#settle(false);
      this.#pump();
      return;
    }
    if (m.closed) {
      slot.closed?.();
      return;
    }
    const job = slot.inflight.get(m.id as number);
    if (!job) return;
    slot.inflight.delete(job.id);
    if (m.error !== undefined) {
      job.reject(new IngestError(job.path, String(m.detail ?? m.error)));
    } else {
      job.resolve(m.digest as Digest);
    }
    this.#pump();
  }

  #kill(slot: Slot, err: Error): void {
    slot.dead = true;
    slot.worker.terminate();
    if (this.#slots.every((s) => s.dead)) this.#settle(false);
    for (const job of slot.inflight.values()) job.reject(err);
    slot.inflight.clear();
    slot.closed?.();
    this.#pump();
  }
}
