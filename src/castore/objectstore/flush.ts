/**
 * Group commit for a file object store: puts do not flush, and
 * {@linkcode FileFlusher.flush} makes everything written to the store's
 * filesystem durable at once, at the commit point.
 *
 * A flush is one `syncfs(2)` of that filesystem, through libc on a
 * blocking-pool thread (the event loop keeps serving). It covers whatever
 * is on the filesystem, so objects written by another thread or process
 * (import upload Workers), or written earlier and only found present now,
 * are made durable too. Without FFI there is no flusher: the store then
 * fsyncs every object as it is put.
 *
 * A failed flush may mean written data was dropped, and Linux reports such
 * an error only once: a retry would succeed without the data being there.
 * So after a failure every later flush fails too, until the process is
 * restarted (and the objects are checked and rewritten as they are put
 * again). `syncfs` reports write-back errors since Linux 5.8.
 *
 * @module
 */
import { StorageError } from "../../errors.ts";

const libcSymbols = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  syncfs: { parameters: ["i32"], result: "i32", nonblocking: true },
  close: { parameters: ["i32"], result: "i32" },
} as const;

type Libc = Deno.DynamicLibrary<typeof libcSymbols>["symbols"];

const O_RDONLY = 0;
const O_DIRECTORY = 0o200000;
const O_CLOEXEC = 0o2000000;

let libc: Libc | null | undefined;

/** libc's functions, or `null` where FFI is not allowed or libc is not glibc's. */
function loadLibc(): Libc | null {
  if (libc === undefined) {
    try {
      libc = Deno.dlopen("libc.so.6", libcSymbols).symbols;
    } catch {
      libc = null;
    }
  }
  return libc;
}

/**
 * A flush failure after which data written since the last commit may be
 * gone: every later flush of the same {@linkcode GroupFlush} fails with it.
 */
export class DataLossError extends StorageError {
  override name = "DataLossError";
}

/**
 * Runs a flush function for many callers at once. A flush already running
 * when `flush()` is called may have missed the caller's writes, so callers
 * arriving meanwhile share the round after it. A {@linkcode DataLossError}
 * from a round is sticky: Linux reports a lost write-back only once, so a
 * retry would succeed without the data being there.
 */
export class GroupFlush {
  readonly #round: () => Promise<void>;
  /** The round in progress. */
  #running: Promise<void> | undefined;
  /** The round that callers arriving during `#running` share. */
  #next: Promise<void> | undefined;
  /** Set by the first data loss; every later flush throws it. */
  #failure: DataLossError | undefined;

  /** `round` makes everything written before it started durable. */
  constructor(round: () => Promise<void>) {
    this.#round = round;
  }

  /** Makes everything written before this call durable. */
  flush(): Promise<void> {
    if (this.#failure) return Promise.reject(this.#failure);
    if (!this.#running) {
      this.#running = this.#round()
        .catch((err) => {
          if (err instanceof DataLossError) this.#failure ??= err;
          throw err;
        })
        .finally(() => (this.#running = undefined));
      return this.#running;
    }
    this.#next ??= this.#running.catch(() => {}).then(() => {
      this.#next = undefined;
      return this.flush();
    });
    return this.#next;
  }
}

/** Flushes the filesystem holding a directory, sharing flushes between callers. */
export class FileFlusher {
  readonly #c: Libc;
  readonly #dir: string;
  readonly #group = new GroupFlush(() => this.#syncfs());

  private constructor(c: Libc, dir: string) {
    this.#c = c;
    this.#dir = dir;
  }

  /** A flusher for the filesystem holding `dir`, or `undefined` without FFI. */
  static forDirectory(dir: string): FileFlusher | undefined {
    const c = loadLibc();
    return c ? new FileFlusher(c, dir) : undefined;
  }

  /** Makes everything written to the filesystem before this call durable. */
  flush(): Promise<void> {
    return this.#group.flush();
  }

  async #syncfs(): Promise<void> {
    const c = this.#c;
    const fd = c.open(
      new TextEncoder().encode(`${this.#dir}\0`),
      O_RDONLY | O_DIRECTORY | O_CLOEXEC,
    );
    // Not opened (a missing directory, no fds left): nothing was flushed,
    // but nothing was lost either; the caller's commit fails and may retry.
    if (fd < 0) throw new StorageError(`cannot open ${this.#dir} to flush it to disk`);
    try {
      if (await c.syncfs(fd) !== 0) {
        throw new DataLossError(
          `flushing ${this.#dir} to disk failed (syncfs): data written since the last commit ` +
            "may be lost; restart to write it again",
        );
      }
    } finally {
      c.close(fd);
    }
  }
}
