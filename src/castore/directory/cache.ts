/**
 * The DirectoryService side of `cache://?near=URL&far=URL`
 * (docs/storage.md#near-cache): reads try the near store, fall back to the
 * far one and copy what they fetched into the near store, a whole closure
 * at a time (a directory is only ever stored with everything below it, so
 * the near store never holds a dangling reference and answers
 * `getRecursive` completely or not at all). Writes go to the far store.
 *
 * @module
 */
import { type Digest, digestKey } from "../digest.ts";
import { type Directory, directoryDigest } from "../directory.ts";
import { errorMessage, InvalidRequestError } from "../../errors.ts";
import { log } from "../../log.ts";
import type { DirectoryPutter, DirectoryService } from "./service.ts";

/** Directories read from `near` where it has them, else from `far`, filling `near`. */
export class CacheDirectoryService implements DirectoryService {
  readonly #near: DirectoryService;
  readonly #far: DirectoryService;

  /** Composes the two; `close` closes both. */
  constructor(near: DirectoryService, far: DirectoryService) {
    this.#near = near;
    this.#far = far;
  }

  /** As the far store. */
  get remote(): boolean | undefined {
    return this.#far.remote;
  }

  /**
   * From the near store, else the far store's closure of `digest` (cached
   * whole), whose first directory is the one asked for.
   */
  async get(digest: Digest): Promise<Directory | undefined> {
    const near = await this.#nearOr(() => this.#near.get(digest));
    if (near) return near;
    for await (const d of this.getRecursive(digest)) return d;
    return undefined;
  }

  /**
   * The near store's closure if it has the root; else the far store's,
   * streamed as it arrives and stored in the near store once complete.
   */
  async *getRecursive(digest: Digest): AsyncIterable<Directory> {
    let fromNear = 0;
    try {
      for await (const d of this.#near.getRecursive(digest)) {
        fromNear++;
        yield d;
      }
    } catch (err) {
      if (fromNear > 0) throw err; // the caller has part of it: no second copy
      log.warn("near cache failed, using the far store", { error: errorMessage(err) });
    }
    if (fromNear > 0) return;
    const closure: Directory[] = [];
    for await (const d of this.#far.getRecursive(digest)) {
      closure.push(d);
      yield d;
    }
    if (closure.length > 0) await this.#fill(closure);
  }

  /** Stores in the far store, the store of record. */
  put(directory: Directory): Promise<Digest> {
    return this.#far.put(directory);
  }

  /** Uploads to the far store. */
  putMultiple(): DirectoryPutter {
    return this.#far.putMultiple();
  }

  /** The far store's commit point. */
  async sync(): Promise<void> {
    await this.#far.sync?.();
  }

  /** Closes both stores. */
  async close(): Promise<void> {
    let first: unknown;
    for (const s of [this.#far, this.#near]) {
      try {
        await s.close();
      } catch (err) {
        first ??= err;
      }
    }
    if (first !== undefined) throw first;
  }

  async #nearOr(fn: () => Promise<Directory | undefined>): Promise<Directory | undefined> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof InvalidRequestError) throw err;
      log.warn("near cache failed, using the far store", { error: errorMessage(err) });
      return undefined;
    }
  }

  /** Puts a closure (root first, as fetched) into the near store, leaves first. */
  async #fill(closure: Directory[]): Promise<void> {
    try {
      const putter = this.#near.putMultiple();
      for (const d of leavesFirst(closure)) await putter.put(d);
      await putter.close();
    } catch (err) {
      log.warn("near cache fill failed", { error: errorMessage(err) });
    }
  }
}

/**
 * The closure in an order where every directory comes after all it refers
 * to (depth-first post-order from the root): breadth-first order reversed
 * is not enough when a directory is shared by parents at different depths.
 */
function leavesFirst(closure: Directory[]): Directory[] {
  const byDigest = new Map(closure.map((d) => [digestKey(directoryDigest(d)), d]));
  const out: Directory[] = [];
  const seen = new Set<string>();
  const visit = (key: string) => {
    if (seen.has(key)) return;
    seen.add(key);
    const d = byDigest.get(key);
    if (!d) return;
    for (const child of d.directories) visit(digestKey(child.digest));
    out.push(d);
  };
  visit(digestKey(directoryDigest(closure[0])));
  return out;
}
