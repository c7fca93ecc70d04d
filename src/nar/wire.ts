/**
 * NAR (Nix ARchive) wire primitives: the `u64`/`str()` encodings, the
 * pre-assembled keyword sequences, and the limits a strict reader enforces
 * (docs/compatibility.md#nar-encoding).
 *
 * @module
 */

import { concatBytes } from "../castore/digest.ts";

const te = new TextEncoder();

/** Padding needed after `len` bytes to reach a multiple of 8. */
export function padLen(len: number): number {
  return (8 - (len % 8)) % 8;
}

/**
 * Writes `n` as 8 bytes little-endian at `out[0..8]`. Lengths below 2^32
 * (all names, most file sizes) skip BigInt and DataView: the renderer
 * encodes two or three per file, and those were a visible part of a
 * many-small-files NAR.
 */
function putU64(out: Uint8Array, n: number | bigint): void {
  if (typeof n === "number" && n >= 0 && n <= 0xffffffff) {
    out[0] = n & 0xff;
    out[1] = (n >>> 8) & 0xff;
    out[2] = (n >>> 16) & 0xff;
    out[3] = n >>> 24;
    return;
  }
  new DataView(out.buffer, out.byteOffset, 8).setBigUint64(0, BigInt(n), true);
}

/** `u64(n)`: 8 bytes little-endian. */
export function u64(n: number | bigint): Uint8Array {
  const out = new Uint8Array(8);
  putU64(out, typeof n === "bigint" && n <= 0xffffffffn ? Number(n) : n);
  return out;
}

/** `str(b)`: length, bytes, zero padding to a multiple of 8. */
export function str(bytes: Uint8Array | string): Uint8Array {
  const b = typeof bytes === "string" ? te.encode(bytes) : bytes;
  const out = new Uint8Array(8 + b.length + padLen(b.length));
  putU64(out, b.length);
  out.set(b, 8);
  return out;
}

/** Concatenation of byte strings (the castore helper, by the name the NAR code uses). */
export const concat = concatBytes;

const seq = (...words: string[]) => concat(words.map((w) => str(w)));

/**
 * The keyword sequences a NAR is made of, each already `str()`-encoded.
 * Lengths as listed in docs/compatibility.md#nar-encoding.
 */
export const TOK = {
  /** `"nix-archive-1" "(" "type"` (56 bytes). */
  header: seq("nix-archive-1", "(", "type"),
  /** `"symlink" "target"` (32). */
  symlink: seq("symlink", "target"),
  /** `"regular" "contents"` (32). */
  regular: seq("regular", "contents"),
  /** `"regular" "executable" "" "contents"` (64). */
  executable: seq("regular", "executable", "", "contents"),
  /** `"directory"` (24). */
  directory: seq("directory"),
  /** `"entry" "(" "name"` (48). */
  entryOpen: seq("entry", "(", "name"),
  /** `"node" "(" "type"` (48). */
  nodeOpen: seq("node", "(", "type"),
  /** `")"` (16). */
  close: seq(")"),
} as const;

/** Individual keywords, `str()`-encoded, as the reader compares them. */
export const WORD = {
  magic: str("nix-archive-1"),
  open: str("("),
  close: str(")"),
  type: str("type"),
  symlink: str("symlink"),
  target: str("target"),
  regular: str("regular"),
  executable: str("executable"),
  empty: str(""),
  contents: str("contents"),
  directory: str("directory"),
  entry: str("entry"),
  name: str("name"),
  node: str("node"),
} as const;

/** Longest entry name a NAR may carry, in bytes. */
export const MAX_NAME_LEN = 255;

/** Longest symlink target a NAR may carry, in bytes. */
export const MAX_TARGET_LEN = 4095;

/** Zero bytes to slice padding from. */
export const ZEROS: Uint8Array = new Uint8Array(8);
