/**
 * PathInfo validation (docs/compatibility.md#pathinfo-validation), run by
 * every PathInfoService backend on put and by clients on what they receive.
 *
 * @module
 */
import type { PathInfo } from "../../proto/tvix/store/protos/pathinfo.ts";
import { toHex } from "../../castore/digest.ts";
import { validateNode, ValidateNodeError } from "../../castore/node.ts";
import { quoteBytes } from "../../castore/node.ts";
import { STORE_PATH_DIGEST_LEN, StorePath, StorePathError } from "../store_path.ts";
import { bytesEqual } from "../../castore/digest.ts";
import { errorMessage, StorageError } from "../../errors.ts";

/** Kinds of {@linkcode ValidatePathInfoError}, in the order they are checked. */
export type ValidatePathInfoErrorKind =
  | "InvalidReferenceDigestLen"
  | "InvalidNarSha256DigestLen"
  | "InconsistentNumberOfReferences"
  | "InvalidNarinfoReferenceName"
  | "InconsistentNarinfoReferenceNameDigest"
  | "InvalidDeriverField"
  | "NoNodePresent"
  | "InvalidRootNode"
  | "InvalidNodeName";

/** Why a PathInfo is invalid. `cause` holds the underlying node or store path error. */
export class ValidatePathInfoError extends Error {
  override name = "ValidatePathInfoError";
  constructor(
    readonly kind: ValidatePathInfoErrorKind,
    message: string,
    override readonly cause?: ValidateNodeError | StorePathError,
  ) {
    super(message);
  }
}

const SHA256_LEN = 32;

/**
 * Validates a PathInfo and returns the store path named by its root node,
 * whose digest is the key the PathInfo is stored under. Throws
 * {@linkcode ValidatePathInfoError} for the first problem, checking in the
 * order of docs/compatibility.md#pathinfo-validation.
 *
 * Unlike the reference
 * (docs/compatibility.md#q10-deriver-unchecked-without-references) the
 * deriver is checked even when there are no references. Signatures, `ca`,
 * `nar_size` and the existence of the referenced content are not checked.
 */
export function validatePathInfo(info: PathInfo): StorePath {
  info.references.forEach((ref, i) => {
    if (ref.length !== STORE_PATH_DIGEST_LEN) {
      throw new ValidatePathInfoError(
        "InvalidReferenceDigestLen",
        `invalid length of reference digest at position ${i}: expected ${STORE_PATH_DIGEST_LEN}, got ${ref.length}`,
      );
    }
  });

  const narinfo = info.narinfo;
  if (narinfo) {
    if (narinfo.narSha256.length !== SHA256_LEN) {
      throw new ValidatePathInfoError(
        "InvalidNarSha256DigestLen",
        `invalid nar_sha256 length: expected ${SHA256_LEN}, got ${narinfo.narSha256.length}`,
      );
    }
    if (narinfo.referenceNames.length !== info.references.length) {
      throw new ValidatePathInfoError(
        "InconsistentNumberOfReferences",
        `inconsistent number of references: ${info.references.length} (references) vs ${narinfo.referenceNames.length} (narinfo)`,
      );
    }
    const checkDeriver = () => {
      const deriver = narinfo.deriver;
      if (!deriver) return;
      try {
        StorePath.fromParts(deriver.digest, deriver.name);
      } catch (err) {
        if (!(err instanceof StorePathError)) throw err;
        throw new ValidatePathInfoError(
          "InvalidDeriverField",
          `invalid deriver field: ${err.message}`,
          err,
        );
      }
    };
    narinfo.referenceNames.forEach((refName, i) => {
      let parsed: StorePath;
      try {
        parsed = StorePath.parseBasename(refName);
      } catch (err) {
        if (!(err instanceof StorePathError)) throw err;
        throw new ValidatePathInfoError(
          "InvalidNarinfoReferenceName",
          `invalid narinfo reference name at position ${i}: ${
            JSON.stringify(refName)
          }: ${err.message}`,
          err,
        );
      }
      if (!bytesEqual(parsed.digest, info.references[i])) {
        throw new ValidatePathInfoError(
          "InconsistentNarinfoReferenceNameDigest",
          `inconsistent digest of narinfo reference name at position ${i}: reference ${
            toHex(info.references[i])
          }, name ${toHex(parsed.digest)}`,
        );
      }
      // The reference checks the deriver inside this loop; checking it at the
      // same point keeps the order of errors, and the check after the loop
      // covers paths without references
      // (docs/compatibility.md#q10-deriver-unchecked-without-references).
      if (i === 0) checkDeriver();
    });
    if (narinfo.referenceNames.length === 0) checkDeriver();
  }

  const variant = info.node?.node;
  if (!variant) throw new ValidatePathInfoError("NoNodePresent", "no node present");
  try {
    validateNode(variant);
  } catch (err) {
    if (!(err instanceof ValidateNodeError)) throw err;
    throw new ValidatePathInfoError("InvalidRootNode", `invalid root node: ${err.message}`, err);
  }
  try {
    return StorePath.parseBasenameBytes(variant.value.name);
  } catch (err) {
    if (!(err instanceof StorePathError)) throw err;
    throw new ValidatePathInfoError(
      "InvalidNodeName",
      `invalid node name ${quoteBytes(variant.value.name)}: ${err.message}`,
      err,
    );
  }
}

/**
 * Checks a PathInfo a server sent: valid, and, when `asked` is given, for
 * the store path with that digest. Returns its store path digest; throws a
 * `StorageError` otherwise (the server, not the caller, is at fault).
 */
export function checkReceivedPathInfo(info: PathInfo, asked?: Uint8Array): Uint8Array {
  let got: Uint8Array;
  try {
    got = validatePathInfo(info).digest;
  } catch (err) {
    throw new StorageError(`invalid pathinfo: ${errorMessage(err)}`);
  }
  if (asked && !bytesEqual(got, asked)) {
    throw new StorageError(`asked for pathinfo ${toHex(asked)}, server sent ${toHex(got)}`);
  }
  return got;
}
