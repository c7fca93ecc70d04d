/**
 * A PathInfoService combinator: before a PathInfo is stored, the blob and
 * directory services are told to make what they hold durable. A PathInfo
 * is what makes a store path valid, so after a crash or a power loss every
 * path the store lists has all of its closure on disk (the services commit
 * in groups; see `castore/objectstore/flush.ts`). A PathInfo whose root is
 * a file names its blob, so a blob lost to garbage collection before its
 * upload was committed keeps the PathInfo out.
 *
 * @module
 */
import type { BlobService } from "../../castore/blob/service.ts";
import type { DirectoryService } from "../../castore/directory/service.ts";
import type { NarCalculationService } from "../../nar/calculation.ts";
import type { DamagedRowHandler, PathAccess, PathInfo, PathInfoService } from "./service.ts";

/**
 * What a PathInfo refers to: anything that can be made durable (a blob
 * service is also given the blob a file root names).
 */
export type Referenced = Pick<BlobService | DirectoryService, "sync">;

/** `inner`, with every `referenced.sync()` awaited before each put. */
export class ReferencesFirstPathInfoService implements PathInfoService {
  readonly #inner: PathInfoService;
  readonly #referenced: Referenced[];

  /** Wraps `inner`; `referenced` are the services its PathInfos refer to. */
  constructor(inner: PathInfoService, referenced: Referenced[]) {
    this.#inner = inner;
    this.#referenced = referenced;
  }

  /** As the wrapped service. */
  get(digest: Uint8Array): Promise<PathInfo | undefined> {
    return this.#inner.get(digest);
  }

  /** Makes the referenced services durable, then stores the PathInfo. */
  async put(info: PathInfo): Promise<PathInfo> {
    const root = info.node?.node;
    const refs = root?.$case === "file" ? [root.value.digest] : [];
    await Promise.all(this.#referenced.map((s) => s.sync?.(refs)));
    return await this.#inner.put(info);
  }

  /** As the wrapped service. */
  list(onDamaged?: DamagedRowHandler): AsyncIterable<PathInfo> {
    return this.#inner.list(onDamaged);
  }

  /** As the wrapped service (absent if its rows cannot be damaged or removed). */
  get deleteDamaged(): PathInfoService["deleteDamaged"] {
    const inner = this.#inner;
    return inner.deleteDamaged && ((digest) => inner.deleteDamaged!(digest));
  }

  /** As the wrapped service (absent if its changes are durable at once). */
  get sync(): (() => Promise<void>) | undefined {
    const inner = this.#inner;
    return inner.sync && (() => inner.sync!());
  }

  /** As the wrapped service (absent if it cannot delete). */
  get delete(): PathInfoService["delete"] {
    const inner = this.#inner;
    return inner.delete &&
      ((digest, expected, alongWith) => inner.delete!(digest, expected, alongWith));
  }

  /** As the wrapped service (absent if it keeps no access times). */
  get recordAccess(): ((entries: readonly PathAccess[]) => Promise<void>) | undefined {
    const inner = this.#inner;
    return inner.recordAccess && ((entries) => inner.recordAccess!(entries));
  }

  /** As the wrapped service (absent if it keeps no access times). */
  get listAccess(): (() => AsyncIterable<PathAccess>) | undefined {
    const inner = this.#inner;
    return inner.listAccess && (() => inner.listAccess!());
  }

  /** As the wrapped service (absent if it keeps no access times). */
  get deleteUnaccessed(): ((digest: Uint8Array, cutoffMs: number) => Promise<boolean>) | undefined {
    const inner = this.#inner;
    return inner.deleteUnaccessed && ((d, c) => inner.deleteUnaccessed!(d, c));
  }

  /** As the wrapped service. */
  get narCalculation(): NarCalculationService | undefined {
    return this.#inner.narCalculation;
  }

  /** As the wrapped service. */
  get remote(): boolean | undefined {
    return this.#inner.remote;
  }

  /** Closes the wrapped service (not the referenced ones). */
  close(): Promise<void> {
    return this.#inner.close();
  }
}
