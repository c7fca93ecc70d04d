/**
 * An {@linkcode ObjectStore} on the local filesystem
 * (`objectstore+file:///abs/path`): object `a/b/c` is the file
 * `<base>/a/b/c`; directories are created as needed.
 *
 * `put` writes a temporary file beside the target and renames it over the
 * target, so the object appears complete or not at all, even to a process
 * that reads after this one was killed. Temporary files are named `.tmp-…`
 * and never listed; one left behind by a crash is inert, and removed by the
 * next store opened on the same directory once it is older than
 * {@linkcode STALE_TEMP_MS} (a live put holds its temporary file for
 * moments, so no live writer's file is touched). Directories known
 * to exist are remembered (directories are made and objects looked up
 * synchronously), so a put is two calls into the blocking pool:
 * one `Deno.writeFile` of the temporary file (open, write and close) and
 * one rename; if a directory was removed behind the store's back, the put
 * recreates it and retries.
 *
 * Puts do not flush: `sync()` makes everything on the store's filesystem
 * durable in one go (group commit, see `flush.ts`), and the services call
 * it at their commit points, before a PathInfo that references the objects
 * is written, instead of one fdatasync per object (per chunk). After a
 * power loss, an object put since the last sync may be missing, empty or
 * short, never wrong: readers verify digests, and writers skip an object
 * already present only if it has the size they would write. Without FFI
 * (no `syncfs`), each put fdatasyncs its object before the rename.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { errorMessage, StorageError } from "../../errors.ts";
import { checkObjectPath, type ObjectStore } from "./store.ts";
import { DataLossError, FileFlusher, GroupFlush, syncDirectory } from "./flush.ts";

const TEMP_PREFIX = ".tmp-";
/** Temporary files older than this were left by a crash or a failed write. */
export const STALE_TEMP_MS = 60 * 60 * 1000;

function storageError(op: string, path: string, err: unknown): StorageError {
  return new StorageError(`object store ${op} ${path}: ${errorMessage(err)}`);
}

/**
 * Writes `data` to the new file `temp`. Without `syncData` that is one call
 * (open, write and close on one blocking-pool thread): every async file
 * call is a round trip between the event loop and that pool, and with
 * several per object the round trips cost the event loop more than the
 * writes did.
 */
async function writeTemp(temp: string, data: Uint8Array, syncData: boolean): Promise<void> {
  // No `mode`: Deno.writeFile would chmod after creating (one more call per
  // object); the default, 0o666 less the umask, is what the open below gives.
  if (!syncData) return await Deno.writeFile(temp, data, { createNew: true });
  using f = await Deno.open(temp, { write: true, createNew: true });
  for (let off = 0; off < data.length;) off += await f.write(data.subarray(off));
  // Without a commit-time flush, data and size must be on disk before
  // the rename makes the object visible (fdatasync skips timestamps).
  await f.syncData();
}

/** Objects as files below a base directory. */
export class FileObjectStore implements ObjectStore {
  readonly #base: string;
  /** Directories this store created or found; bounded by the shard fan-out. */
  readonly #dirs = new Set<string>();
  /** Flushes the store's filesystem; absent without FFI, when puts flush themselves. */
  readonly #flusher: FileFlusher | undefined;
  /**
   * Without FFI: directories that gained an object since the last commit.
   * Each object's bytes are flushed by its put, but its name only once its
   * directory is, at the commit point.
   */
  readonly #unsyncedDirs = new Set<string>();
  /**
   * Commits without FFI: a caller arriving while a round flushes waits for
   * the next, which covers its writes (a round empties the set first).
   */
  readonly #dirFlush = new GroupFlush(() => this.#syncDirs());
  readonly description: string;
  /**
   * The removal of stale temporary files this store started, in the
   * background, when it was opened (the first store of the process on this
   * base; 0 for others); resolves to how many it removed. `close` stops it.
   */
  readonly staleTempsRemoved: Promise<number>;
  /** Stops the removal of stale temporary files at its next directory. */
  readonly #stopSweep = new AbortController();
  /** Whether this store removes stale temporary files (the first on its base). */
  readonly #sweeps: boolean;
  /** Whether that walk went through the whole tree. */
  #sweepDone = false;
  #closed = false;

