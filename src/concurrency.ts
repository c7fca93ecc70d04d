/**
 * Bounded concurrency, the one way the code base limits work in flight:
 * a {@linkcode Semaphore} for "at most n at once", a {@linkcode JobSet}
 * for background jobs bounded in count and weight whose first failure
 * sticks, {@linkcode mapLimit} for mapping a list with at most n calls
 * pending, and a {@linkcode ByteBudget} for optional work (reading ahead)
 * that many holders share and none waits for.
 *
 * @module
 */

/** At most `permits` holders at once; waiters are served in arrival order. */
export class Semaphore {
  #permits: number;
  /** Negative after a shrink below the permits held: releases pay that back first. */
  #free: number;
  readonly #waiting: (() => void)[] = [];

  /** A semaphore with `permits` (at least 1) permits. */
  constructor(permits: number) {
    this.#permits = this.#free = Math.max(1, Math.floor(permits));
  }

  /** How many may hold a permit at once. */
  get permits(): number {
    return this.#permits;
  }

  /**
   * Changes how many may hold a permit at once (at least 1). Growing wakes
   * waiters; shrinking takes nothing away from holders, the next releases
   * are not handed on until the holders are within the new bound.
   */
  set permits(permits: number) {
    const next = Math.max(1, Math.floor(permits));
    this.#free += next - this.#permits;
    this.#permits = next;
    while (this.#free > 0 && this.#waiting.length > 0) {
      this.#free--;
      this.#waiting.shift()!();
    }
  }

  /** Waits for a permit; the returned function gives it back (once). */
  async acquire(): Promise<() => void> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (this.#free < 0) {
        this.#free++;
        return;
      }
      const next = this.#waiting.shift();
      // A permit handed straight to a waiter never becomes free in between.
      if (next) next();
      else this.#free++;
    };
  }

  /** Runs `fn` holding a permit. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** Permits free right now (below 0 while a shrink waits for holders to finish). */
  get free(): number {
    return this.#free;
  }

  /** Callers waiting for a permit. */
  get waiting(): number {
    return this.#waiting.length;
  }
}

/**
 * Bytes shared by many holders and taken without waiting: a holder that
 * cannot have more does without (reads less far ahead) rather than queue,
 * so the budget bounds memory and never stalls anyone.
 */
export class ByteBudget {
  /** The bytes there are in all. */
  readonly total: number;
  #inUse = 0;

  /** A budget of `total` bytes (0 or more). */
  constructor(total: number) {
    this.total = Math.max(0, Math.floor(total));
  }

  /** Takes `bytes` if that many are free; returns whether it did. */
  tryTake(bytes: number): boolean {
    if (this.#inUse + bytes > this.total) return false;
    this.#inUse += bytes;
    return true;
  }

  /** Gives back `bytes` taken before. */
  give(bytes: number): void {
    this.#inUse = Math.max(0, this.#inUse - bytes);
  }

  /** Bytes taken and not given back. */
  get inUse(): number {
    return this.#inUse;
  }
}

/** Bounds of a {@linkcode JobSet}. */
export interface JobSetOptions {
  /** Most jobs running at once (at least 1). */
  maxJobs: number;
  /**
   * Most total weight running at once (default unbounded). A single job
   * heavier than this still runs, alone.
   */
  maxWeight?: number;
  /** Turns a job's failure into the error the set reports (default: as thrown). */
  mapError?: (err: unknown) => unknown;
}

/**
 * Background jobs bounded in count and total weight, where the first
 * failure sticks: {@linkcode JobSet.add} waits for room, then starts the
 * job without waiting for it; once any job has failed, `add`,
 * {@linkcode JobSet.check} and {@linkcode JobSet.drain} throw that
 * failure.
 */
export class JobSet {
  readonly #running = new Set<Promise<void>>();
  /** Woken whenever a job ends (one promise for all waiters, not a race over every job). */
  #jobEnded: { promise: Promise<void>; resolve: () => void } | undefined;
  readonly #maxJobs: number;
  readonly #maxWeight: number;
  readonly #mapError: (err: unknown) => unknown;
  #weight = 0;
  #failed = false;
  #error: unknown;

