/**
 * The PathInfoService interface: PathInfo messages keyed by the 20-byte
 * digest of their store path.
 *
 * @module
 */
import type { PathInfo } from "../../proto/tvix/store/protos/pathinfo.ts";
import type { NarCalculationService } from "../../nar/calculation.ts";
import { InvalidRequestError } from "../../errors.ts";

export type { PathInfo };

/** Referrers a refusal names at most: enough to act on, not the whole list. */
export const REFERRERS_NAMED = 16;

/**
 * A deletion refused because other stored paths refer to the path
 * (docs/gc.md#referrers): removing it would leave their closures broken.
 */
export class StillReferencedError extends InvalidRequestError {
  override name = "StillReferencedError";
  /** The 20-byte digest of the path refused, and of some paths referring to it. */
  constructor(readonly digest: Uint8Array, readonly referrers: Uint8Array[]) {
    super(`the path is still referenced by ${referrers.length} other path(s)`);
  }
}

/** When a store path was last used (docs/gc.md#access-times). */
export interface PathAccess {
  /** The 20-byte store path digest. */
  digest: Uint8Array;
  /** Last access, in ms since the epoch. */
  accessedMs: number;
}

/** A store of PathInfo messages. */
export interface PathInfoService {
  /** The PathInfo of the store path with this 20-byte digest, or `undefined`. */
  get(digest: Uint8Array): Promise<PathInfo | undefined>;

  /**
   * Validates and stores a PathInfo, replacing one with the same store path.
   * Returns it as stored. Throws `InvalidRequestError` when invalid.
   */
  put(info: PathInfo): Promise<PathInfo>;

  /** Every stored PathInfo. */
  list(): AsyncIterable<PathInfo>;

  /**
   * Removes the PathInfo of the store path with this 20-byte digest; false
   * if there was none. Throws {@linkcode StillReferencedError} while
   * another stored path refers to it, checked in the same atomic step as
   * the removal, so a referrer stored meanwhile keeps it; referrers whose
   * keys (`digestKey`) are in `alongWith` are being deleted by the same
   * request and do not count (paths that refer to each other). With
   * `expected` (a repair of damage), only if the stored PathInfo is still
   * that one, and whatever refers to it: a path stored anew meanwhile
   * stays. Absent where the backend cannot delete (a remote daemon: the
   * upstream protocol has no delete).
   */
  delete?(
    digest: Uint8Array,
    expected?: PathInfo,
    alongWith?: ReadonlySet<string>,
  ): Promise<boolean>;

  /**
   * Makes every change made through this service so far durable, even
   * against a power failure: garbage collection calls it after deleting
   * PathInfos and before removing the data they named. Absent where every
   * change is durable when it returns.
   */
  sync?(): Promise<void>;

  /**
   * Moves the access times of these paths forward (never back); paths not
   * in the store are ignored. Absent where the backend keeps no access
   * times (a remote daemon keeps its own).
   */
  recordAccess?(entries: readonly PathAccess[]): Promise<void>;

  /** Every stored path's last access time (absent as {@linkcode recordAccess} is). */
  listAccess?(): AsyncIterable<PathAccess>;

  /**
   * Removes the PathInfo unless it was accessed at or after `cutoffMs` or
   * another stored path refers to it, in one step; false if it was kept or
   * absent. Garbage collection's policies delete through it, so a path used
   * or referred to while they run stays.
   */
  deleteUnaccessed?(digest: Uint8Array, cutoffMs: number): Promise<boolean>;

  /**
   * Set when the backend calculates NARs itself, next to its data (a
   * daemon renders from its own storage, so no blob travels back to the
   * caller). Absent: NARs are calculated locally from the blob and
   * directory services.
   */
  readonly narCalculation?: NarCalculationService;

  /** True when every call is a network round trip (a remote daemon). */
  readonly remote?: boolean;

  /** Releases resources. */
  close(): Promise<void>;
}
