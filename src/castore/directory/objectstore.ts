/**
 * DirectoryService on an object store
 * (docs/compatibility.md#directory-closures-in-the-object-store): one object
 * per uploaded closure at `dirs/b3/<hex r[0..2]>/<hex r>` (`r` = root digest), holding a
 * zstd-compressed sequence of frames — a 4-byte big-endian length, then that
 * many bytes of a canonical `Directory` — root first, breadth-first, each
 * directory once.
 *
 * Consequences of that layout: only roots of uploads can be retrieved, and a
 * single `put` is possible only for a directory without subdirectories
 * (a closure of one).
 *
 * @module
 */
import { constants as zc, zstdCompress, zstdDecompress } from "node:zlib";
import { promisify } from "node:util";
import { b3Display, blake3, bytesEqual, checkDigestLength, type Digest, toHex } from "../digest.ts";
import { decodeDirectory, type Directory, directoryDigest, encodeDirectory } from "../directory.ts";
import { CorruptionError, errorMessage, InvalidRequestError } from "../../errors.ts";
import { checkObjectStore, objectStoreFromUrl } from "../objectstore/from_url.ts";
import type { ObjectStore } from "../objectstore/store.ts";
import { type Closure, DownloadValidator } from "./closure.ts";
import { ClosurePutter } from "./closure_putter.ts";
import type { DirectoryPutter, DirectoryService } from "./service.ts";

const compress = promisify(zstdCompress);
const decompress = promisify(zstdDecompress);
/**
 * Most bytes a stored closure may decompress to: far above any real one
 * (tens of MiB), so a small damaged or hostile object cannot make a read
 * allocate without bound.
 */
const MAX_CLOSURE_BYTES = 1 << 30;

/** Largest frame accepted when reading (the reference's limit, 1000 MiB). */
export const MAX_FRAME_LENGTH = 1_048_576_000;

/** Object path of the closure rooted at `root`: `dirs/b3/<4 hex>/<64 hex>`. */
export function closurePath(root: Digest): string {
  const hex = toHex(root);
  return `dirs/b3/${hex.slice(0, 4)}/${hex}`;
}

/** Encodes directories as length-prefixed frames (uncompressed). */
export function encodeFrames(directories: Directory[]): Uint8Array {
  const encoded = directories.map(encodeDirectory);
  const out = new Uint8Array(encoded.reduce((n, e) => n + 4 + e.length, 0));
  const view = new DataView(out.buffer);
  let pos = 0;
  for (const e of encoded) {
    view.setUint32(pos, e.length);
    out.set(e, pos + 4);
    pos += 4 + e.length;
  }
  return out;
}

/** Splits a decompressed closure into its raw frames; throws StorageError if malformed. */
function* splitFrames(data: Uint8Array, root: Digest): Generator<Uint8Array> {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let pos = 0;
  while (pos < data.length) {
    if (data.length - pos < 4) {
      throw new CorruptionError(`closure ${b3Display(root)}: truncated frame header`);
    }
    const length = view.getUint32(pos);
    if (length > MAX_FRAME_LENGTH) {
      throw new CorruptionError(
        `closure ${b3Display(root)}: frame of ${length} bytes is too large`,
      );
    }
    if (data.length - pos - 4 < length) {
      throw new CorruptionError(`closure ${b3Display(root)}: truncated frame`);
    }
    yield data.subarray(pos + 4, pos + 4 + length);
    pos += 4 + length;
  }
}

/** A DirectoryService storing whole closures as objects in an {@linkcode ObjectStore}. */
export class ObjectStoreDirectoryService implements DirectoryService {
  readonly #store: ObjectStore;

  constructor(store: ObjectStore) {
    this.#store = store;
  }

  /** The underlying object store (for tools and tests). */
  get store(): ObjectStore {
    return this.#store;
  }

  /** Makes every closure stored so far durable (the object store's group commit). */
  async sync(): Promise<void> {
    await this.#store.sync?.();
  }