  /** An empty set with the given bounds. */
  constructor(opts: JobSetOptions) {
    this.#maxJobs = Math.max(1, Math.floor(opts.maxJobs));
    this.#maxWeight = opts.maxWeight ?? Infinity;
    this.#mapError = opts.mapError ?? ((err) => err);
  }

  /**
   * Waits until the job fits the bounds, then starts it and returns
   * (without waiting for the job). The job is called before `add`
   * resolves, so whatever it sets up synchronously is in place for the
   * caller. Throws the set's failure instead, if any job has failed.
   */
  add(job: () => Promise<unknown>, weight = 0): Promise<void> {
    if (this.#failed) return Promise.reject(this.#error);
    if (this.#mustWait(weight)) return this.#addWhenRoom(job, weight);
    // Room now: no async function, no promise of its own. An import adds a
    // few jobs per file, and what each `add` allocated was the largest
    // share of its garbage after digest keys (V8 sampling heap profile).
    this.#start(job, weight);
    return STARTED;
  }

  async #addWhenRoom(job: () => Promise<unknown>, weight: number): Promise<void> {
    while (this.#mustWait(weight)) {
      await this.#nextEnd();
      this.check();
    }
    this.#start(job, weight);
  }

  #mustWait(weight: number): boolean {
    return this.#running.size > 0 &&
      (this.#running.size >= this.#maxJobs || this.#weight + weight > this.#maxWeight);
  }

  #start(job: () => Promise<unknown>, weight: number): void {
    this.#weight += weight;
    const ended = () => {
      this.#weight -= weight;
      this.#running.delete(run);
      const waiters = this.#jobEnded;
      this.#jobEnded = undefined;
      waiters?.resolve();
    };
    const run: Promise<void> = start(job).then(ended, (err) => {
      if (!this.#failed) {
        this.#failed = true;
        try {
          this.#error = this.#mapError(err);
        } catch {
          // A mapper that throws must not leave the job counted as running.
          this.#error = err;
        }
      }
      ended();
    });
    this.#running.add(run);
  }

  /** Whether a job has failed. */
  get failed(): boolean {
    return this.#failed;
  }

  /** Throws the first failure, if a job has failed. */
  check(): void {
    if (this.#failed) throw this.#error;
  }

  /** Waits for every job; then throws the first failure, if any. */
  async drain(): Promise<void> {
    while (this.#running.size > 0) await this.#nextEnd();
    this.check();
  }

  /** Resolves when the next job ends. */
  #nextEnd(): Promise<void> {
    if (!this.#jobEnded) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.#jobEnded = { promise, resolve };
    }
    return this.#jobEnded.promise;
  }

  /** Jobs running now. */
  get size(): number {
    return this.#running.size;
  }
}

/** What {@linkcode JobSet.add} returns when the job started at once. */
const STARTED: Promise<void> = Promise.resolve();

/**
 * Calls `job` now, turning a synchronous throw into a rejection: callers
 * such as the object store's writer read what the job assigned as soon as
 * `add` returns, so the call cannot wait for a later microtask.
 */
function start(job: () => Promise<unknown>): Promise<unknown> {
  try {
    return Promise.resolve(job());
  } catch (err) {
    return Promise.reject(err);
  }
}

/**
 * Calls `fn` on every item with at most `limit` calls pending; resolves
 * with the results in item order. The first rejection rejects the whole
 * map once the calls already started have settled (none is left running
 * behind the caller's back), and no new call starts after it.
 */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  let error: unknown;
  const lane = async () => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        results[i] = await fn(items[i], i);
      } catch (err) {
        if (!failed) {
          failed = true;
          error = err;
        }
      }
    }
  };
  const lanes = Math.max(1, Math.min(Math.floor(limit), items.length));
  await Promise.all(Array.from({ length: lanes }, lane));
  if (failed) throw error;
  return results;
}

/** Something that releases what it holds. */
export interface Closable {
  close(): Promise<void>;
}

/**
 * Closes every item, in order, even when one fails; then throws the first
 * failure, if any, so one broken backend never keeps the others open.
 */
export async function closeAll(items: Closable[]): Promise<void> {
  let first: unknown;
  for (const item of items) {
    try {
      await item.close();
    } catch (err) {
      first ??= err;
    }
  }
  if (first !== undefined) throw first;
}
