/**
 * Protobuf varints for the hand-written message encoders (`BlobChunk` on
 * both ends, the `SmallBlobService` responses), which write straight into
 * a buffer instead of going through a generic writer that copies.
 *
 * @module
 */

/** Bytes of `value` (a non-negative safe integer) as a varint. */
export function varintBytes(value: number): number {
  let n = 1;
  for (let rest = value; rest >= 0x80; rest = Math.floor(rest / 0x80)) n++;
  return n;
}

/** Writes `value` (a non-negative safe integer) as a varint at `at`; returns the index after it. */
export function writeVarint(out: Uint8Array, at: number, value: number): number {
  let rest = value;
  while (rest >= 0x80) {
    out[at++] = (rest % 0x80) | 0x80;
    rest = Math.floor(rest / 0x80);
  }
  out[at++] = rest;
  return at;
}
