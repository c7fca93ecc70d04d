/**
 * Building blocks shared by the backends that store directories one by one
 * (memory, SQLite): a putter that collects and validates a whole closure
 * before handing it over, the checked `get`, and the checks a single `put`
 * runs.
 *
 * @module
 */
import { b3Display, blake3, checkDigestLength, type Digest, digestKey } from "../digest.ts";
import {
  type Directory,
  directoryDigest,
  directorySize,
  encodeDirectory,
  validateDirectory,
} from "../directory.ts";
import { errorMessage, InvalidRequestError, StorageError } from "../../errors.ts";
import { quoteBytes } from "../node.ts";
import { checkStored, type Closure, UploadClosure } from "./closure.ts";
import type { DirectoryPutter } from "./service.ts";

/**
 * A backend's `get`: checks the digest length, loads the directory with
 * `load`, and verifies that what was stored hashes to `digest` (else
 * `StorageError`). `undefined` if nothing is stored.
 */
export async function getChecked(
  digest: Digest,
  load: (digest: Digest) => Promise<Directory | undefined>,
): Promise<Directory | undefined> {
  checkDigestLength(digest);
  const directory = await load(digest);
  if (directory) checkStored(digest, directory);
  return directory;
}

/**
 * Checks a directory for a single `put`: it must be valid, and every child
 * it references must already be stored (`stored` looks one up) with the
 * size the parent declares, so no put leaves a dangling reference. Returns
 * the digest. Throws `InvalidRequestError`.
 */
export async function checkSinglePut(
  directory: Directory,
  stored: (digest: Digest) => Promise<Directory | undefined>,
): Promise<Digest> {
  const digest = directoryDigest(directory);
  try {
    validateDirectory(directory);
  } catch (err) {
    throw new InvalidRequestError(
      `directory ${b3Display(digest)} failed validation: ${errorMessage(err)}`,
    );
  }
  for (const child of directory.directories) {
    const present = await stored(child.digest);
    if (!present) {
      throw new InvalidRequestError(
        `directory ${b3Display(digest)} references unknown directory ${
          b3Display(child.digest)
        } as ${quoteBytes(child.name)}`,
      );
    }
    const recorded = directorySize(present);
    if (recorded !== child.size) {
      throw new InvalidRequestError(
        `${quoteBytes(child.name)} has wrong size, specified ${child.size}, recorded ${recorded}`,
      );
    }
  }
  return digest;
}

/**
 * The directories below `directory` (its children's closures, read with
 * `getRecursive`) by digest key: what a single put marks as used, in the
 * transaction that stores it.
 */
export async function childClosures(
  directory: Directory,
  getRecursive: (digest: Digest) => AsyncIterable<Directory>,
): Promise<Map<string, Digest>> {
  const closure = new Map<string, Digest>();
  for (const child of directory.directories) {
    if (closure.has(digestKey(child.digest))) continue;
    for await (const d of getRecursive(child.digest)) {
      const digest = blake3(encodeDirectory(d));
      closure.set(digestKey(digest), digest);
    }
  }
  return closure;
}

/** A single put whose children's closure lost a directory to gc after it was read. */
export function closureRemovedError(digest: Digest): StorageError {
  return new StorageError(
    `directory ${b3Display(digest)}: part of the closure it refers to was removed ` +
      `while it was being stored (garbage collection?); put it again`,
  );
}

/**
 * A putter that validates the upload as it arrives (leaves to root) and
 * hands the finished closure to `store` on close, so a failed upload stores
 * nothing. Closing with nothing put fails with "got no directories".
 */
export class ClosurePutter implements DirectoryPutter {
  readonly #closure = new UploadClosure();
  readonly #store: (closure: Closure) => Promise<void>;
  #closed = false;
  // The first rejected put: the upload is broken, so close must not store
  // the part that was accepted.
  #failure: unknown;

  /** `store` persists a validated closure, all or nothing. */
  constructor(store: (closure: Closure) => Promise<void>) {
    this.#store = store;
  }

  /**
   * Adds the next directory; throws `ClosureError` for an invalid or
   * dangling one, after which the putter only fails.
   */
  put(directory: Directory): Promise<void> {
    if (this.#closed) return Promise.reject(new InvalidRequestError("already closed"));
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    try {
      this.#closure.add(directory);
      return Promise.resolve();
    } catch (err) {
      this.#failure = err;
      return Promise.reject(err);
    }
  }

  /** Checks the graph, stores the closure and returns its root digest. */
  async close(): Promise<Digest> {
    if (this.#closed) throw new InvalidRequestError("already closed");
    this.#closed = true;
    if (this.#failure !== undefined) throw this.#failure;
    const closure = this.#closure.finalize();
    if (!closure) throw new InvalidRequestError("got no directories");
    await this.#store(closure);
    return closure.rootDigest;
  }
}
