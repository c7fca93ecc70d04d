/**
 * Directory closures: the ordering rules for uploads (leaves to root) and
 * downloads (root to leaves), the graph checks every putter runs, and a
 * breadth-first traversal for backends that store directories one by one.
 *
 * @module
 */
import {
  b3Display,
  blake3,
  bytesEqual,
  checkDigestLength,
  type Digest,
  digestKey,
} from "../digest.ts";
import {
  decodeDirectory,
  type Directory,
  directoryDigest,
  directorySize,
  validateDirectory,
  ValidateDirectoryError,
} from "../directory.ts";
import { quoteBytes } from "../node.ts";
import { CorruptionError, InvalidRequestError } from "../../errors.ts";

/**
 * A closure failed to validate. `kind` tells the gRPC layer which status to
 * use: a child digest of the wrong length is a malformed request, the rest
 * are ordering, validation and graph errors.
 */
export class ClosureError extends InvalidRequestError {
  override name = "ClosureError";
  constructor(
    readonly kind: "InvalidDigest" | "Validation" | "Order" | "WrongSize" | "Graph",
    message: string,
  ) {
    super(message);
  }
}

function validate(directory: Directory): void {
  try {
    validateDirectory(directory);
  } catch (err) {
    if (!(err instanceof ValidateDirectoryError)) throw err;
    const digestLength = err.nodeError?.kind === "InvalidDigestLen";
    throw new ClosureError(digestLength ? "InvalidDigest" : "Validation", err.message);
  }
}

function checkSize(name: Uint8Array, specified: bigint, child: Directory): void {
  const recorded = directorySize(child);
  if (specified !== recorded) {
    throw new ClosureError(
      "WrongSize",
      `${quoteBytes(name)} has wrong size, specified ${specified}, recorded ${recorded}`,
    );
  }
}

/** A validated closure: its root and the directories in both orders. */
export interface Closure {
  /** Digest of the one directory nothing else references. */
  readonly rootDigest: Digest;
  /** Each directory once, every child before its parents (root last). */
  readonly leavesToRoot: Directory[];
  /** Each directory once, root first, then breadth-first. */
  readonly rootToLeaves: Directory[];
}

/**
 * Collects an upload, leaves first. A directory is accepted only if every
 * child it references was added before and its size field matches;
 * re-sending a directory is ignored. Nothing is stored here: putters store
 * the result of {@linkcode finalize}.
 */
export class UploadClosure {
  readonly #byKey = new Map<string, { digest: Digest; directory: Directory }>();
  readonly #referenced = new Set<string>();

  /** Number of distinct directories added. */
  get size(): number {
    return this.#byKey.size;
  }

  /** Adds the next directory of the stream; returns its digest. Throws {@linkcode ClosureError}. */
  add(directory: Directory): Digest {
    validate(directory);
    for (const child of directory.directories) {
      const present = this.#byKey.get(digestKey(child.digest));
      if (!present) {
        throw new ClosureError(
          "Order",
          `unknown directory ${b3Display(child.digest)} referenced by ${quoteBytes(child.name)}`,
        );
      }
      checkSize(child.name, child.size, present.directory);
    }
    const digest = directoryDigest(directory);
    const key = digestKey(digest);
    if (!this.#byKey.has(key)) {
      this.#byKey.set(key, { digest, directory });
      for (const child of directory.directories) this.#referenced.add(digestKey(child.digest));
    }
    return digest;
  }

