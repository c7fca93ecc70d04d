/**
 * A minimal object store: whole objects addressed by relative slash-separated
 * paths, as the object-store blob and directory backends need it
 * (docs/compatibility.md#object-store-layout).
 *
 * Objects are immutable once visible: `put` is atomic, so a reader (or a
 * process after a crash) sees either the complete new object or nothing.
 * Stores may make objects durable in batches: an object is visible once
 * `put` resolves and durable (survives a power loss) once a later `sync`
 * resolves, the commit point of whoever wrote it.
 *
 * @module
 */

/** A store of whole objects under relative paths like `blobs/b3/41f8/41f8…`. */
export interface ObjectStore {
  /** The object's bytes, or `undefined` if there is no such object. */
  get(path: string): Promise<Uint8Array | undefined>;

  /**
   * The object's size in bytes, or `undefined` if there is no such object
   * (a HEAD request, without reading the data).
   */
  size(path: string): Promise<number | undefined>;

  /**
   * Stores the object atomically, replacing any object at that path. Never
   * leaves a partial object visible, even if the process dies mid-write.
   */
  put(path: string, data: Uint8Array): Promise<void>;

  /**
   * Makes every object put so far durable. Absent where puts are durable
   * when they resolve (or nothing is durable at all, as in memory).
   */
  sync?(): Promise<void>;

  /** Removes the object if it exists. */
  delete(path: string): Promise<void>;

  /** Paths of all objects whose path starts with `prefix`, sorted. */
  list(prefix?: string): Promise<string[]>;

  /** A short description for logs, e.g. `file:///var/lib/…`. */
  readonly description: string;

  /** Releases resources. */
  close(): Promise<void>;
}

/**
 * Checks a relative object path: non-empty segments separated by `/`, no `.`
 * or `..` segments, no NUL. Throws a TypeError otherwise, so a bad path can
 * never escape a file store's base directory.
 */
export function checkObjectPath(path: string): void {
  const segments = path.split("/");
  for (const s of segments) {
    if (s === "" || s === "." || s === ".." || s.includes("\0") || s.includes("\\")) {
      throw new TypeError(`invalid object path: ${JSON.stringify(path)}`);
    }
  }
}

/** An object's size and modification time. */
export interface ObjectInfo {
  /** The object's path in the store. */
  path: string;
  /** Stored size in bytes. */
  size: number;
  /** Last written or touched, ms since the epoch (the server's clock). */
  modified: number;
}

/**
 * What an object store offers garbage collection (docs/gc.md#objects-on-s3):
 * listing with modification times, touching an object to mark it reused,
 * and deleting in batches.
 */
export interface CollectableObjectStore extends ObjectStore {
  /** Size and modification time of one object, `undefined` if absent. */
  stat(path: string): Promise<ObjectInfo | undefined>;
  /** Every object below `prefix`, with size and modification time. */
  listInfo(prefix: string): Promise<ObjectInfo[]>;
  /** Sets the object's modification time to now, keeping its bytes. */
  touch(path: string): Promise<void>;
  /** Removes the objects (absent ones are not errors). */
  deleteMany(paths: string[]): Promise<void>;
}

/** Whether `store` offers {@linkcode CollectableObjectStore}'s calls. */
export function isCollectable(store: ObjectStore): store is CollectableObjectStore {
  const s = store as Partial<CollectableObjectStore>;
  return typeof s.stat === "function" && typeof s.listInfo === "function" &&
    typeof s.touch === "function" && typeof s.deleteMany === "function";
}
