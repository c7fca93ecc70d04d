/**
 * Nix store paths: `/nix/store/<nixbase32 digest>-<name>`
 * (docs/compatibility.md#store-paths), and the content-addressed paths Nix
 * computes for imported content (docs/compatibility.md#content-addressed-paths).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { toHex } from "../castore/digest.ts";
import * as nixbase32 from "./nixbase32.ts";

/** The store directory every path lives in. */
export const STORE_DIR = "/nix/store";

/** Length of a store path digest in bytes. */
export const STORE_PATH_DIGEST_LEN = 20;

/** Length of the digest's nixbase32 text. */
export const STORE_PATH_DIGEST_TEXT_LEN = nixbase32.encodedLength(STORE_PATH_DIGEST_LEN); // 32

/** Longest name Nix accepts, in bytes. */
export const MAX_NAME_LEN = 211;

/** Why a string is not a store path. */
export class StorePathError extends Error {
  override name = "StorePathError";
  constructor(
    readonly kind:
      | "InvalidLength"
      | "InvalidHashEncoding"
      | "MissingDash"
      | "InvalidName"
      | "MissingStoreDir",
    message: string,
    /** For `InvalidName`: byte offset of the first offending character in the name. */
    readonly position?: number,
  ) {
    super(message);
  }
}

const utf8Encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

function isNameByte(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || // a-z
    (c >= 0x41 && c <= 0x5a) || // A-Z
    (c >= 0x30 && c <= 0x39) || // 0-9
    c === 0x2b || c === 0x2d || c === 0x5f || c === 0x3f || c === 0x3d || c === 0x2e; // + - _ ? = .
}

/**
 * Checks a store path name (bytes): 1 to 211 bytes from `[a-zA-Z0-9+-_?=.]`.
 * Returns it as a string. Throws {@linkcode StorePathError}.
 */
function checkNameBytes(name: Uint8Array): string {
  if (name.length === 0 || name.length > MAX_NAME_LEN) {
    throw new StorePathError("InvalidLength", `invalid name length ${name.length}`);
  }
  for (let i = 0; i < name.length; i++) {
    if (!isNameByte(name[i])) {
      throw new StorePathError(
        "InvalidName",
        `invalid name ${
          JSON.stringify(new TextDecoder().decode(name))
        }: bad character at byte ${i}`,
        i,
      );
    }
  }
  // Only ASCII got through, so this is exact.
  return latin1.decode(name);
}

/** Throws {@linkcode StorePathError} unless `name` is a valid store path name. */
export function validateName(name: string): void {
  checkNameBytes(utf8Encoder.encode(name));
}

/** A parsed store path: 20-byte digest and name. */
export class StorePath {
  private constructor(
    /** The 20-byte digest (decoded from the first 32 characters). */
    readonly digest: Uint8Array,
    /** The part after `<digest>-`. */
    readonly name: string,
  ) {}

  /**
   * Builds a store path from its parts, checking both (20-byte digest,
   * valid name). Throws {@linkcode StorePathError}.
   */
  static fromParts(digest: Uint8Array, name: string): StorePath {
    if (digest.length !== STORE_PATH_DIGEST_LEN) {
      throw new StorePathError("InvalidLength", `invalid digest length ${digest.length}`);
    }
    validateName(name);
    return new StorePath(digest.slice(), name);
  }

  /**
   * Parses `<32 nixbase32 chars>-<name>` given as bytes (e.g. a node name).
   * Throws {@linkcode StorePathError}.
   */
  static parseBasenameBytes(s: Uint8Array): StorePath {
    if (s.length < STORE_PATH_DIGEST_TEXT_LEN + 2) {
      throw new StorePathError(
        "InvalidLength",
        `store path basename too short (${s.length} bytes)`,
      );
    }
    let digest: Uint8Array;
    try {
      digest = nixbase32.decode(latin1.decode(s.subarray(0, STORE_PATH_DIGEST_TEXT_LEN)));
    } catch (err) {
      throw new StorePathError("InvalidHashEncoding", `invalid store path digest: ${err}`);
    }
    if (s[STORE_PATH_DIGEST_TEXT_LEN] !== 0x2d) {
      throw new StorePathError("MissingDash", "missing dash after the store path digest");
    }
    const name = checkNameBytes(s.subarray(STORE_PATH_DIGEST_TEXT_LEN + 1));
    return new StorePath(digest, name);
  }