  /**
   * Checks that exactly one root remains and returns the closure, or
   * `undefined` if nothing was added. Throws {@linkcode ClosureError}.
   */
  finalize(): Closure | undefined {
    if (this.#byKey.size === 0) return undefined;
    const roots = [...this.#byKey.keys()].filter((k) => !this.#referenced.has(k));
    if (roots.length !== 1) throw new ClosureError("Graph", "graph has disconnected roots");
    const root = this.#byKey.get(roots[0])!;
    const get = (d: Digest) => this.#byKey.get(digestKey(d))!.directory;

    const rootToLeaves: Directory[] = [];
    const queued = new Set([roots[0]]);
    const queue = [root.directory];
    for (let i = 0; i < queue.length; i++) {
      rootToLeaves.push(queue[i]);
      for (const child of queue[i].directories) {
        const key = digestKey(child.digest);
        if (!queued.has(key)) {
          queued.add(key);
          queue.push(get(child.digest));
        }
      }
    }

    const leavesToRoot: Directory[] = [];
    const emitted = new Set<string>();
    const visit = (key: string, directory: Directory) => {
      if (emitted.has(key)) return;
      emitted.add(key);
      for (const child of directory.directories) {
        visit(digestKey(child.digest), get(child.digest));
      }
      leavesToRoot.push(directory);
    };
    visit(roots[0], root.directory);
    return { rootDigest: root.digest, leavesToRoot, rootToLeaves };
  }
}

/**
 * Checks a download, root first: each directory must be the requested root
 * or referenced by one received before, and must match the size its parent
 * declared. Directories received twice are accepted once.
 */
export class DownloadValidator {
  readonly #expected = new Map<string, { name: Uint8Array; size: bigint } | null>();
  readonly #received = new Set<string>();
  #root: Digest | undefined;

  /** `root`: the requested digest; if omitted, the first directory defines it. */
  constructor(root?: Digest) {
    this.#root = root;
    if (root) this.#expected.set(digestKey(root), null);
  }

  /**
   * Checks the next received directory; returns false for a repeat that the
   * caller should skip. Throws {@linkcode ClosureError}.
   */
  add(directory: Directory): boolean {
    validate(directory);
    const digest = directoryDigest(directory);
    const key = digestKey(digest);
    if (this.#received.has(key)) return false;
    if (!this.#root) {
      this.#root = digest;
      this.#expected.set(key, null);
    }
    if (!this.#expected.has(key)) {
      throw new ClosureError("Order", `received unexpected directory ${b3Display(digest)}`);
    }
    const declared = this.#expected.get(key);
    if (declared) checkSize(declared.name, declared.size, directory);
    this.#expected.delete(key);
    this.#received.add(key);
    for (const child of directory.directories) {
      const childKey = digestKey(child.digest);
      if (!this.#received.has(childKey)) {
        this.#expected.set(childKey, { name: child.name, size: child.size });
      }
    }
    return true;
  }

  /** Throws if a referenced directory never arrived. */
  finish(): void {
    if (this.#expected.size > 0 && this.#received.size > 0) {
      throw new ClosureError(
        "Graph",
        `still expected ${this.#expected.size} directories, but got premature end of stream`,
      );
    }
  }
}

/**
 * Yields the closure of `root`, root first then breadth-first, each
 * directory once, using a non-recursive getter. A missing root yields
 * nothing; a missing child, or a stored directory whose digest or contents
 * are wrong, is a {@linkcode CorruptionError}.
 */
export async function* traverseClosure(
  get: (digest: Digest) => Promise<Directory | undefined>,
  root: Digest,
  verified = false,
): AsyncGenerator<Directory> {
  checkDigestLength(root);
  const queued = new Set([digestKey(root)]);
  const queue: Digest[] = [root];
  for (let i = 0; i < queue.length; i++) {
    const digest = queue[i];
    const directory = await get(digest);
    if (!directory) {
      if (i === 0) return;
      throw new CorruptionError(`directory ${b3Display(digest)} does not exist`);
    }
    if (!verified) checkStored(digest, directory);
    yield directory;
    for (const child of directory.directories) {
      const key = digestKey(child.digest);
      if (!queued.has(key)) {
        queued.add(key);
        queue.push(child.digest);
      }
    }
  }
}

/**
 * Decodes the bytes stored under `digest`, which a backend wrote as the
 * canonical encoding of a directory keyed by its BLAKE3. Hashing the stored
 * bytes proves them (re-encoding the decoded message, as
 * {@linkcode checkStored} does, costs several times more); the directory is
 * then validated. Throws {@linkcode CorruptionError}.
 */
export function decodeStored(digest: Digest, bytes: Uint8Array): Directory {
  const actual = blake3(bytes);
  if (!bytesEqual(actual, digest)) {
    throw new CorruptionError(
      `requested directory with digest ${b3Display(digest)}, but got ${b3Display(actual)}`,
    );
  }
  let directory: Directory;
  try {
    directory = decodeDirectory(bytes);
  } catch (err) {
    throw new CorruptionError(`directory ${b3Display(digest)}: unable to decode: ${err}`);
  }
  try {
    validateDirectory(directory);
  } catch (err) {
    throw new CorruptionError(`directory ${b3Display(digest)} failed validation: ${err}`);
  }
  return directory;
}

/**
 * Verifies a directory read back from storage: it must be valid and hash to
 * the digest it was stored under. Throws {@linkcode CorruptionError}.
 */
export function checkStored(digest: Digest, directory: Directory): void {
  const actual = directoryDigest(directory);
  if (!bytesEqual(actual, digest)) {
    throw new CorruptionError(
      `requested directory with digest ${b3Display(digest)}, but got ${b3Display(actual)}`,
    );
  }
  try {
    validateDirectory(directory);
  } catch (err) {
    throw new CorruptionError(`directory ${b3Display(digest)} failed validation: ${err}`);
  }
}
