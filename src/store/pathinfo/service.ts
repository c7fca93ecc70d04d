/**
 * The PathInfoService interface: PathInfo messages keyed by the 20-byte
 * digest of their store path.
 *
 * @module
 */
import type { PathInfo } from "../../proto/tvix/store/protos/pathinfo.ts";
import type { NarCalculationService } from "../../nar/calculation.ts";
import { type CorruptionError, InvalidRequestError } from "../../errors.ts";

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

/** Told of a stored row that does not read as a valid PathInfo, by its key. */
export type DamagedRowHandler = (digest: Uint8Array, error: CorruptionError) => void;

/** A store of PathInfo messages. */
export interface PathInfoService {
  /** The PathInfo of the store path with this 20-byte digest, or `undefined`. */
  get(digest: Uint8Array): Promise<PathInfo | undefined>;

  /**
   * Validates and stores a PathInfo, replacing one with the same store path.
   * Returns it as stored. Throws `InvalidRequestError` when invalid.
   */
  put(info: PathInfo): Promise<PathInfo>;

  /**
   * Every stored PathInfo. A stored one that does not decode, is invalid or
   * sits under another path's key fails the listing with a
   * `CorruptionError`, unless `onDamaged` is given: then it is reported
   * there, by its key, and skipped (for `verify`).
   */
  list(onDamaged?: DamagedRowHandler): AsyncIterable<PathInfo>;

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
   * Removes the stored row under this 20-byte digest if it is still
   * damaged (as {@linkcode list} reports it), with what it refers to; false
   * if it is absent or reads whole now. Absent where rows cannot be damaged
   * (memory) or cannot be removed (a remote daemon).
   */
  deleteDamaged?(digest: Uint8Array): Promise<boolean>;

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
