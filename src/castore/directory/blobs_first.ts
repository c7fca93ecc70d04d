/**
 * A DirectoryService combinator: before a directory (or a closure) is
 * stored, the blob service is told to make its blobs durable, so a stored
 * directory never refers to blobs that a power loss could still take away
 * (the blob service commits in groups; see `objectstore/flush.ts`). The
 * blobs its files name are passed along, so one lost to garbage collection
 * before its upload was committed keeps the directory out.
 *
 * @module
 */
import type { Digest } from "../digest.ts";
import type { Directory } from "../directory.ts";
import type { BlobService } from "../blob/service.ts";
import type { DirectoryPutter, DirectoryService } from "./service.ts";
import { isSweepable, type Sweepable } from "../sweep.ts";

/** `inner`, with `blobs.sync()` awaited before every store. */
export class BlobsFirstDirectoryService implements DirectoryService {
  readonly #inner: DirectoryService;
  readonly #blobs: Pick<BlobService, "sync">;

  /** Wraps `inner`; `blobs` is the blob service its directories refer to. */
  constructor(inner: DirectoryService, blobs: Pick<BlobService, "sync">) {
    this.#inner = inner;
    this.#blobs = blobs;
  }

  /** As the wrapped service. */
  get remote(): boolean | undefined {
    return this.#inner.remote;
  }

  /** As the wrapped service. */
  get(digest: Digest): Promise<Directory | undefined> {
    return this.#inner.get(digest);
  }

  /** As the wrapped service. */
  getRecursive(digest: Digest): AsyncIterable<Directory> {
    return this.#inner.getRecursive(digest);
  }

  /** Makes the blobs durable, then stores the directory. */
  async put(directory: Directory): Promise<Digest> {
    await this.#blobs.sync?.(fileDigests(directory));
    return await this.#inner.put(directory);
  }

  /** A closure upload whose `close` makes the blobs durable first. */
  putMultiple(): DirectoryPutter {
    const putter = this.#inner.putMultiple();
    const refs: Digest[] = [];
    return {
      put: (directory) => {
        for (const f of directory.files) refs.push(f.digest);
        return putter.put(directory);
      },
      close: async () => {
        await this.#blobs.sync?.(refs);
        return await putter.close();
      },
    };
  }

  /** As the wrapped service (absent if it cannot be swept). */
  get sweep(): Sweepable["sweep"] | undefined {
    const inner = this.#inner;
    return isSweepable(inner) ? (isLive, options) => inner.sweep(isLive, options) : undefined;
  }

  /** As the wrapped service. */
  async sync(): Promise<void> {
    await this.#inner.sync?.();
  }

  /** Closes the wrapped service (not the blob service). */
  close(): Promise<void> {
    return this.#inner.close();
  }
}

/** The blobs `directory`'s files name. */
function fileDigests(directory: Directory): Digest[] {
  return directory.files.map((f) => f.digest);
}
