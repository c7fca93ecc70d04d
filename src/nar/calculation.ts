/**
 * NAR calculation over local services, with a bounded cache so that asking
 * twice about the same node costs a lookup.
 *
 * @module
 */
import type { BlobService } from "../castore/blob/service.ts";
import type { DirectoryService } from "../castore/directory/service.ts";
import { toHex } from "../castore/digest.ts";
import type { NodeVariant } from "../castore/node.ts";
import { calculateNar } from "./render.ts";
import { LoadingCache } from "../loading_cache.ts";

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

/** Default number of cached results (each entry is well under 200 bytes). */
export const DEFAULT_NAR_CACHE_SIZE = 10_000;

/**
 * The cache key of a node: everything that determines its NAR and nothing
 * else (the name is irrelevant).
 */
export function narCacheKey(node: NodeVariant): string {
  switch (node.$case) {
    case "directory":
      return `d:${toHex(node.value.digest)}:${node.value.size}`;
    case "file":
      return `f:${toHex(node.value.digest)}:${node.value.size}:${node.value.executable ? 1 : 0}`;
    case "symlink":
      return `s:${toHex(node.value.target)}`;
  }
}

/**
 * Renders NARs from a blob and a directory service (the daemon's own) and
 * remembers the last {@linkcode DEFAULT_NAR_CACHE_SIZE} results. Failures
 * are not cached: a missing blob may arrive later.
 */
export class LocalNarCalculationService implements NarCalculationService {
  /** The last results; concurrent requests for one node share one rendering. */
  readonly #cache: LoadingCache<string, NarSummary>;

  constructor(
    private readonly blob: BlobService,
    private readonly dir: DirectoryService,
    capacity = DEFAULT_NAR_CACHE_SIZE,
  ) {
    this.#cache = new LoadingCache(capacity);
  }

  /** The node's NAR size and SHA-256; the node's name is ignored. */
  calculateNar(node: NodeVariant): Promise<NarSummary> {
    return this.#cache.fetch(narCacheKey(node), () => calculateNar(node, this.blob, this.dir));
  }

  /** Number of cached results. */
  get cachedCount(): number {
    return this.#cache.size;
  }
}