  /** Parses a basename `<32 nixbase32 chars>-<name>`. Throws {@linkcode StorePathError}. */
  static parseBasename(s: string): StorePath {
    return StorePath.parseBasenameBytes(utf8Encoder.encode(s));
  }

  /** Parses `/nix/store/<basename>`. Throws {@linkcode StorePathError}. */
  static parseAbsolute(s: string): StorePath {
    const prefix = STORE_DIR + "/";
    if (!s.startsWith(prefix)) {
      throw new StorePathError("MissingStoreDir", `${JSON.stringify(s)} is not in ${STORE_DIR}`);
    }
    return StorePath.parseBasename(s.slice(prefix.length));
  }

  /** `<nixbase32 digest>-<name>`. */
  basename(): string {
    return `${nixbase32.encode(this.digest)}-${this.name}`;
  }

  /** `/nix/store/<basename>`. */
  absolute(): string {
    return `${STORE_DIR}/${this.basename()}`;
  }

  /** The absolute path. */
  toString(): string {
    return this.absolute();
  }
}

/**
 * Orders store paths as Nix sorts them: by digest compared from the last
 * byte to the first (which is the order of the nixbase32 text), then by name.
 */
export function compareStorePaths(a: StorePath, b: StorePath): number {
  for (let i = STORE_PATH_DIGEST_LEN - 1; i >= 0; i--) {
    if (a.digest[i] !== b.digest[i]) return a.digest[i] - b.digest[i];
  }
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

function sha256(text: string): Uint8Array {
  return new Uint8Array(createHash("sha256").update(text).digest());
}

/** Folds a 32-byte hash into 20 bytes by XOR, as Nix does for store paths. */
export function compressHash(hash: Uint8Array, size = STORE_PATH_DIGEST_LEN): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < hash.length; i++) out[i % size] ^= hash[i];
  return out;
}

/**
 * The store path Nix derives from a path type (`source`, `text`,
 * `output:out`, possibly followed by `:<reference>` parts), the SHA-256 of
 * the inner fingerprint, and a name. Throws {@linkcode StorePathError} for
 * an invalid name.
 */
export function makeStorePath(type: string, innerSha256: Uint8Array, name: string): StorePath {
  validateName(name);
  const fingerprint = `${type}:sha256:${toHex(innerSha256)}:${STORE_DIR}:${name}`;
  return StorePath.fromParts(compressHash(sha256(fingerprint)), name);
}

function withReferences(type: string, references: readonly StorePath[], self: boolean): string {
  const sorted = [...references].sort(compareStorePaths);
  return type + sorted.map((r) => `:${r.absolute()}`).join("") + (self ? ":self" : "");
}

/** Hash algorithms Nix content addresses use. */
export type CaHashAlgo = "md5" | "sha1" | "sha256" | "sha512";

/**
 * The path of a text store object (`builtins.toFile`, `.drv` files) with
 * the given SHA-256 of its contents and references.
 */
export function textStorePath(
  name: string,
  contentSha256: Uint8Array,
  references: readonly StorePath[] = [],
): StorePath {
  return makeStorePath(withReferences("text", references, false), contentSha256, name);
}

/**
 * The path of a fixed-output store object: `recursive` hashes the NAR
 * serialisation, otherwise the flat file contents. Only recursive SHA-256
 * paths may have references (and a self-reference).
 */
export function fixedOutputStorePath(
  name: string,
  hash: { algo: CaHashAlgo; digest: Uint8Array; recursive: boolean },
  references: readonly StorePath[] = [],
  selfReference = false,
): StorePath {
  if (hash.recursive && hash.algo === "sha256") {
    return makeStorePath(withReferences("source", references, selfReference), hash.digest, name);
  }
  if (references.length > 0 || selfReference) {
    throw new RangeError("only recursive sha256 content addresses may have references");
  }
  const inner = sha256(
    `fixed:out:${hash.recursive ? "r:" : ""}${hash.algo}:${toHex(hash.digest)}:`,
  );
  return makeStorePath("output:out", inner, name);
}

/**
 * The path `nix-store --add` gives content whose NAR has SHA-256
 * `narSha256` (docs/compatibility.md#content-addressed-paths). Throws
 * {@linkcode StorePathError} for an invalid name.
 */
export function caNarSha256StorePath(narSha256: Uint8Array, name: string): StorePath {
  return fixedOutputStorePath(name, { algo: "sha256", digest: narSha256, recursive: true });
}
