/**
 * A PathInfoService combinator that records when paths are used
 * (docs/gc.md#access-times): every `get` that finds a path notes an access,
 * which reaches the backend's `accessed` column in batches. A path read
 * again within the resolution is not noted again, so a hot path costs no
 * write per read. The daemon wraps its path infos in it, so PathInfo Get
 * (which the binary cache's narinfo, the mount's lookups and clients use)
 * counts as an access.
 *
 * @module
 */
import { digestKey } from "../../castore/digest.ts";
import { errorMessage } from "../../errors.ts";
import { log } from "../../log.ts";
import type { NarCalculationService } from "../../nar/calculation.ts";
import type { DamagedRowHandler, PathAccess, PathInfo, PathInfoService } from "./service.ts";
import type { Services } from "../services.ts";

/** A path's access is written at most once per this long (default). */
export const DEFAULT_ACCESS_RESOLUTION_MS = 5 * 60_000;

/** Noted accesses are written this often (default). */
export const DEFAULT_ACCESS_FLUSH_MS = 10_000;

/** Options of {@linkcode AccessRecordingPathInfoService}. */
export interface AccessRecordingOptions {
  /** At most one write per path per this many ms. */
  resolutionMs?: number;
  /** How often noted accesses are written, in ms. */
  flushMs?: number;
}

type RecordingInner = PathInfoService & Required<Pick<PathInfoService, "recordAccess">>;

/** `inner` (which must keep access times), with accesses noted on `get`. */
export class AccessRecordingPathInfoService implements PathInfoService {
  readonly #inner: RecordingInner;
  readonly #resolutionMs: number;
  /** When each recently used path was last noted. */
  readonly #noted = new Map<string, number>();
  /** Noted, not yet written. */
  #pending = new Map<string, PathAccess>();
  #flushing: Promise<void> = Promise.resolve();
  readonly #timer: ReturnType<typeof setInterval>;

  /** Wraps `inner`; throws if it keeps no access times. */
  constructor(inner: PathInfoService, options: AccessRecordingOptions = {}) {
    if (!inner.recordAccess) throw new Error("these path infos keep no access times");
    this.#inner = inner as RecordingInner;
    this.#resolutionMs = options.resolutionMs ?? DEFAULT_ACCESS_RESOLUTION_MS;
    this.#timer = setInterval(() => this.flush(), options.flushMs ?? DEFAULT_ACCESS_FLUSH_MS);
    Deno.unrefTimer(this.#timer);
  }

  /** As the wrapped service; a found path counts as accessed. */
  async get(digest: Uint8Array): Promise<PathInfo | undefined> {
    const info = await this.#inner.get(digest);
    if (info) this.#note(digest);
    return info;
  }

  #note(digest: Uint8Array): void {
    const now = Date.now();
    const key = digestKey(digest);
    const last = this.#noted.get(key);
    if (last !== undefined && now - last < this.#resolutionMs) return;
    this.#noted.set(key, now);
    this.#pending.set(key, { digest, accessedMs: now });
  }

  /**
   * Writes the noted accesses now (one batch), and forgets paths noted
   * longer ago than the resolution. A failed write is logged, not thrown:
   * access times steer gc policies, and serving must not fail for them.
   */
  flush(): Promise<void> {
    this.#flushing = this.#flushing.then(async () => {
      const batch = [...this.#pending.values()];
      this.#pending = new Map();
      const old = Date.now() - this.#resolutionMs;
      for (const [key, at] of this.#noted) if (at < old) this.#noted.delete(key);
      if (batch.length === 0) return;
      try {
        await this.#inner.recordAccess(batch);
      } catch (err) {
        log.warn("recording access times failed", {
          paths: batch.length,
          error: errorMessage(err),
        });
      }
    });
    return this.#flushing;
  }

  /** As the wrapped service. */
  put(info: PathInfo): Promise<PathInfo> {
    return this.#inner.put(info);
  }

  /** As the wrapped service (listing is no access). */
  list(onDamaged?: DamagedRowHandler): AsyncIterable<PathInfo> {
    return this.#inner.list(onDamaged);
  }

  /** As the wrapped service (absent if its rows cannot be damaged or removed). */
  get deleteDamaged(): PathInfoService["deleteDamaged"] {
    const inner = this.#inner;
    return inner.deleteDamaged && ((digest) => inner.deleteDamaged!(digest));
  }

  /** As the wrapped service (absent if its changes are durable at once). */
  get sync(): (() => Promise<void>) | undefined {
    const inner = this.#inner;
    return inner.sync && (() => inner.sync!());
  }

  /** As the wrapped service (absent if it cannot delete). */
  get delete(): PathInfoService["delete"] {
    const inner = this.#inner;
    return inner.delete &&
      ((digest, expected, alongWith) => inner.delete!(digest, expected, alongWith));
  }

  /** Writes what is noted, then as the wrapped service. */
  recordAccess(entries: readonly PathAccess[]): Promise<void> {
    return this.flush().then(() => this.#inner.recordAccess(entries));
  }

  /** The wrapped service's access times, after writing what is noted. */
  async *listAccess(): AsyncGenerator<PathAccess> {
    await this.flush();
    if (this.#inner.listAccess) yield* this.#inner.listAccess();
  }

  /** Keeps a path noted at or after `cutoffMs` even if not written yet; else as the wrapped service. */
  async deleteUnaccessed(digest: Uint8Array, cutoffMs: number): Promise<boolean> {
    if ((this.#noted.get(digestKey(digest)) ?? 0) >= cutoffMs) return false;
    if (!this.#inner.deleteUnaccessed) return false;
    return await this.#inner.deleteUnaccessed(digest, cutoffMs);
  }

  /** As the wrapped service. */
  get narCalculation(): NarCalculationService | undefined {
    return this.#inner.narCalculation;
  }

  /** As the wrapped service. */
  get remote(): boolean | undefined {
    return this.#inner.remote;
  }

  /** Stops the periodic writes and writes what is noted; the wrapped service stays open. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.flush();
  }

  /** Writes what is noted, then closes the wrapped service. */
  async close(): Promise<void> {
    await this.stop();
    await this.#inner.close();
  }
}

/**
 * `services` with their path infos recording accesses, where the backend
 * keeps access times (path infos in another daemon: that daemon records
 * them). `stop` writes what is pending; it does not close `services`.
 */
export function recordingAccesses(
  services: Services,
): { services: Services; stop(): Promise<void> } {
  if (!services.pathInfo.recordAccess) return { services, stop: () => Promise.resolve() };
  const recorder = new AccessRecordingPathInfoService(services.pathInfo);
  return { services: { ...services, pathInfo: recorder }, stop: () => recorder.stop() };
}
