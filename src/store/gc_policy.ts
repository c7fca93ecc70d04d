/**
 * Which store paths garbage collection's policies delete (docs/gc.md#policies):
 * `--older-than` (paths not accessed within a time) and `--max-size`
 * (least recently used paths until the store's size is under a limit).
 * A pure function over the reference graph, access times and sizes; the
 * caller deletes.
 *
 * The invariant both keep: a path that a kept path refers to is kept, so
 * the closure of every kept path stays whole. Victims come in
 * reverse-topological order (referrers before what they refer to).
 *
 * @module
 */

/** One store path, as the policies see it. */
export interface PolicyPath {
  /** Its key (the hex store path digest). */
  key: string;
  /** Keys of the paths it refers to (itself excluded; unknown keys are ignored). */
  references: readonly string[];
  /** Last access, ms since the epoch. */
  accessedMs: number;
  /** Blob key → size of every file its tree holds (only needed for a size limit). */
  blobs?: ReadonlyMap<string, number>;
}

/** What the policies are asked to do. */
export interface PolicyOptions {
  /** Delete paths last accessed before `nowMs - olderThanMs`. */
  olderThanMs?: number;
  /** Then delete least recently used paths until the size is at most this. */
  maxSizeBytes?: number;
  /** The time the rules are applied at. */
  nowMs: number;
}

/** What the policies chose. */
export interface PolicyChoice {
  /** Keys to delete, referrers before the paths they refer to. */
  victims: string[];
  /**
   * The stored size before and after (with a size limit): the bytes of the
   * distinct file contents the paths hold, each counted once.
   */
  sizeBefore?: number;
  sizeAfter?: number;
}

/** A min-heap of paths by access time (least recently used first). */
class LruHeap {
  readonly #items: PolicyPath[] = [];

  get size(): number {
    return this.#items.length;
  }

  push(p: PolicyPath): void {
    const a = this.#items;
    a.push(p);
    for (let i = a.length - 1; i > 0;) {
      const up = (i - 1) >> 1;
      if (a[up].accessedMs <= a[i].accessedMs) break;
      [a[up], a[i]] = [a[i], a[up]];
      i = up;
    }
  }

  pop(): PolicyPath | undefined {
    const a = this.#items;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last) {
      a[0] = last;
      for (let i = 0;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < a.length && a[l].accessedMs < a[m].accessedMs) m = l;
        if (r < a.length && a[r].accessedMs < a[m].accessedMs) m = r;
        if (m === i) break;
        [a[m], a[i]] = [a[i], a[m]];
        i = m;
      }
    }
    return top;
  }
}

/** Chooses the paths to delete; see the module doc for the rules. */
export function choosePolicyVictims(
  paths: readonly PolicyPath[],
  options: PolicyOptions,
): PolicyChoice {
  const byKey = new Map(paths.map((p) => [p.key, p]));
  const refsOf = (p: PolicyPath) => p.references.filter((r) => r !== p.key && byKey.has(r));
  // How many remaining paths refer to each path.
  const referrers = new Map<string, number>(paths.map((p) => [p.key, 0]));
  for (const p of paths) for (const r of refsOf(p)) referrers.set(r, referrers.get(r)! + 1);

  const victims: string[] = [];
  const gone = new Set<string>();
  const remove = (p: PolicyPath, onFreed?: (q: PolicyPath) => void) => {
    gone.add(p.key);
    victims.push(p.key);
    for (const r of refsOf(p)) {
      const left = referrers.get(r)! - 1;
      referrers.set(r, left);
      if (left === 0) onFreed?.(byKey.get(r)!);
    }
  };

  if (options.olderThanMs !== undefined) {
    // Kept: every recent path and everything it refers to, transitively.
    const cutoff = options.nowMs - options.olderThanMs;
    const kept = new Set<string>();
    const stack = paths.filter((p) => p.accessedMs >= cutoff).map((p) => p.key);
    while (stack.length > 0) {
      const key = stack.pop()!;
      if (kept.has(key)) continue;
      kept.add(key);
      stack.push(...refsOf(byKey.get(key)!));
    }
    // The rest goes, referrers first: every referrer of an old path that
    // is not kept is old and not kept too.
    const ready = paths.filter((p) => !kept.has(p.key) && referrers.get(p.key) === 0);
    while (ready.length > 0) {
      remove(ready.pop()!, (q) => {
        if (!kept.has(q.key)) ready.push(q);
      });
    }
  }

  if (options.maxSizeBytes === undefined) return { victims };
  // Each blob counted once, however many remaining paths hold it.
  const holders = new Map<string, { size: number; paths: number }>();
  let size = 0;
  for (const p of paths) {
    if (gone.has(p.key)) continue;
    for (const [blob, bytes] of p.blobs ?? []) {
      const h = holders.get(blob);
      if (h) h.paths++;
      else {
        holders.set(blob, { size: bytes, paths: 1 });
        size += bytes;
      }
    }
  }
  const sizeBefore = size;
  const heap = new LruHeap();
  for (const p of paths) if (!gone.has(p.key) && referrers.get(p.key) === 0) heap.push(p);
  while (size > options.maxSizeBytes && heap.size > 0) {
    const p = heap.pop()!;
    remove(p, (q) => heap.push(q));
    for (const blob of p.blobs?.keys() ?? []) {
      const h = holders.get(blob)!;
      if (--h.paths === 0) size -= h.size;
    }
  }
  return { victims, sizeBefore, sizeAfter: size };
}