  /** `base`: absolute directory path; created on the first write if missing. */
  constructor(base: string) {
    if (!base.startsWith("/")) {
      throw new TypeError(`object store base path must be absolute: ${base}`);
    }
    this.#base = base;
    this.#flusher = FileFlusher.forDirectory(base);
    this.description = `file://${base}`;
    // Once per base and process: a blob and a directory service on one
    // base, or a store opened again, would walk the same tree again.
    this.#sweeps = !sweptBases.has(base);
    this.staleTempsRemoved = this.#sweeps
      ? removeStaleTemps(base, Date.now() - STALE_TEMP_MS, this.#stopSweep.signal).then(
        (removed) => {
          this.#sweepDone = !this.#stopSweep.signal.aborted;
          return removed;
        },
        () => 0,
      )
      : Promise.resolve(0);
    sweptBases.add(base);
  }

  #resolve(path: string): string {
    checkObjectPath(path);
    return join(this.#base, path);
  }

  async get(path: string): Promise<Uint8Array | undefined> {
    const file = this.#resolve(path);
    try {
      return await Deno.readFile(file);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return undefined;
      throw storageError("read", path, err);
    }
  }

  size(path: string): Promise<number | undefined> {
    try {
      return Promise.resolve(this.#sizeNow(path));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  #sizeNow(path: string): number | undefined {
    const file = this.#resolve(path);
    try {
      // Metadata calls are made synchronously: against the page cache they
      // take microseconds, and each asynchronous one is a round trip through
      // the blocking pool with two thread wake-ups. Importing 20,000 small
      // files into this store, these and the `mkdir` below made synchronous
      // took 7.0-8.9 CPU-s against 7.0-9.8 (six interleaved pairs by hand;
      // wall time 5.2-6.7 s against 5.0-7.0 s). Writes and renames stay
      // asynchronous: made synchronous too, they cut the CPU by a quarter
      // but not the wall time, since creating files on several threads at
      // once is what keeps this store's import going.
      const info = Deno.statSync(file);
      if (!info.isFile) return undefined;
      // Without FFI: an object found here (perhaps another writer's, not
      // committed yet) may be relied on, so the commit flushes its name.
      if (!this.#flusher) this.#unsyncedDirs.add(dirname(file));
      return info.size;
    } catch (err) {
      if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
        return undefined;
      }
      throw storageError("stat", path, err);
    }
  }

  async put(path: string, data: Uint8Array): Promise<void> {
    const file = this.#resolve(path);
    const dir = dirname(file);
    const temp = join(dir, `${TEMP_PREFIX}${crypto.randomUUID()}`);
    const syncData = !this.#flusher;
    try {
      if (!this.#dirs.has(dir)) this.#createDir(dir);
      try {
        await writeTemp(temp, data, syncData);
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
        // The directory was removed behind the store's back.
        this.#createDir(dir);
        await writeTemp(temp, data, syncData);
      }
      await Deno.rename(temp, file);
      if (syncData) this.#unsyncedDirs.add(dir);
    } catch (err) {
      await Deno.remove(temp).catch(() => {});
      throw storageError("write", path, err);
    }
  }

  #createDir(dir: string): void {
    // Without FFI the commit flushes directories one by one: the names of
    // those created here go too, in their parents.
    const created: string[] = [];
    if (!this.#flusher) {
      for (let d = dir; d !== dirname(d) && !existsSync(d); d = dirname(d)) created.push(d);
    }
    Deno.mkdirSync(dir, { recursive: true }); // synchronous: see `size`
    this.#dirs.add(dir);
    // The store's directory exists now: flushes watch it from here on.
    this.#flusher?.watch();
    for (const d of created) this.#unsyncedDirs.add(dirname(d));
  }

  /**
   * Makes every object on the store's filesystem durable: one `syncfs`
   * (see `flush.ts`), also covering objects other processes wrote or that
   * a writer found present. Without FFI, puts flushed their bytes already,
   * and the directories they were renamed into are flushed here.
   */
  async sync(): Promise<void> {
    if (!this.#flusher) return await this.#dirFlush.flush();
    try {
      // Synchronous, so that concurrent callers reach the flusher together.
      Deno.statSync(this.#base);
    } catch (err) {
      // Nothing was ever written here. Any other failure (EIO, ESTALE) is
      // no proof that what was written is on disk.
      if (err instanceof Deno.errors.NotFound && this.#dirs.size === 0) return;
      throw storageError("commit", ".", err);
    }
    await this.#flusher.flush();
  }

  /**
   * One round of {@linkcode #dirFlush}: flushes the directories that gained
   * objects or directories since the last round (no FFI). A failed flush
   * may be reported only once, so it is a `DataLossError`, which fails
   * every later commit too, as a failed `syncfs` does (`flush.ts`).
   */
  async #syncDirs(): Promise<void> {
    const dirs = [...this.#unsyncedDirs];
    this.#unsyncedDirs.clear();
    await Promise.all(dirs.map(async (dir) => {
      try {
        await syncDirectory(dir, "objects");
      } catch (err) {
        // Whether or not it could be opened, the directory's names are not
        // known to be on disk.
        throw err instanceof DataLossError ? err : new DataLossError(
          `${errorMessage(err)}: objects written since the last commit may be lost`,
        );
      }
    }));
  }

  async delete(path: string): Promise<void> {
    const file = this.#resolve(path);
    try {
      await Deno.remove(file);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw storageError("delete", path, err);
    }
  }

  async list(prefix = ""): Promise<string[]> {
    const out: string[] = [];
    const walk = async (rel: string) => {
      let entries: Deno.DirEntry[];
      try {
        entries = await Array.fromAsync(Deno.readDir(rel ? join(this.#base, rel) : this.#base));
      } catch (err) {
        if (err instanceof Deno.errors.NotFound) return;
        throw storageError("list", rel, err);
      }
      for (const e of entries) {
        if (e.name.startsWith(TEMP_PREFIX)) continue;
        const path = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory) await walk(path);
        else if (e.isFile && path.startsWith(prefix)) out.push(path);
      }
    };
    await walk("");
    return out.sort();
  }

  /**
   * Stops the removal of stale temporary files (a walk of the whole tree,
   * which on a large store outlasted a short command by seconds and kept
   * its process from exiting), then closes the flusher.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#sweeps) {
      this.#stopSweep.abort();
      await this.staleTempsRemoved;
      // Cut short: a store opened later in this process walks again.
      if (!this.#sweepDone) sweptBases.delete(this.#base);
    }
    await this.#flusher?.close();
  }
}

/** Whether `path` exists (for {@linkcode FileObjectStore}'s directory creation). */
function existsSync(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Bases whose stale temporary files this process removes (or removed). */
const sweptBases = new Set<string>();

/**
 * Removes `.tmp-*` files below `dir` last modified before `cutoff`. Walks
 * one directory at a time with async calls, so a large store's walk never
 * holds up the event loop; stops at the next directory once `stop` fires.
 */
async function removeStaleTemps(dir: string, cutoff: number, stop: AbortSignal): Promise<number> {
  let removed = 0;
  const pending = [dir];
  while (pending.length > 0 && !stop.aborted) {
    const current = pending.pop()!;
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(current));
    } catch {
      continue; // not created yet, or removed meanwhile
    }
    for (const e of entries) {
      const path = join(current, e.name);
      if (e.isDirectory) {
        pending.push(path);
      } else if (e.isFile && e.name.startsWith(TEMP_PREFIX)) {
        try {
          const info = await Deno.stat(path);
          if ((info.mtime?.getTime() ?? Infinity) < cutoff) {
            await Deno.remove(path);
            removed++;
          }
        } catch { /* already gone */ }
      }
    }
  }
  return removed;
}
