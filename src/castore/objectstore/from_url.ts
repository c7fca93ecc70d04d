/**
 * Builds an {@linkcode ObjectStore} from the part of an `objectstore+…` URL
 * after the prefix (docs/architecture.md#service-urls). This build supports
 * the local filesystem, memory and S3; the other cloud and HTTP stores of
 * the reference are rejected clearly.
 *
 * @module
 */
import { StorageError } from "../../errors.ts";
import { FileObjectStore } from "./file.ts";
import { MemoryObjectStore } from "./memory.ts";
import { S3ObjectStore, s3ObjectStoreFromUrl } from "./s3.ts";
import type { ObjectStore } from "./store.ts";

const UNSUPPORTED = new Set([
  "s3a:",
  "gs:",
  "az:",
  "adl:",
  "azure:",
  "abfs:",
  "abfss:",
  "http:",
  "https:",
]);

/**
 * Parses `objectstore+file:///abs/path`, `objectstore+memory://`,
 * `objectstore+memory:///` or `objectstore+s3://bucket/prefix?…` (the
 * `objectstore+` prefix is optional here) without contacting anything.
 * Throws {@linkcode StorageError} for anything else.
 */
export function objectStoreFromUrl(url: URL | string): ObjectStore {
  const text = String(url).replace(/^objectstore\+/, "");
  let inner: URL;
  try {
    inner = new URL(text);
  } catch {
    throw new StorageError(`invalid object store URL: ${url}`);
  }
  if (inner.protocol === "s3:") return s3ObjectStoreFromUrl(inner, String(url));
  if (inner.search !== "") {
    throw new StorageError(`object store options (URL query) are not supported: ${url}`);
  }
  switch (inner.protocol) {
    case "memory:":
      if (inner.host !== "" || (inner.pathname !== "" && inner.pathname !== "/")) {
        throw new StorageError(`memory object store takes no host or path: ${url}`);
      }
      return new MemoryObjectStore();
    case "file:": {
      if (inner.host !== "" && inner.host !== "localhost") {
        throw new StorageError(`file object store URL may not name a host: ${url}`);
      }
      let path: string;
      try {
        path = decodeURIComponent(inner.pathname);
      } catch {
        throw new StorageError(`invalid path in object store URL: ${url}`);
      }
      if (path.includes("\0")) {
        throw new StorageError(`invalid path in object store URL: ${url}`);
      }
      return new FileObjectStore(path.length > 1 ? path.replace(/\/+$/, "") : path);
    }
    default:
      if (UNSUPPORTED.has(inner.protocol)) {
        throw new StorageError(
          `object store scheme ${inner.protocol.slice(0, -1)} is not supported by this build ` +
            `(supported: objectstore+file, objectstore+memory, objectstore+s3)`,
        );
      }
      throw new StorageError(
        `unknown object store URL scheme: ${url} (supported: objectstore+file, objectstore+memory)`,
      );
  }
}

/**
 * Checks that a store built by {@linkcode objectStoreFromUrl} is usable
 * before it is handed out (S3: one HEAD of the bucket), so a wrong bucket or
 * wrong credentials fail when the service is built, in one clear line, not
 * at the first request. Closes the store if not.
 */
export async function checkObjectStore<S extends ObjectStore>(store: S): Promise<S> {
  if (store instanceof S3ObjectStore) {
    try {
      await store.check();
    } catch (err) {
      await store.close();
      throw err;
    }
  }
  return store;
}
