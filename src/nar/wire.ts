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
 * Writes `n` as 8 bytes little-endian at `out[at..at + 8]`, which are zero. Lengths below 2^32
 * (all names, most file sizes), as number or bigint, skip BigInt and
 * DataView: the renderer encodes two or three per file, and those were a
 * visible part of a many-small-files NAR.
 */
function putU64(out: Uint8Array, at: number, value: number | bigint): void {
  const n = typeof value === "bigint" && value <= 0xffffffffn ? Number(value) : value;
  if (typeof n === "number" && n >= 0 && n <= 0xffffffff) {
    out[at] = n & 0xff;
    out[at + 1] = (n >>> 8) & 0xff;
    out[at + 2] = (n >>> 16) & 0xff;
    out[at + 3] = n >>> 24;
    return;
  }
  new DataView(out.buffer, out.byteOffset + at, 8).setBigUint64(0, BigInt(n), true);
}

/** `u64(n)`: 8 bytes little-endian. */
export function u64(n: number | bigint): Uint8Array {
  const out = new Uint8Array(8);
  putU64(out, 0, n);
  return out;
}

/** `str(b)`: length, bytes, zero padding to a multiple of 8. */
export function str(bytes: Uint8Array | string): Uint8Array {
  const b = typeof bytes === "string" ? te.encode(bytes) : bytes;
  const out = new Uint8Array(8 + b.length + padLen(b.length));
  putU64(out, 0, b.length);
  out.set(b, 8);
  return out;
}

/** Size of the buffers a {@linkcode TokenWriter} writes into. */
const TOKEN_SLAB = 64 * 1024;

/**
 * Writes NAR tokens (keywords, `str()`s, `u64`s) one after the other into
 * a shared buffer and hands out what was written since the last
 * {@linkcode TokenWriter.take} as a view, without a buffer per token: a
 * renderer writes a few per file, and those allocations were a visible part
 * of rendering a NAR of many small files. Views stay valid: a full buffer is
 * left to them and writing goes on in a fresh one.
 */
export class TokenWriter {
  // Always written in order and never reused, so bytes not yet written are zero.
  #buf = new Uint8Array(TOKEN_SLAB);
  #start = 0;
  #end = 0;

  /** Bytes written since the last take. */
  get pending(): number {
    return this.#end - this.#start;
  }

  /** Appends `bytes` as they are. */
  bytes(bytes: Uint8Array): void {
    this.#room(bytes.length).set(bytes, this.#end);
    this.#end += bytes.length;
  }

  /** Appends `str(bytes)`. */
  str(bytes: Uint8Array): void {
    const n = 8 + bytes.length + padLen(bytes.length);
    const buf = this.#room(n);
    putU64(buf, this.#end, bytes.length);
    buf.set(bytes, this.#end + 8);
    this.#end += n; // the padding is already zero
  }

  /** Appends `u64(n)`. */
  u64(n: number | bigint): void {
    const buf = this.#room(8);
    putU64(buf, this.#end, n);
    this.#end += 8;
  }

  /** Appends `n` (< 8) zero bytes: padding. */
  zeros(n: number): void {
    this.#room(n);
    this.#end += n;
  }

  /** What was written since the last take, as a view. */
  take(): Uint8Array {
    const out = this.#buf.subarray(this.#start, this.#end);
    this.#start = this.#end;
    // A view over a whole buffer (a long run of tokens) may be taken as the
    // reader's own and freed (releaseWhole): the writer goes on elsewhere.
    if (out.length === this.#buf.length) {
      this.#buf = new Uint8Array(TOKEN_SLAB);
      this.#start = this.#end = 0;
    }
    return out;
  }

  /** The buffer, with room for `n` more bytes after the pending ones. */
  #room(n: number): Uint8Array {
    if (this.#end + n > this.#buf.length) {
      const pending = this.#buf.subarray(this.#start, this.#end);
      this.#buf = new Uint8Array(Math.max(TOKEN_SLAB, pending.length + n));
      this.#buf.set(pending);
      this.#start = 0;
      this.#end = pending.length;
    }
    return this.#buf;
  }
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
