/**
 * Directory messages: canonical encoding, digest, size, validation and the
 * merged name order of their children.
 *
 * @module
 */
import { Directory } from "../proto/tvix/castore/protos/castore.ts";
import { blake3, compareBytes, type Digest, digestKey } from "./digest.ts";
import { type NodeVariant, quoteBytes, U64_MAX, validateNode, ValidateNodeError } from "./node.ts";

export { Directory };

/** Why a Directory failed validation. */
export class ValidateDirectoryError extends Error {
  override name = "ValidateDirectoryError";
  constructor(
    readonly kind: "InvalidNode" | "WrongSorting" | "DuplicateName" | "SizeOverflow",
    message: string,
    /** For `InvalidNode`: what was wrong with the node. */
    readonly nodeError?: ValidateNodeError,
  ) {
    super(message);
  }
}

/**
 * Canonical protobuf encoding: fields ascending, defaults omitted, repeated
 * elements in list order (what prost emits). Digests are computed over this.
 */
export function encodeDirectory(directory: Directory): Uint8Array {
  return Directory.encode(directory).finish();
}

/** Decodes a Directory message (unknown fields are dropped). */
export function decodeDirectory(bytes: Uint8Array): Directory {
  return Directory.decode(bytes);
}

/** BLAKE3 of the canonical encoding. */
export function directoryDigest(directory: Directory): Digest {
  return blake3(encodeDirectory(directory));
}

/** An empty Directory. */
export function emptyDirectory(): Directory {
  return { directories: [], files: [], symlinks: [] };
}

/**
 * Recursive element count: direct children plus the sizes of the child
 * directories. `undefined` if it overflows a u64.
 */
export function directorySizeChecked(directory: Directory): bigint | undefined {
  let size = BigInt(
    directory.directories.length + directory.files.length + directory.symlinks.length,
  );
  for (const d of directory.directories) {
    size += d.size;
    if (size > U64_MAX) return undefined;
  }
  return size;
}

/** Recursive element count, saturating at u64::MAX. */
export function directorySize(directory: Directory): bigint {
  return directorySizeChecked(directory) ?? U64_MAX;
}

/**
 * Validates a Directory: each list's nodes are valid, sorted and unique
 * across all lists, and the size fits a u64. Throws
 * {@linkcode ValidateDirectoryError} for the first problem found.
 */
export function validateDirectory(directory: Directory): void {
  const seen = new Set<string>();
  const lists: NodeVariant[][] = [
    directory.directories.map((value) => ({ $case: "directory", value })),
    directory.files.map((value) => ({ $case: "file", value })),
    directory.symlinks.map((value) => ({ $case: "symlink", value })),
  ];
  for (const list of lists) {
    let previous: Uint8Array = new Uint8Array(0);
    for (const variant of list) {
      const name = variant.value.name;
      try {
        validateNode(variant);
      } catch (err) {
        if (!(err instanceof ValidateNodeError)) throw err;
        throw new ValidateDirectoryError(
          "InvalidNode",
          `invalid node with name ${quoteBytes(name)}: ${err.message}`,
          err,
        );
      }
      if (compareBytes(name, previous) < 0) {
        throw new ValidateDirectoryError("WrongSorting", `${quoteBytes(name)} is not sorted`);
      }
      const key = digestKey(name);
      if (seen.has(key)) {
        throw new ValidateDirectoryError(
          "DuplicateName",
          `${quoteBytes(name)} is a duplicate name`,
        );
      }
      seen.add(key);
      previous = name;
    }
  }
  if (directorySizeChecked(directory) === undefined) {
    throw new ValidateDirectoryError("SizeOverflow", "Total size exceeds u64::MAX");
  }
}

/** All children of a Directory merged into one sequence in bytewise name order. */
export function* directoryNodes(directory: Directory): Generator<NodeVariant> {
  const { directories: ds, files: fs, symlinks: ss } = directory;
  let i = 0, j = 0, k = 0;
  while (i < ds.length || j < fs.length || k < ss.length) {
    // The smallest name of the three lists' heads; the node is built once
    // it is chosen (a NAR of many small files walks every child).
    let kind = i < ds.length ? 0 : -1;
    let name = kind === 0 ? ds[i].name : undefined;
    if (j < fs.length && (!name || compareBytes(fs[j].name, name) < 0)) {
      kind = 1;
      name = fs[j].name;
    }
    if (k < ss.length && (!name || compareBytes(ss[k].name, name) < 0)) kind = 2;
    if (kind === 0) yield { $case: "directory", value: ds[i++] };
    else if (kind === 1) yield { $case: "file", value: fs[j++] };
    else yield { $case: "symlink", value: ss[k++] };
  }
}
