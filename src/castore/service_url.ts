/**
 * URL helpers for building services from their addresses
 * (docs/architecture.md#service-urls).
 *
 * @module
 */
import { errorMessage, StorageError } from "../errors.ts";

/** Parses a service URL. Throws `StorageError` "unable to parse url: …". */
export function parseServiceUrl(url: string): URL {
  try {
    return new URL(url);
  } catch (err) {
    throw new StorageError(`unable to parse url: ${url}: ${errorMessage(err)}`);
  }
}

/** The scheme without the trailing colon, e.g. `memory`, `grpc+http`. */
export function urlScheme(url: URL): string {
  return url.protocol.slice(0, -1);
}

/**
 * `memory:` and `memory://` take neither host nor path. Throws
 * `StorageError` "invalid url" otherwise.
 */
export function checkMemoryUrl(url: URL): void {
  if (url.host !== "" || url.pathname !== "") {
    throw new StorageError(`invalid url: ${url.href}`);
  }
}

/** The error for a scheme no backend handles. */
export function unknownScheme(url: URL): StorageError {
  return new StorageError(`unknown scheme: ${urlScheme(url)}`);
}
