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
import { calculateNar } from "../nar/render.ts";
import type { NarCalculationService, NarSummary } from "./pathinfo/service.ts";

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
  // A Map iterates in insertion order: re-inserting on a hit makes the
  // first key the least recently used one.
  readonly #cache = new Map<string, NarSummary>();
  // Concurrent requests for the same node share one rendering.
  readonly #inflight = new Map<string, Promise<NarSummary>>();

  constructor(
    private readonly blob: BlobService,
    private readonly dir: DirectoryService,
    private readonly capacity = DEFAULT_NAR_CACHE_SIZE,
  ) {}

  /** The node's NAR size and SHA-256; the node's name is ignored. */
  calculateNar(node: NodeVariant): Promise<NarSummary> {
    const key = narCacheKey(node);
    const hit = this.#cache.get(key);
    if (hit) {
      this.#cache.delete(key);
      this.#cache.set(key, hit);
      return Promise.resolve(hit);
    }
    const running = this.#inflight.get(key);
    if (running) return running;
    const p = calculateNar(node, this.blob, this.dir).then((summary) => {
      this.#remember(key, summary);
      return summary;
    }).finally(() => this.#inflight.delete(key));
    this.#inflight.set(key, p);
    return p;
  }

  /** Number of cached results. */
  get cachedCount(): number {
    return this.#cache.size;
  }

  #remember(key: string, summary: NarSummary): void {
    this.#cache.set(key, summary);
    while (this.#cache.size > this.capacity) {
      this.#cache.delete(this.#cache.keys().next().value!);
    }
  }
}
