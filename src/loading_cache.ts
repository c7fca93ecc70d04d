/**
 * A bounded least-recently-used map whose loads are shared: while a key is
 * being loaded, every other request for it waits for the same load.
 *
 * Used for decoded chunks in a FUSE Worker (bounded by bytes), directory
 * listings (bounded by entries), NAR summaries, the chunk sizes the gRPC
 * blob client learnt and the bridge's pull-through misses (bounded by count).
 *
 * @module
 */

/** Bounded LRU of values by key, with concurrent loads of one key shared. */
export class LoadingCache<K, V> {
  readonly #max: number;
  readonly #weigh: (value: V) => number;
  #weight = 0;
  readonly #entries = new Map<K, V>();
  readonly #loading = new Map<K, Promise<V | undefined>>();

  /**
   * A cache holding at most `max` in total `weigh`t (default: one per
   * entry), the most recently used entries.
   */
  constructor(max: number, weigh: (value: V) => number = () => 1) {
    this.#max = max;
    this.#weigh = weigh;
  }

  /** The cached value for `key`, marking it recently used. */
  get(key: K): V | undefined {
    const v = this.#entries.get(key);
    if (v !== undefined) {
      this.#entries.delete(key);
      this.#entries.set(key, v);
    }
    return v;
  }

  /**
   * Caches `value` (unless `key` is cached already or the value alone
   * outweighs the cache), dropping the least recently used beyond the bound.
   */
  set(key: K, value: V): void {
    const w = this.#weigh(value);
    if (w > this.#max || this.#entries.has(key)) return;
    this.#entries.set(key, value);
    this.#weight += w;
    for (const [k, old] of this.#entries) {
      if (this.#weight <= this.#max) break;
      this.#entries.delete(k);
      this.#weight -= this.#weigh(old);
    }
  }

  /**
   * The value for `key`, loading it with `load` unless cached or already
   * loading. `load` may resolve to `undefined` (for instance when it put
   * the value somewhere else that is consulted first); that is passed on
   * and nothing is cached.
   */
  fetch(key: K, load: () => Promise<V>): Promise<V>;
  fetch(key: K, load: () => Promise<V | undefined>): Promise<V | undefined>;
  fetch(key: K, load: () => Promise<V | undefined>): Promise<V | undefined> {
    const hit = this.get(key);
    if (hit !== undefined) return Promise.resolve(hit);
    let p = this.#loading.get(key);
    if (!p) {
      p = load().then((value) => {
        if (value !== undefined) this.set(key, value);
        return value;
      }).finally(() => this.#loading.delete(key));
      this.#loading.set(key, p);
    }
    return p;
  }

  /** Forgets the cached value for `key` (a load in progress is not affected). */
  delete(key: K): void {
    const v = this.#entries.get(key);
    if (v === undefined) return;
    this.#entries.delete(key);
    this.#weight -= this.#weigh(v);
  }

  /** Number of loads in progress. */
  get loading(): number {
    return this.#loading.size;
  }

  /** Number of cached values. */
  get size(): number {
    return this.#entries.size;
  }

  /** Whether `key` is cached or being loaded. */
  has(key: K): boolean {
    return this.#entries.has(key) || this.#loading.has(key);
  }
}
