/**
 * Where a FUSE Worker's thread runs: bound to one CPU while requests come
 * one at a time, free while it streams large reads.
 *
 * A `stat`-heavy client (`ls -lR`, a build) sends one request at a time
 * and sleeps until the answer, so each request costs a wake-up of a Worker
 * and then of the client. With the Workers on different CPUs the scheduler
 * wakes the client on the CPU of the Worker that answered, and the next
 * request goes to the other Worker, idle on the other CPU: one cross-CPU
 * wake-up per request, as with libfuse's threads. Left free, both Workers
 * drift onto one CPU (any background thread of the runtime, JIT or GC,
 * is enough to push one over) and the client stays on the other; that is
 * stable too, and costs two cross-CPU wake-ups per request. Measured on 2
 * cores, `ls -lR` of 10,100 entries on a fresh mount: 750-960 ms free,
 * 440-477 ms bound, 430-480 ms for the C reference server.
 *
 * A sequential reader is the opposite case: it keeps running while the
 * kernel's readahead requests are answered, so a Worker bound to the
 * reader's CPU competes with it (1 GiB from the chunk cache: ~3,100 MB/s
 * bound, ~3,600 free). So a Worker leaves its binding after a run of large
 * READs and takes it again once other requests dominate.
 *
 * @module
 */
import { setThreadCpus } from "./ffi.ts";

/**
 * The CPU each of `threads` Workers is bound to, round-robin over the
 * allowed CPUs (taskset, cgroup cpusets), or `undefined` for none (a
 * single allowed CPU).
 */
export function workerCpus(threads: number, allowed: readonly number[]): (number | undefined)[] {
  return Array.from(
    { length: threads },
    (_, id) => allowed.length > 1 ? allowed[id % allowed.length] : undefined,
  );
}

/** READs of at least this many bytes count as streaming. */
export const LARGE_READ = 128 << 10;
/** Score at which a Worker leaves its CPU (large READs push it up by one each)... */
const RELEASE_AT = 8;
/** ...and at which it takes the CPU again (every other request pulls it down by one). */
const BIND_AT = -8;

/** One Worker's CPU binding, adjusted from the requests it serves. */
export class CpuBinding {
  readonly #cpu: number;
  readonly #allowed: readonly number[];
  #score = 0;
  #bound = false;
  #failed = false;

  /** Binds the calling thread to `cpu` now; `allowed` is where it may run when released. */
  constructor(cpu: number, allowed: readonly number[]) {
    this.#cpu = cpu;
    this.#allowed = allowed;
    this.#set(true);
  }

  /** Whether the thread is bound to its CPU right now. */
  get bound(): boolean {
    return this.#bound;
  }

  /** Notes one request; `largeRead` if it was a READ of at least {@linkcode LARGE_READ} bytes. */
  note(largeRead: boolean): void {
    if (largeRead) {
      if (this.#score < RELEASE_AT && ++this.#score === RELEASE_AT && this.#bound) this.#set(false);
    } else if (this.#score > BIND_AT && --this.#score === BIND_AT && !this.#bound) {
      this.#set(true);
    }
  }

  #set(bound: boolean): void {
    if (this.#failed) return;
    // Only a speed-up: if the CPU cannot be had, serve unbound from now on.
    if (setThreadCpus(bound ? [this.#cpu] : this.#allowed) !== 0) {
      this.#failed = true;
      this.#bound = false;
      return;
    }
    this.#bound = bound;
  }
}
