/**
 * What backends offer to garbage collection (docs/gc.md): a sweep that
 * removes what is neither reachable nor recently used. Marking (finding
 * what is reachable from the path infos) is done above them, by
 * `store/gc.ts`; a backend only needs to enumerate and delete its own
 * objects. A backend without `sweep` cannot be collected.
 *
 * @module
 */
import type { Digest } from "./digest.ts";

/** How a sweep decides, and whether it may change anything. */
export interface SweepOptions {
  /**
   * Objects written or reused at or after this time (ms since the epoch)
   * are kept even if unreachable: uploads in flight rely on them.
   */
  cutoff: number;
  /** Report what would go; change nothing. */
  dryRun: boolean;
  /**
   * The grace period `cutoff` was taken with (ms before the collection
   * started), for backends that refuse one too short for them; without
   * it they take the time between the cutoff and now.
   */
  graceMs?: number;
}

/** What a sweep removed (or, in a dry run, would remove). */
export interface SweepReport {
  /** Objects removed. */
  removed: number;
  /** Their stored size in bytes. */
  removedBytes: number;
  /** Objects kept. */
  kept: number;
  /** Disk space given back, in bytes (0 in a dry run). */
  reclaimedBytes: number;
}

/** A service that can take part in garbage collection. */
export interface Sweepable {
  /**
   * Removes every object for which `isLive` is false and that was last
   * written or reused before `options.cutoff`. For blobs, `isLive` is asked
   * about blob digests; the backend keeps the chunks of live blobs.
   */
  sweep(isLive: (digest: Digest) => boolean, options: SweepOptions): Promise<SweepReport>;
}

/** Whether `service` offers {@linkcode Sweepable.sweep}. */
export function isSweepable<T extends object>(service: T): service is T & Sweepable {
  return typeof (service as Partial<Sweepable>).sweep === "function";
}
