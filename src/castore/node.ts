/**
 * Castore nodes (directory, file, symlink references) and their validation.
 *
 * @module
 */
import type {
  DirectoryNode,
  FileNode,
  Node,
  SymlinkNode,
} from "../proto/tvix/castore/protos/castore.ts";
import { B3_LEN } from "./digest.ts";

export type {
  Directory,
  DirectoryNode,
  FileNode,
  Node,
  SymlinkNode,
} from "../proto/tvix/castore/protos/castore.ts";

/** A node with its kind: the set member of the `Node` oneof. */
export type NodeVariant = NonNullable<Node["node"]>;

/** Largest value of a protobuf uint64. */
export const U64_MAX = (1n << 64n) - 1n;

const utf8 = new TextDecoder("utf-8", { fatal: false });

/** A byte string (name or target) quoted for messages, with control bytes escaped. */
export function quoteBytes(bytes: Uint8Array): string {
  return JSON.stringify(utf8.decode(bytes));
}

/** Why a node failed validation. */
export class ValidateNodeError extends Error {
  override name = "ValidateNodeError";
  constructor(
    readonly kind: "NoNodeSet" | "InvalidDigestLen" | "InvalidName" | "InvalidSymlinkTarget",
    message: string,
  ) {
    super(message);
  }
}

/**
 * Whether `name` may name a node: non-empty, not `.` or `..`, and without
 * NUL or `/` bytes. No length or encoding limit applies.
 */
export function isValidName(name: Uint8Array): boolean {
  if (name.length === 0) return false;
  if (name.length === 1 && name[0] === 0x2e) return false;
  if (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e) return false;
  for (let i = 0; i < name.length; i++) {
    if (name[i] === 0 || name[i] === 0x2f) return false;
  }
  return true;
}

function checkDigest(digest: Uint8Array): void {
  if (digest.length !== B3_LEN) {
    throw new ValidateNodeError("InvalidDigestLen", `Invalid Digest length: ${digest.length}`);
  }
}

function checkName(name: Uint8Array): void {
  if (!isValidName(name)) {
    throw new ValidateNodeError("InvalidName", `Invalid name: ${quoteBytes(name)}`);
  }
}

/**
 * Validates a node: the digest length (directories and files) or the symlink
 * target (non-empty, no NUL), then, unless `checkNodeName` is false, the name.
 * Throws {@linkcode ValidateNodeError}.
 */
export function validateNode(variant: NodeVariant | undefined, checkNodeName = true): void {
  if (!variant) throw new ValidateNodeError("NoNodeSet", "No node set");
  switch (variant.$case) {
    case "directory":
    case "file":
      checkDigest(variant.value.digest);
      break;
    case "symlink": {
      const t = variant.value.target;
      if (t.length === 0 || t.includes(0)) {
        throw new ValidateNodeError(
          "InvalidSymlinkTarget",
          `Invalid symlink target: ${quoteBytes(t)}`,
        );
      }
      break;
    }
  }
  if (checkNodeName) checkName(variant.value.name);
}

/** A copy of `variant` carrying another name. */
export function renameNode(variant: NodeVariant, name: Uint8Array): NodeVariant {
  switch (variant.$case) {
    case "directory":
      return { $case: "directory", value: { ...variant.value, name } };
    case "file":
      return { $case: "file", value: { ...variant.value, name } };
    case "symlink":
      return { $case: "symlink", value: { ...variant.value, name } };
  }
}

/** Wraps a variant into the `Node` message. */
export function toNode(variant: NodeVariant): Node {
  return { node: variant };
}

/** Shorthand constructors, handy for building trees in code and tests. */
export const makeNode = {
  directory(name: Uint8Array, digest: Uint8Array, size: bigint): NodeVariant {
    return { $case: "directory", value: { name, digest, size } satisfies DirectoryNode };
  },
  file(name: Uint8Array, digest: Uint8Array, size: bigint, executable = false): NodeVariant {
    return { $case: "file", value: { name, digest, size, executable } satisfies FileNode };
  },
  symlink(name: Uint8Array, target: Uint8Array): NodeVariant {
    return { $case: "symlink", value: { name, target } satisfies SymlinkNode };
  },
};
