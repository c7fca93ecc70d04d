/**
 * Checks shared by the PathInfoService backends.
 *
 * @module
 */
import { bytesEqual, digestKey, toHex } from "../../castore/digest.ts";
import { CorruptionError, InvalidRequestError } from "../../errors.ts";
import { PathInfo } from "../../proto/tvix/store/protos/pathinfo.ts";
import { STORE_PATH_DIGEST_LEN, type StorePath } from "../store_path.ts";
import { type DamagedRowHandler, REFERRERS_NAMED } from "./service.ts";
import { validatePathInfo, ValidatePathInfoError } from "./validate.ts";

/** Throws `InvalidRequestError` unless `digest` is a 20-byte store path digest. */
export function checkPathInfoDigest(digest: Uint8Array): void {
  if (digest.length !== STORE_PATH_DIGEST_LEN) {
    throw new InvalidRequestError("invalid output digest length");
  }
}

/**
 * Whether the stored bytes `stored` hold the PathInfo `expected`, compared
 * as this build encodes both (fields it does not know are left out of
 * both sides). For deletions conditional on what was checked.
 */
export function sameInfo(stored: Uint8Array, expected: PathInfo): boolean {
  let decoded: PathInfo;
  try {
    decoded = PathInfo.decode(stored);
  } catch {
    return false;
  }
  return bytesEqual(PathInfo.encode(decoded).finish(), PathInfo.encode(expected).finish());
}

/**
 * The distinct references of `info` other than `self` (its own store path
 * digest): what makes a referrer in docs/gc.md#referrers. A path that
 * refers to itself does not keep itself.
 */
export function otherReferences(info: PathInfo, self: Uint8Array): Uint8Array[] {
  const seen = new Set<string>([toHex(self)]);
  const out: Uint8Array[] = [];
  for (const ref of info.references) {
    const key = toHex(ref);
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(ref);
  }
  return out;
}

/**
 * {@linkcode otherReferences} of the stored bytes `data` under `digest`,
 * for indexing the paths of a store from before the referrer table: none
 * for bytes that do not decode (reading the row fails on them anyway).
 */
export function storedReferences(digest: Uint8Array, data: unknown): Uint8Array[] {
  try {
    return otherReferences(PathInfo.decode(data as Uint8Array), digest);
  } catch {
    return [];
  }
}

/**
 * How many referrer rows to read so that, after dropping those in
 * `alongWith`, up to {@linkcode REFERRERS_NAMED} that count are left.
 */
export function referrerRowsToRead(alongWith: ReadonlySet<string> | undefined): number {
  return REFERRERS_NAMED + (alongWith?.size ?? 0);
}

/**
 * Referrers that count against a deletion: those not in `alongWith` (keys
 * of paths the same request deletes), at most {@linkcode REFERRERS_NAMED}.
 */
export function blockingReferrers(
  referrers: Uint8Array[],
  alongWith: ReadonlySet<string> | undefined,
): Uint8Array[] {
  const left = alongWith ? referrers.filter((r) => !alongWith.has(digestKey(r))) : referrers;
  return left.slice(0, REFERRERS_NAMED);
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

/**
 * Decodes a PathInfo a backend read back under `key` and checks it: bytes
 * that decode, a valid PathInfo, and one that belongs to that key. Throws
 * `CorruptionError` (a `StorageError`), so damaged rows never pass for
 * data and `verify` counts them as damage.
 */
export function decodeStoredPathInfo(key: Uint8Array, data: unknown): PathInfo {
  const where = `pathinfo ${toHex(key)}`;
  if (!(data instanceof Uint8Array)) {
    throw new CorruptionError(`${where}: stored value is not bytes`);
  }
  let info: PathInfo;
  try {
    info = PathInfo.decode(data);
  } catch (err) {
    throw new CorruptionError(`${where}: unable to decode: ${err}`);
  }
  let digest: Uint8Array;
  try {
    digest = validatePathInfo(info).digest;
  } catch (err) {
    throw new CorruptionError(`${where}: stored PathInfo is invalid: ${err}`);
  }
  if (!bytesEqual(digest, key)) {
    throw new CorruptionError(`${where}: stored PathInfo belongs to ${toHex(digest)}`);
  }
  return info;
}

/**
 * {@linkcode decodeStoredPathInfo} for a listing: with `onDamaged`, a
 * damaged row is reported there and `undefined` returned instead of the
 * error thrown.
 */
export function listedPathInfo(
  key: Uint8Array,
  data: unknown,
  onDamaged: DamagedRowHandler | undefined,
): PathInfo | undefined {
  try {
    return decodeStoredPathInfo(key, data);
  } catch (err) {
    if (!onDamaged || !(err instanceof CorruptionError)) throw err;
    onDamaged(key, err);
    return undefined;
  }
}

/** Whether the row `data` under `key` is damaged ({@linkcode decodeStoredPathInfo} fails). */
export function isDamagedRow(key: Uint8Array, data: unknown): boolean {
  return listedPathInfo(key, data, () => {}) === undefined;
}
