/**
 * In-process PathInfoService (`memory://`): encoded PathInfos in a Map keyed
 * by store path digest, lost on exit.
 *
 * @module
 */
import { digestKey } from "../../castore/digest.ts";
import { PathInfo } from "../../proto/tvix/store/protos/pathinfo.ts";
import type { PathInfoService } from "./service.ts";
import { checkPathInfoDigest, validateForPut } from "./put_check.ts";

/** A PathInfoService keeping every PathInfo in memory. */
export class MemoryPathInfoService implements PathInfoService {
  // Encoded bytes, so callers cannot mutate what is stored.
  readonly #infos = new Map<string, Uint8Array>();

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
      this.#infos.set(digestKey(path.digest), PathInfo.encode(info).finish());
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

  /** Removes the PathInfo with this digest; false if there was none. */
  delete(digest: Uint8Array): Promise<boolean> {
    try {
      checkPathInfoDigest(digest);
      return Promise.resolve(this.#infos.delete(digestKey(digest)));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Nothing to release. */
  close(): Promise<void> {
    return Promise.resolve();
  }
}
