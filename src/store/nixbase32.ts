/**
 * nixbase32: the base-32 text form Nix uses for hashes in store paths and
 * narinfo files (docs/compatibility.md#nixbase32).
 *
 * Nix prints the input as one little-endian number, most significant digit
 * first, with an alphabet that leaves out `e`, `o`, `u` and `t`.
 *
 * @module
 */

/** The 32 digit characters, in value order. */
export const ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz";

const VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) VALUE[ALPHABET.charCodeAt(i)] = i;

/** A string that is not valid nixbase32. */
export class Nixbase32Error extends Error {
  override name = "Nixbase32Error";
}

/** Number of characters encoding `n` bytes: ceil(n * 8 / 5). */
export function encodedLength(n: number): number {
  return Math.floor((n * 8 + 4) / 5);
}

/** Number of bytes `len` characters decode to. */
export function decodedLength(len: number): number {
  return Math.floor((len * 5) / 8);
}

/** The nixbase32 text of `bytes`. */
export function encode(bytes: Uint8Array): string {
  const len = encodedLength(bytes.length);
  let out = "";
  for (let p = 0; p < len; p++) {
    // Character p carries the 5 bits starting at bit b, counted from the
    // least significant bit of the little-endian number.
    const b = (len - 1 - p) * 5;
    const i = b >>> 3;
    const j = b & 7;
    const word = bytes[i] | ((i + 1 < bytes.length ? bytes[i + 1] : 0) << 8);
    out += ALPHABET[(word >>> j) & 0x1f];
  }
  return out;
}

/**
 * The bytes of a nixbase32 string. Throws {@linkcode Nixbase32Error} for a
 * character outside the alphabet or for set bits beyond the decoded length
 * (so every byte string has exactly one accepted encoding).
 */
export function decode(text: string): Uint8Array {
  const out = new Uint8Array(decodedLength(text.length));
  for (let n = 0; n < text.length; n++) {
    const c = text.charCodeAt(text.length - 1 - n);
    const digit = c < 128 ? VALUE[c] : -1;
    if (digit < 0) {
      throw new Nixbase32Error(
        `invalid nixbase32 symbol ${JSON.stringify(text[text.length - 1 - n])}`,
      );
    }
    const b = n * 5;
    const i = b >>> 3;
    const j = b & 7;
    const shifted = digit << j;
    if (i < out.length) out[i] |= shifted & 0xff;
    else if (shifted & 0xff) throw new Nixbase32Error("invalid nixbase32 trailing bits");
    const carry = shifted >>> 8;
    if (carry) {
      if (i + 1 < out.length) out[i + 1] |= carry;
      else throw new Nixbase32Error("invalid nixbase32 trailing bits");
    }
  }
  return out;
}

/**
 * Decodes a string that must encode exactly `n` bytes. Throws
 * {@linkcode Nixbase32Error} for any other length.
 */
export function decodeFixed(text: string, n: number): Uint8Array {
  if (text.length !== encodedLength(n)) {
    throw new Nixbase32Error(
      `invalid nixbase32 length ${text.length}, expected ${encodedLength(n)}`,
    );
  }
  return decode(text);
}
