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
 * {@linkcode FileWriteback} serves the same commits from the other side:
 * it gets a pack's bytes moving to disk before the commit asks for them.
 *
 * @module
 */
import { errorMessage, StorageError } from "../../errors.ts";
import { cString, OPEN_FLAGS, openLibc } from "../../libc.ts";

const libcSymbols = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  syncfs: { parameters: ["i32"], result: "i32", nonblocking: true },
  sync_file_range: { parameters: ["i32", "i64", "i64", "u32"], result: "i32", nonblocking: true },
  close: { parameters: ["i32"], result: "i32" },
} as const;

type Libc = Deno.DynamicLibrary<typeof libcSymbols>["symbols"];

const { O_RDONLY, O_DIRECTORY, O_CLOEXEC } = OPEN_FLAGS;
/** `sync_file_range`: start writing the range's dirty pages, do not wait for them. */
const SYNC_FILE_RANGE_WRITE = 2;

let libc: Libc | null | undefined;

/** libc's functions, or `null` where FFI is not allowed or libc is not glibc's. */
function loadLibc(): Libc | null {
  if (libc === undefined) {
    try {
      libc = openLibc(libcSymbols);
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
 * `fsync` of the directory `dir`, which makes the names created in it
 * durable (a file's own flush does not, on every filesystem). A directory
 * that cannot be opened is a `StorageError`: nothing was flushed, nothing
 * lost, and the caller may try again. A failed flush is a
 * {@linkcode DataLossError}: `what` was written since the last commit may
 * be lost, and Linux reports that only once.
 */
export async function syncDirectory(dir: string, what: string): Promise<void> {
  let handle: Deno.FsFile;
  try {
    handle = await Deno.open(dir);
  } catch (err) {
    throw new StorageError(`opening ${dir} to flush it: ${errorMessage(err)}`);
  }
  try {
    await handle.sync();
  } catch (err) {
    throw new DataLossError(
      `flushing ${dir} failed (${errorMessage(err)}): ${what} written since the last commit ` +
        "may be lost; restart to write them again",
    );
  } finally {
    handle.close();
  }
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

/**
 * Flushes the filesystem holding a directory, sharing flushes between
 * callers, through one descriptor of the directory kept open from the
 * store's first write (or its opening, if the directory exists) to
 * {@linkcode FileFlusher.close}. Linux reports a failed write-back to
 * `syncfs` on each descriptor opened before the failure, but to one opened
 * after it only if no other caller has seen it yet: a descriptor opened per
 * flush would miss a failure that another process's `syncfs` (or
 * `sync -f`) saw first, and the commit would go on over lost data.
 */
export class FileFlusher {
  readonly #c: Libc;
  readonly #dir: string;
  readonly #group = new GroupFlush(() => this.#syncfs());
  #fd: number | undefined;
  #closed = false;

  private constructor(c: Libc, dir: string) {
    this.#c = c;
    this.#dir = dir;
    this.watch();
  }

  /** A flusher for the filesystem holding `dir`, or `undefined` without FFI. */
  static forDirectory(dir: string): FileFlusher | undefined {
    const c = loadLibc();
    return c ? new FileFlusher(c, dir) : undefined;
  }

  /**
   * Opens the descriptor that flushes go through, if it is not open yet and
   * the directory exists: call it once the directory has been created,
   * before anything written there could fail to reach the disk.
   */
  watch(): void {
    if (this.#fd !== undefined || this.#closed) return;
    const fd = this.#c.open(cString(this.#dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) this.#fd = fd;
  }

  /** Closes the descriptor once a running flush has returned. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#group.flush().catch(() => {});
    if (this.#fd !== undefined) this.#c.close(this.#fd);
    this.#fd = undefined;
  }

  /** Makes everything written to the filesystem before this call durable. */
  flush(): Promise<void> {
    return this.#group.flush();
  }

  async #syncfs(): Promise<void> {
    if (this.#closed) throw new StorageError(`flushing ${this.#dir}: the store is closed`);
    this.watch();
    // Not opened (a missing directory, no fds left): nothing was flushed,
    // but nothing was lost either; the caller's commit fails and may retry.
    if (this.#fd === undefined) {
      throw new StorageError(`cannot open ${this.#dir} to flush it to disk`);
    }
    if (await this.#c.syncfs(this.#fd) !== 0) {
      throw new DataLossError(
        `flushing ${this.#dir} to disk failed (syncfs): data written since the last commit ` +
          "may be lost; restart to write it again",
      );
    }
  }
}

/**
 * Starts writing a file's new bytes to disk while more are appended, so
 * that the commit's flush finds little left to wait for. Nothing here makes
 * data durable or reports a failure: that stays with the commit's
 * `fdatasync` on the writer's own descriptor, which still sees every
 * write-back error (each open file has its own error cursor).
 *
 * Left alone, the kernel starts writing dirty pages only after about 30 s
 * or once a tenth of memory is dirty, so an import's commit waited for all
 * of its bytes at once, with the CPU idle: up to 1.6 s of `fdatasync` in a 509
 * MiB import into a pack store on ext4 (docs/storage.md#writing-and-the-commit-point).
 */
export class FileWriteback {
  readonly #c: Libc;
  readonly #fd: number;
  readonly #step: number;
  /** End of the range handed to the kernel so far. */
  #started: number;
  /** End of the bytes written so far. */
  #written: number;
  #running: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  private constructor(c: Libc, fd: number, from: number, step: number) {
    this.#c = c;
    this.#fd = fd;
    this.#started = from;
    this.#written = from;
    this.#step = step;
  }

  /**
   * Write-back for the file at `path`, whose bytes up to `from` are not
   * this writer's concern, started every `step` bytes; `undefined` without
   * FFI or when the file cannot be opened (the commit then does it all).
   */
  static open(path: string, from: number, step: number): FileWriteback | undefined {
    const c = loadLibc();
    if (!c) return undefined;
    const fd = c.open(cString(path), O_RDONLY | O_CLOEXEC);
    return fd < 0 ? undefined : new FileWriteback(c, fd, from, step);
  }

  /** Records that the file's bytes up to `end` are written; starts their write-back in steps. */
  written(end: number): void {
    if (end > this.#written) this.#written = end;
    if (!this.#running && !this.#closing && this.#written - this.#started >= this.#step) {
      this.#running = this.#run();
    }
  }

  /** Closes the descriptor once a running call has returned. */
  close(): Promise<void> {
    this.#closing ??= (this.#running ?? Promise.resolve()).catch(() => {}).then(() => {
      this.#c.close(this.#fd);
    });
    return this.#closing;
  }

  async #run(): Promise<void> {
    // One call at a time, each for everything written meanwhile: the call
    // may block while the device's queue is full, on a blocking-pool thread.
    try {
      while (!this.#closing && this.#written - this.#started >= this.#step) {
        const from = this.#started;
        const length = this.#written - from;
        this.#started = this.#written;
        // A failure only means the commit writes these bytes itself.
        await this.#c.sync_file_range(
          this.#fd,
          BigInt(from),
          BigInt(length),
          SYNC_FILE_RANGE_WRITE,
        );
      }
    } catch {
      // Likewise: nothing was lost, the commit's flush does the work.
    } finally {
      this.#running = undefined;
    }
  }
}
