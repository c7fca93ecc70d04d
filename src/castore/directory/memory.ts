/**
 * In-process DirectoryService (`memory://`): canonical encodings in a Map,
 * lost on exit.
 *
 * @module
 */
import { blake3, type Digest, digestKey } from "../digest.ts";
import { decodeDirectory, type Directory, encodeDirectory } from "../directory.ts";
import { traverseClosure } from "./closure.ts";
import { checkSinglePut, ClosurePutter, getChecked } from "./closure_putter.ts";
import type { DirectoryPutter, DirectoryService } from "./service.ts";

/** A DirectoryService keeping every directory in memory. */
export class MemoryDirectoryService implements DirectoryService {
  // Encoded bytes, not objects: callers cannot mutate what is stored, and
  // reads re-verify exactly like a persistent backend.
  readonly #dirs = new Map<string, Uint8Array>();

  #load(digest: Digest): Promise<Directory | undefined> {
    const bytes = this.#dirs.get(digestKey(digest));
    return Promise.resolve(bytes && decodeDirectory(bytes));
  }

  /** One directory, verified against its digest, or `undefined`. */
  get(digest: Digest): Promise<Directory | undefined> {
    return getChecked(digest, (d) => this.#load(d));
  }

  /** The closure of `digest`, root first then breadth-first; empty if unknown. */
  getRecursive(digest: Digest): AsyncIterable<Directory> {
    return traverseClosure((d) => this.#load(d), digest);
  }

  /** Stores one valid directory whose children are already stored. */
  async put(directory: Directory): Promise<Digest> {
    const digest = await checkSinglePut(directory, (d) => this.#load(d));
    this.#dirs.set(digestKey(digest), encodeDirectory(directory));
    return digest;
  }

  /** A putter storing the whole closure on close. */
  putMultiple(): DirectoryPutter {
    return new ClosurePutter((closure) => {
      for (const d of closure.leavesToRoot) {
        const bytes = encodeDirectory(d);
        this.#dirs.set(digestKey(blake3(bytes)), bytes);
      }
      return Promise.resolve();
    });
  }

  /** Nothing to release. */
  close(): Promise<void> {
    return Promise.resolve();
  }
}
