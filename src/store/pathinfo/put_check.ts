/**
 * Checks shared by the PathInfoService backends.
 *
 * @module
 */
import { InvalidRequestError } from "../../errors.ts";
import type { PathInfo } from "../../proto/tvix/store/protos/pathinfo.ts";
import { STORE_PATH_DIGEST_LEN, type StorePath } from "../store_path.ts";
import { validatePathInfo, ValidatePathInfoError } from "./validate.ts";

/** Throws `InvalidRequestError` unless `digest` is a 20-byte store path digest. */
export function checkPathInfoDigest(digest: Uint8Array): void {
  if (digest.length !== STORE_PATH_DIGEST_LEN) {
    throw new InvalidRequestError("invalid output digest length");
  }
}

/**
 * Validates a PathInfo about to be stored and returns its store path.
 * Throws `InvalidRequestError` "failed to validate PathInfo: …".
 */
export function validateForPut(info: PathInfo): StorePath {
  try {
    return validatePathInfo(info);
  } catch (err) {
    if (!(err instanceof ValidatePathInfoError)) throw err;
    throw new InvalidRequestError(`failed to validate PathInfo: ${err.message}`, { cause: err });
  }
}
