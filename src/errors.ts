/**
 * The two kinds of failure a castore or store backend reports.
 *
 * `InvalidRequestError` is the caller's fault (maps to gRPC INVALID_ARGUMENT);
 * `StorageError` is the backend's (maps to gRPC DATA_LOSS, or INTERNAL where
 * the wire contract says so); its subclass `UnavailableError` says the
 * backend could not be reached at all, so the caller may retry (gRPC
 * UNAVAILABLE, HTTP 502/503). Absence is not an error: services return
 * `undefined` for unknown digests.
 *
 * @module
 */

/** The request was malformed or failed validation. */
export class InvalidRequestError extends Error {
  override name = "InvalidRequestError";
}

/** The backend failed, or holds data that fails verification. */
export class StorageError extends Error {
  override name = "StorageError";
}

/**
 * The store holds data that is missing or fails verification (a chunk or
 * directory it lists is gone, bytes do not match their digest, a record
 * does not decode): what a retry would not change, and what `verify`
 * counts as damage. Other failures (a backend refusing, a full disk) are
 * plain `StorageError`s.
 */
export class CorruptionError extends StorageError {
  override name = "CorruptionError";
}

/**
 * A remote server (a daemon, an upstream cache) answered with a failure
 * other than absence or unavailability: our request reached it, and it
 * refused or failed. Kept here, not with the gRPC client that raises it,
 * so that code which only tells it apart (the binary cache) loads no gRPC.
 */
export class UpstreamError extends StorageError {
  override name = "UpstreamError";
}

/**
 * A backend (database, object store, remote daemon) could not be reached
 * or refused service for now: nothing is known to be wrong with the data,
 * and the same call may succeed later.
 */
export class UnavailableError extends StorageError {
  override name = "UnavailableError";
}

/** The error's message, whatever was thrown. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
