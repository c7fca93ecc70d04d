/**
 * An in-memory {@linkcode ObjectStore} (`objectstore+memory://`), empty when
 * created and gone when dropped.
 *
 * @module
 */
import { checkObjectPath, type ObjectStore } from "./store.ts";

/** Objects kept in a Map; data is copied in and out so callers cannot alias it. */
export class MemoryObjectStore implements ObjectStore {
  readonly #objects = new Map<string, Uint8Array>();
  readonly description = "memory:///";

  get(path: string): Promise<Uint8Array | undefined> {
    checkObjectPath(path);
    const data = this.#objects.get(path);
    return Promise.resolve(data?.slice());
  }

  size(path: string): Promise<number | undefined> {
    checkObjectPath(path);
    return Promise.resolve(this.#objects.get(path)?.length);
  }

  put(path: string, data: Uint8Array): Promise<void> {
    checkObjectPath(path);
    // A single Map assignment is atomic with respect to other callers.
    this.#objects.set(path, data.slice());
    return Promise.resolve();
  }

  delete(path: string): Promise<void> {
    checkObjectPath(path);
    this.#objects.delete(path);
    return Promise.resolve();
  }

  list(prefix = ""): Promise<string[]> {
    return Promise.resolve([...this.#objects.keys()].filter((k) => k.startsWith(prefix)).sort());
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
