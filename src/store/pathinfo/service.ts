/**
 * The PathInfoService interface: PathInfo messages keyed by the 20-byte
 * digest of their store path, and the NAR calculation that goes with them.
 *
 * @module
 */
import type { PathInfo } from "../../proto/tvix/store/protos/pathinfo.ts";
import type { NodeVariant } from "../../castore/node.ts";

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

  /** Releases resources. */
  close(): Promise<void>;
}

/** NAR size and SHA-256 of a node. */
export interface NarSummary {
  narSize: bigint;
  narSha256: Uint8Array;
}

/** Computes what the NAR of a node would be, without keeping the NAR. */
export interface NarCalculationService {
  /** The node's name does not matter. */
  calculateNar(node: NodeVariant): Promise<NarSummary>;
}
