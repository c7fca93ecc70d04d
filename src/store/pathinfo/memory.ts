/**
 * In-process PathInfoService (`memory://`): encoded PathInfos and their
 * access times in a Map keyed by store path digest, and who refers to whom
 * (docs/gc.md#referrers), lost on exit.
 *
 * @module
 */
import { digestKey, fromHex } from "../../castore/digest.ts";
import { PathInfo } from "../../proto/tvix/store/protos/pathinfo.ts";
import { type PathAccess, type PathInfoService, StillReferencedError } from "./service.ts";
import {
  blockingReferrers,
  checkPathInfoDigest,
  otherReferences,
  sameInfo,
  validateForPut,
} from "./put_check.ts";

/** A PathInfoService keeping every PathInfo in memory. */
export class MemoryPathInfoService implements PathInfoService {
  // Encoded bytes, so callers cannot mutate what is stored.
  readonly #infos = new Map<string, Uint8Array>();
  /** Last access per key, in ms (docs/gc.md#access-times). */
  readonly #accessed = new Map<string, number>();
  /** Key → keys of the stored paths that refer to it (themselves excluded). */
  readonly #referrers = new Map<string, Set<string>>();

  /** The PathInfo stored under this 20-byte digest, or `undefined`. */
  get(digest: Uint8Array): Promise<PathInfo | undefined> {
    checkPathInfoDigest(digest);
    const bytes = this.#infos.get(digestKey(digest));
    return Promise.resolve(bytes && PathInfo.decode(bytes));
  }

  /** Validates and stores (replacing an entry for the same store path). */
  put(info: PathInfo): Promise<PathInfo> {
    try {
      const path = validateForPut(info);
      const key = digestKey(path.digest);
      this.#dropReferences(key);
      this.#infos.set(key, PathInfo.encode(info).finish());
      for (const ref of otherReferences(info, path.digest)) {
        const refKey = digestKey(ref);
        const set = this.#referrers.get(refKey) ?? new Set();
        set.add(key);
        this.#referrers.set(refKey, set);
      }
      this.#accessed.set(key, Math.max(this.#accessed.get(key) ?? 0, Date.now()));
      return Promise.resolve(info);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Every stored PathInfo, in key order. */
  async *list(): AsyncGenerator<PathInfo> {
    const keys = [...this.#infos.keys()].sort();
    for (const key of keys) {
      const bytes = this.#infos.get(key);
      if (bytes) yield PathInfo.decode(bytes);
    }
  }

  /**
   * Removes the PathInfo with this digest (if still `expected`); false if
   * there was none. Without `expected`, refuses a path that a stored path
   * not in `alongWith` refers to ({@linkcode StillReferencedError}).
   */
  delete(
    digest: Uint8Array,
    expected?: PathInfo,
    alongWith?: ReadonlySet<string>,
  ): Promise<boolean> {
    try {
      checkPathInfoDigest(digest);
      const key = digestKey(digest);
      const stored = this.#infos.get(key);
      if (expected && !(stored && sameInfo(stored, expected))) return Promise.resolve(false);
      if (!expected && stored) {
        const referrers = blockingReferrers(
          [...this.#referrers.get(key) ?? []].map(fromHex),
          alongWith,
        );
        if (referrers.length > 0) throw new StillReferencedError(digest, referrers);
      }
      if (!stored) return Promise.resolve(false);
      this.#dropReferences(key);
      this.#accessed.delete(key);
      return Promise.resolve(this.#infos.delete(key));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Forgets what the stored path `key` refers to. */
  #dropReferences(key: string): void {
    const bytes = this.#infos.get(key);
    if (!bytes) return;
    for (const ref of otherReferences(PathInfo.decode(bytes), fromHex(key))) {
      const refKey = digestKey(ref);
      const set = this.#referrers.get(refKey);
      set?.delete(key);
      if (set?.size === 0) this.#referrers.delete(refKey);
    }
  }

  /** Moves access times forward. */
  recordAccess(entries: readonly PathAccess[]): Promise<void> {
    for (const e of entries) {
      const key = digestKey(e.digest);
      const was = this.#accessed.get(key);
      if (was !== undefined && was < e.accessedMs) this.#accessed.set(key, e.accessedMs);
    }
    return Promise.resolve();
  }

  /** Every stored path's last access time. */
  async *listAccess(): AsyncGenerator<PathAccess> {
    for (const [key, accessedMs] of [...this.#accessed]) {
      yield { digest: fromHex(key), accessedMs };
    }
  }

  /** Removes the PathInfo unless accessed at or after `cutoffMs` or referred to. */
  deleteUnaccessed(digest: Uint8Array, cutoffMs: number): Promise<boolean> {
    const key = digestKey(digest);
    const accessed = this.#accessed.get(key);
    if (accessed === undefined || accessed >= cutoffMs) return Promise.resolve(false);
    if (this.#referrers.get(key)?.size) return Promise.resolve(false);
    return this.delete(digest);
  }

  /** Nothing to release. */
  close(): Promise<void> {
    return Promise.resolve();
  }
}
