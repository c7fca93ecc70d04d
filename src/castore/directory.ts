/**
 * Directory messages: canonical encoding, digest, size, validation and the
 * merged name order of their children.
 *
 * @module
 */
import {
  Directory,
  type DirectoryNode,
  type FileNode,
  type SymlinkNode,
} from "../proto/tvix/castore/protos/castore.ts";
import { blake3, compareBytes, type Digest } from "./digest.ts";
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

/**
 * Decodes a Directory message (unknown fields are dropped). Stored
 * directories, which are canonical, take a direct path: listing a
 * directory of 100 files spent about 0.1 ms in the generated decoder,
 * which builds and throws away two empty arrays per child. Anything else
 * (unknown fields, other wire types, sizes of 2^49 or more, damage) goes
 * through the generated decoder, so both give the same result.
 */
export function decodeDirectory(bytes: Uint8Array): Directory {
  return decodeCommonDirectory(bytes) ?? Directory.decode(bytes);
}

/** Shared by decoded nodes for absent fields (a zero-length view cannot be written). */
const NO_BYTES = new Uint8Array(0);

/** Cursor of {@linkcode decodeCommonDirectory}; module state, so reading a field allocates nothing. */
let at = 0;

/** A varint below 2^49 at the cursor, or -1 if it is longer or cut off at `end`. */
function varint(b: Uint8Array, end: number): number {
  let value = 0;
  for (let scale = 1; scale < 2 ** 49; scale *= 128) {
    if (at >= end) return -1;
    const x = b[at++];
    value += (x & 0x7f) * scale;
    if (x < 0x80) return value;
  }
  return -1;
}

/** A length-delimited field's bytes at the cursor (a view), or `undefined` if cut off. */
function delimited(b: Uint8Array, end: number): Uint8Array | undefined {
  const length = varint(b, end);
  if (length < 0 || at + length > end) return undefined;
  at += length;
  return b.subarray(at - length, at);
}

/**
 * Decodes the common encoding of a Directory: only its three node fields,
 * each node only its own fields with their own wire types, everything in
 * bounds. `undefined` for anything else. Exported for tests; use
 * {@linkcode decodeDirectory}.
 */
export function decodeCommonDirectory(b: Uint8Array): Directory | undefined {
  const directory: Directory = { directories: [], files: [], symlinks: [] };
  at = 0;
  while (at < b.length) {
    const tag = b[at++];
    if (tag !== 10 && tag !== 18 && tag !== 26) return undefined;
    const length = varint(b, b.length);
    const end = at + length;
    if (length < 0 || end > b.length) return undefined;
    let name: Uint8Array = NO_BYTES, data: Uint8Array = NO_BYTES, size = 0, executable = false;
    while (at < end) {
      const field = b[at++];
      if (field === 10 || field === 18) {
        const bytes = delimited(b, end);
        if (!bytes) return undefined;
        if (field === 10) name = bytes;
        else data = bytes;
      } else if (field === 24 && tag !== 26) {
        size = varint(b, end);
        if (size < 0) return undefined;
      } else if (field === 32 && tag === 18) {
        const flag = varint(b, end);
        if (flag < 0) return undefined;
        executable = flag !== 0;
      } else return undefined;
    }
    if (tag === 10) directory.directories.push({ name, digest: data, size: BigInt(size) });
    else if (tag === 18) {
      directory.files.push({ name, digest: data, size: BigInt(size), executable });
    } else directory.symlinks.push({ name, target: data });
  }
  return directory;
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
  const { directories, files, symlinks } = directory;
  validateList(directories, "directory", []);
  validateList(files, "file", [directories]);
  validateList(symlinks, "symlink", [directories, files]);
  if (directorySizeChecked(directory) === undefined) {
    throw new ValidateDirectoryError("SizeOverflow", "Total size exceeds u64::MAX");
  }
}

/**
 * Validates one list of a Directory: each node, the order, and names
 * unique within it and against the `earlier` lists (already validated, so
 * sorted: found by binary search, without building a key per name).
 */
function validateList(
  list: readonly (DirectoryNode | FileNode | SymlinkNode)[],
  $case: NodeVariant["$case"],
  earlier: readonly (readonly { name: Uint8Array }[])[],
): void {
  let previous: Uint8Array | undefined;
  for (const value of list) {
    const name = value.name;
    try {
      validateNode({ $case, value } as NodeVariant);
    } catch (err) {
      if (!(err instanceof ValidateNodeError)) throw err;
      throw new ValidateDirectoryError(
        "InvalidNode",
        `invalid node with name ${quoteBytes(name)}: ${err.message}`,
        err,
      );
    }
    const order = previous ? compareBytes(name, previous) : 1;
    if (order < 0) {
      throw new ValidateDirectoryError("WrongSorting", `${quoteBytes(name)} is not sorted`);
    }
    if (order === 0 || earlier.some((other) => containsName(other, name))) {
      throw new ValidateDirectoryError("DuplicateName", `${quoteBytes(name)} is a duplicate name`);
    }
    previous = name;
  }
}

/** Whether the sorted `nodes` hold one named `name`. */
function containsName(nodes: readonly { name: Uint8Array }[], name: Uint8Array): boolean {
  let lo = 0, hi = nodes.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const c = compareBytes(nodes[mid].name, name);
    if (c === 0) return true;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
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
