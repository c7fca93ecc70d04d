/**
 * Builds an {@linkcode ObjectStore} from the part of an `objectstore+…` URL
 * after the prefix (docs/architecture.md#service-urls). This build supports
 * the local filesystem and memory; the cloud and HTTP stores of the
 * reference are rejected clearly.
 *
 * @module
 */
import { StorageError } from "../../errors.ts";
import { FileObjectStore } from "./file.ts";
import { MemoryObjectStore } from "./memory.ts";
import type { ObjectStore } from "./store.ts";

const UNSUPPORTED = new Set([
  "s3:",
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
 * Parses `objectstore+file:///abs/path`, `objectstore+memory://` or
 * `objectstore+memory:///` (the `objectstore+` prefix is optional here).
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
            `(supported: objectstore+file, objectstore+memory)`,
        );
      }
      throw new StorageError(`unknown object store URL scheme: ${url}`);
  }
}