  /** The directory if it is the root of a stored closure, else `undefined`. */
  async get(digest: Digest): Promise<Directory | undefined> {
    for await (const directory of this.getRecursive(digest)) return directory;
    return undefined;
  }

  /**
   * The stored closure of `digest`, root first. Every frame is hashed and
   * must be expected by a root-to-leaves validator seeded with `digest`; a
   * corrupted object is a `StorageError`. No object → nothing.
   */
  async *getRecursive(digest: Digest): AsyncGenerator<Directory> {
    checkDigestLength(digest);
    const compressed = await this.#store.get(closurePath(digest));
    if (!compressed) return;
    let data: Uint8Array;
    try {
      const out = await decompress(compressed, { maxOutputLength: MAX_CLOSURE_BYTES });
      // node:zlib returns a Buffer; decode from a plain Uint8Array so the
      // decoded byte fields are plain too.
      data = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    } catch (err) {
      throw new CorruptionError(
        `closure ${b3Display(digest)} could not be decompressed: ${errorMessage(err)}`,
      );
    }
    const validator = new DownloadValidator(digest);
    let count = 0;
    for (const frame of splitFrames(data, digest)) {
      const frameDigest = blake3(frame);
      let directory: Directory;
      try {
        directory = decodeDirectory(frame);
      } catch (err) {
        throw new CorruptionError(
          `closure ${b3Display(digest)}: undecodable directory: ${errorMessage(err)}`,
        );
      }
      // The validator works on re-encoded digests; the stored bytes must be
      // exactly that canonical encoding.
      if (!bytesEqual(directoryDigest(directory), frameDigest)) {
        throw new CorruptionError(
          `closure ${b3Display(digest)}: non-canonical directory ${b3Display(frameDigest)}`,
        );
      }
      let fresh: boolean;
      try {
        fresh = validator.add(directory);
      } catch (err) {
        throw new CorruptionError(`closure ${b3Display(digest)}: ${errorMessage(err)}`);
      }
      count++;
      if (fresh) yield directory;
    }
    if (count === 0) throw new CorruptionError(`closure ${b3Display(digest)} is empty`);
    try {
      validator.finish();
    } catch (err) {
      throw new CorruptionError(`closure ${b3Display(digest)}: ${errorMessage(err)}`);
    }
  }

  /** Stores a directory without subdirectories (as a closure of one). */
  async put(directory: Directory): Promise<Digest> {
    if (directory.directories.length > 0) {
      throw new InvalidRequestError(
        "only put_multiple_start is supported by the ObjectStoreDirectoryService for directories with children",
      );
    }
    const putter = this.putMultiple();
    await putter.put(directory);
    return await putter.close();
  }

  /** Collects a closure (leaves first), validates it and writes one object on close. */
  putMultiple(): DirectoryPutter {
    return new ClosurePutter((closure) => this.#storeClosure(closure));
  }

  async #storeClosure(closure: Closure): Promise<void> {
    const path = closurePath(closure.rootDigest);
    const frames = encodeFrames(closure.rootToLeaves);
    const compressed = await compress(frames, { params: { [zc.ZSTD_c_compressionLevel]: 3 } });
    // One of another size is not this one: what a power loss before the
    // flush leaves (empty or short), or another encoder's output. Rewrite it.
    if (await this.#store.size(path) === compressed.byteLength) return;
    await this.#store.put(
      path,
      new Uint8Array(compressed.buffer, compressed.byteOffset, compressed.byteLength),
    );
  }

  /** Closes the object store. */
  async close(): Promise<void> {
    await this.#store.close();
  }
}

/**
 * Builds the service from an `objectstore+file:///…`, `objectstore+memory://`
 * or `objectstore+s3://…` URL; other object stores are rejected as
 * unsupported by this build. A bad URL throws at once; the promise checks a
 * remote store first (`checkObjectStore`).
 */
export function objectStoreDirectoryServiceFromUrl(url: URL): Promise<ObjectStoreDirectoryService> {
  return checkObjectStore(objectStoreFromUrl(url)).then((store) =>
    new ObjectStoreDirectoryService(store)
  );
}
