/**
 * An {@linkcode ObjectStore} on the local filesystem
 * (`objectstore+file:///abs/path`): object `a/b/c` is the file
 * `<base>/a/b/c`; directories are created as needed.
 *
 * `put` writes a temporary file beside the target, fsyncs it and renames it
 * over the target, so the object appears complete or not at all. Temporary
 * files are named `.tmp-…` and never listed; one left behind by a crash is
 * inert. (The parent directory is not fsynced: after a power loss a new
 * object may be missing, but never partial.) Directories known to exist are
 * remembered, so a put is open, write, fdatasync, close and rename; if one
 * was removed behind the store's back, the put recreates it and retries.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { errorMessage, StorageError } from "../../errors.ts";
import { checkObjectPath, type ObjectStore } from "./store.ts";

const TEMP_PREFIX = ".tmp-";

function storageError(op: string, path: string, err: unknown): StorageError {
  return new StorageError(`object store ${op} ${path}: ${errorMessage(err)}`);
}

function createTemp(temp: string): Promise<Deno.FsFile> {
  return Deno.open(temp, { write: true, createNew: true, mode: 0o644 });
}

/** Objects as files below a base directory. */
export class FileObjectStore implements ObjectStore {
  readonly #base: string;
  /** Directories this store created or found; bounded by the shard fan-out. */
  readonly #dirs = new Set<string>();
  readonly description: string;

  /** `base`: absolute directory path; created on the first write if missing. */
  constructor(base: string) {
    if (!base.startsWith("/")) {
      throw new TypeError(`object store base path must be absolute: ${base}`);
    }
    this.#base = base;
    this.description = `file://${base}`;
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

  async exists(path: string): Promise<boolean> {
    const file = this.#resolve(path);
    try {
      return (await Deno.stat(file)).isFile;
    } catch (err) {
      if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
        return false;
      }
      throw storageError("stat", path, err);
    }
  }

  async put(path: string, data: Uint8Array): Promise<void> {
    const file = this.#resolve(path);
    const dir = dirname(file);
    const temp = join(dir, `${TEMP_PREFIX}${crypto.randomUUID()}`);
    try {
      let f: Deno.FsFile;
      if (this.#dirs.has(dir)) {
        try {
          f = await createTemp(temp);
        } catch (err) {
          if (!(err instanceof Deno.errors.NotFound)) throw err;
          this.#dirs.delete(dir);
          f = await this.#createTempIn(dir, temp);
        }
      } else {
        f = await this.#createTempIn(dir, temp);
      }
      try {
        for (let off = 0; off < data.length;) off += await f.write(data.subarray(off));
        // Data and size must be on disk before the rename makes the object
        // visible; fdatasync skips the timestamps fsync would also write.
        await f.syncData();
      } finally {
        f.close();
      }
      await Deno.rename(temp, file);
    } catch (err) {
      await Deno.remove(temp).catch(() => {});
      throw storageError("write", path, err);
    }
  }

  async #createTempIn(dir: string, temp: string): Promise<Deno.FsFile> {
    await Deno.mkdir(dir, { recursive: true });
    this.#dirs.add(dir);
    return await createTemp(temp);
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

  close(): Promise<void> {
    return Promise.resolve();
  }
}
