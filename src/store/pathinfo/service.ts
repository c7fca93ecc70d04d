/**
 * The PathInfoService interface: PathInfo messages keyed by the 20-byte
 * digest of their store path.
 *
 * @module
 */
import type { PathInfo } from "../../proto/tvix/store/protos/pathinfo.ts";
import type { NarCalculationService } from "../../nar/calculation.ts";

export type { PathInfo };

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
   * if there was none. Absent where the backend cannot delete (a remote
   * daemon: the upstream protocol has no delete).
   */
  delete?(digest: Uint8Array): Promise<boolean>;

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
