/**
 * The DirectoryService interface: Directory messages stored by digest.
 *
 * Backends live beside this file, one per file, and are built from a URL by
 * `from_url.ts`.
 *
 * @module
 */
import type { Digest } from "../digest.ts";
import type { Directory } from "../directory.ts";

/** Collects a closure (leaves first) and stores it on close, all or nothing. */
export interface DirectoryPutter {
  /** Adds the next directory; may throw early for an invalid or dangling one. */
  put(directory: Directory): Promise<void>;
  /**
   * Validates the whole closure, stores it and returns the root digest.
   * Throws `InvalidRequestError` ("got no directories") if nothing was put.
   */
  close(): Promise<Digest>;
}

/** A store of Directory messages. */
export interface DirectoryService {
  /**
   * One directory, `undefined` if unknown. Some backends (object store)
   * only return directories that were the root of an upload.
   */
  get(digest: Digest): Promise<Directory | undefined>;

  /**
   * The closure of `digest`: the root first, then breadth-first, each
   * directory once. Yields nothing if the root is unknown.
   */
  getRecursive(digest: Digest): AsyncIterable<Directory>;

  /** Stores a single directory (whose children must already be stored); returns its digest. */
  put(directory: Directory): Promise<Digest>;

  /** Starts a multi-directory upload. */
  putMultiple(): DirectoryPutter;

  /**
   * Makes everything stored so far durable: the commit point before
   * anything that references it is written. Absent where stores are
   * durable when they resolve, never durable (memory), or committed by the
   * other end (a remote daemon).
   */
  sync?(): Promise<void>;

  /** True when every call is a network round trip (a remote daemon). */
  readonly remote?: boolean;

  /** Releases resources. */
  close(): Promise<void>;
}
