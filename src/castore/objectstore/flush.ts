/**
 * Group commit for files: a writer creates files without flushing each one
 * and notes them here; {@linkcode FileFlusher.flush} then makes everything
 * noted so far durable at once, at the writer's commit point.
 *
 * A flush is one `syncfs(2)` of the filesystem the files live on, through
 * libc on a blocking-pool thread (the event loop keeps serving), where FFI
 * is allowed. Without FFI, or when `syncfs` fails (its errno is not
 * readable from the calling thread), every noted file and the directories
 * holding them are fsynced instead, which also names the cause of a
 * failure ("No space left on device").
 *
 * @module
 */
import { dirname } from "node:path";
import { errorMessage, StorageError } from "../../errors.ts";

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

/** `syncfs` on the filesystem holding `dir`: true if it succeeded. */
async function syncfs(c: Libc, dir: string): Promise<boolean> {
  const fd = c.open(new TextEncoder().encode(`${dir}\0`), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  try {
    return await c.syncfs(fd) === 0;
  } finally {
    c.close(fd);
  }
}

/**
 * Above this many noted files the list is dropped (a long-running daemon
 * taking blobs that no commit ever follows must not grow): a flush then
 * relies on `syncfs` alone.
 */
const MAX_NOTED = 1 << 17;

/** How to flush (tests force `fsync` to exercise the fallback). */
export type FlushMethod = "syncfs" | "fsync";

/** Files written since the last flush, and how to make them durable. */
export class FileFlusher {
  readonly #root: string;
  readonly #method: FlushMethod;
  /** Files noted since the last flush began, or `undefined` after overflowing. */
  #noted: Set<string> | undefined = new Set();
  /** Counts notes; a flush covers every note made before it began. */
  #generation = 0;
  #flushedGeneration = 0;
  /** The flush in progress, which later callers wait for. */
  #running: Promise<void> | undefined;

  /** Files below `root` (which must exist by the first flush). */
  constructor(root: string, method: FlushMethod = "syncfs") {
    this.#root = root;
    this.#method = method;
  }

  /** Records that `path` (a file below the root) was written and not flushed. */
  note(path: string): void {
    this.#generation++;
    if (this.#noted) {
      this.#noted.add(path);
      if (this.#noted.size > MAX_NOTED) this.#noted = undefined;
    }
  }

  /** Whether anything was noted since the last flush began. */
  get pending(): boolean {
    return this.#generation > this.#flushedGeneration;
  }

  /**
   * Makes every file noted before this call durable, with the directory
   * entries that name them. Concurrent callers share flushes. Throws a
   * `StorageError` naming the cause if the data may not be on disk.
   */
  async flush(): Promise<void> {
    const target = this.#generation;
    while (this.#flushedGeneration < target) {
      if (!this.#running) {
        this.#running = this.#flushOnce().finally(() => (this.#running = undefined));
      }
      await this.#running;
    }
  }

  async #flushOnce(): Promise<void> {
    const generation = this.#generation;
    const files = this.#noted;
    this.#noted = new Set();
    try {
      const c = this.#method === "syncfs" ? loadLibc() : null;
      const synced = c !== null && await syncfs(c, this.#root);
      if (!synced) {
        if (!files) {
          throw new StorageError(
            `flushing ${this.#root} to disk failed: ${
              c ? "syncfs failed" : "no syncfs (FFI)"
            }, and over ${MAX_NOTED} files were written since the last commit`,
          );
        }
        // Names the cause if there is one ("No space left on device").
        await fsyncAll(files);
        if (c) {
          // syncfs reported an error that no single file did: something on
          // that filesystem did not reach the disk.
          throw new StorageError(`flushing ${this.#root} to disk failed (syncfs)`);
        }
      }
    } catch (err) {
      // Not flushed: note them again so that the next flush retries them.
      if (files && this.#noted) { for (const f of files) this.#noted.add(f); }
      throw err instanceof StorageError ? err : new StorageError(
        `flushing ${this.#root} to disk failed: ${errorMessage(err)}`,
      );
    }
    this.#flushedGeneration = Math.max(this.#flushedGeneration, generation);
  }
}

/** fdatasync every file (in parallel batches), then fsync their directories. */
async function fsyncAll(files: Set<string>): Promise<void> {
  const all = [...files];
  const dirs = new Set(all.map((f) => dirname(f)));
  const BATCH = 64;
  for (let i = 0; i < all.length; i += BATCH) {
    await Promise.all(
      all.slice(i, i + BATCH).map(async (path) => {
        let f: Deno.FsFile;
        try {
          f = await Deno.open(path, { read: true });
        } catch (err) {
          // Removed since (a replaced or deleted object): nothing to flush.
          if (err instanceof Deno.errors.NotFound) return;
          throw err;
        }
        try {
          await f.syncData();
        } finally {
          f.close();
        }
      }),
    );
  }
  for (const dir of dirs) {
    const d = await Deno.open(dir, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  }
}
