/**
 * FastCDC content-defined chunking, 2020 variant, producing the same cut
 * points as the Rust `fastcdc` crate 3.1 (`v2020` module) so that chunk
 * digests deduplicate with stores written by the reference implementation.
 *
 * Algorithm facts (from the FastCDC 2020 paper and the crate):
 * - gear hash `h = (h << 2) + GEAR_LS[b0]`, checked against the shifted mask,
 *   then `h += GEAR[b1]`, checked against the plain mask ("rolling two bytes
 *   each time"); `GEAR[i]` is the first 8 bytes (big-endian) of
 *   MD5(64 bytes of value i), `GEAR_LS[i] = GEAR[i] << 1`;
 * - hashing starts at `min` (cut-point skipping) with `h = 0`; the small mask
 *   (more bits) is used up to `avg`, the large mask after it (normalisation);
 * - a match after the first byte of a pair cuts before that byte, after the
 *   second byte cuts before the next pair; without a match the chunk is
 *   `min(max, rest)` long; a rest of at most `min` bytes is one chunk.
 *
 * Every mask bit lies below bit 49 and the hash only shifts left and adds, so
 * the low 49 bits of the 64-bit hash decide every cut. They are kept as two
 * small integers (24 + 25 bits) so the hot loop stays in V8's fast integer
 * arithmetic instead of BigInt.
 *
 * @module
 */
import { createHash } from "node:crypto";

/** Chunk size parameters; sizes in bytes. */
export interface FastCdcParams {
  /** Smallest chunk (except a final shorter rest), 64 ..= 1 MiB. */
  readonly minSize: number;
  /** Target average size, 256 ..= 4 MiB; rounded to a power of two for the masks. */
  readonly avgSize: number;
  /** Largest chunk, 1024 ..= 16 MiB. */
  readonly maxSize: number;
  /** Normalisation level 0..3 (the crate's default is 1). */
  readonly level?: 0 | 1 | 2 | 3;
}

/**
 * The parameters the object-store blob service uses
 * (docs/compatibility.md#blobs-and-chunks).
 */
export const OBJECTSTORE_CHUNKING: FastCdcParams = {
  minSize: 128 * 1024,
  avgSize: 256 * 1024,
  maxSize: 512 * 1024,
  level: 1,
};

// Masks by number of bits (index = log2 of the average size), as in the
// crate; indexes 0-4 are unused.
const MASKS: readonly bigint[] = [
  0n,
  0n,
  0n,
  0n,
  0n,
  0x0000000001804110n,
  0x0000000001803110n,
  0x0000000018035100n,
  0x0000001800035300n,
  0x0000019000353000n,
  0x0000590003530000n,
  0x0000d90003530000n,
  0x0000d90103530000n,
  0x0000d90303530000n,
  0x0000d90313530000n,
  0x0000d90f03530000n,
  0x0000d90303537000n,
  0x0000d90703537000n,
  0x0000d90707537000n,
  0x0000d91707537000n,
  0x0000d91747537000n,
  0x0000d91767537000n,
  0x0000d93767537000n,
  0x0000d93777537000n,
  0x0000d93777577000n,
  0x0000db3777577000n,
];

const U64 = (1n << 64n) - 1n;
const LO_BITS = 24;
const LO_MASK = 0xffffff;
const HI_MASK = 0x1ffffff; // bits 24..48

/** The 256 gear values (full 64-bit), derived from MD5 as the crate does. */
export const GEAR: readonly bigint[] = Array.from({ length: 256 }, (_, i) => {
  const md5 = createHash("md5").update(new Uint8Array(64).fill(i)).digest();
  return md5.readBigUInt64BE(0);
});

function splitTable(values: readonly bigint[]): [Int32Array, Int32Array] {
  const lo = new Int32Array(values.length);
  const hi = new Int32Array(values.length);
  values.forEach((v, i) => {
    lo[i] = Number(v & BigInt(LO_MASK));
    hi[i] = Number((v >> BigInt(LO_BITS)) & BigInt(HI_MASK));
  });
  return [lo, hi];
}

const [GEAR_LO, GEAR_HI] = splitTable(GEAR);
const [GEAR_LS_LO, GEAR_LS_HI] = splitTable(GEAR.map((g) => (g << 1n) & U64));

/** Parameters checked and turned into split masks, ready for {@linkcode cutLength}. */
export interface PreparedParams {
  readonly minSize: number;
  readonly avgSize: number;
  readonly maxSize: number;
  readonly maskSLo: number;
  readonly maskSHi: number;
  readonly maskSLsLo: number;
  readonly maskSLsHi: number;
  readonly maskLLo: number;
  readonly maskLHi: number;
  readonly maskLLsLo: number;
  readonly maskLLsHi: number;
}

function checkRange(what: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`FastCDC ${what} ${value} outside ${min}..=${max}`);
  }
}

/** Validates parameters (the crate's bounds) and derives the masks. */
export function prepareParams(params: FastCdcParams): PreparedParams {
  checkRange("minimum size", params.minSize, 64, 1_048_576);
  checkRange("average size", params.avgSize, 256, 4_194_304);
  checkRange("maximum size", params.maxSize, 1024, 16_777_216);
  const level = params.level ?? 1;
  const bits = Math.round(Math.log2(params.avgSize));
  const maskS = MASKS[bits + level];
  const maskL = MASKS[bits - level];
  const [[sLo, lLo, sLsLo, lLsLo], [sHi, lHi, sLsHi, lLsHi]] = splitTable([
    maskS,
    maskL,
    maskS << 1n,
    maskL << 1n,
  ]);
  return {
    minSize: params.minSize,
    avgSize: params.avgSize,
    maxSize: params.maxSize,
    maskSLo: sLo,
    maskSHi: sHi,
    maskSLsLo: sLsLo,
    maskSLsHi: sLsHi,
    maskLLo: lLo,
    maskLHi: lHi,
    maskLLsLo: lLsLo,
    maskLLsHi: lLsHi,
  };
}

/**
 * Length of the next chunk of `source[start .. start + remaining]`, where
 * `remaining` is everything left in the stream (or at least `maxSize` of it).
 */
export function cutLength(
  source: Uint8Array,
  start: number,
  remaining: number,
  p: PreparedParams,
): number {
  if (remaining <= p.minSize) return remaining;
  let center = p.avgSize;
  if (remaining > p.maxSize) remaining = p.maxSize;
  else if (remaining < center) center = remaining;
  const centerPairs = center >>> 1;
  const endPairs = remaining >>> 1;
  let lo = 0;
  let hi = 0;
  let i = p.minSize >>> 1;
  // Two loops with the mask pairs hoisted into locals: the small masks before
  // the average size, the large ones after it.
  let mLsLo = p.maskSLsLo, mLsHi = p.maskSLsHi, mLo = p.maskSLo, mHi = p.maskSHi;
  for (let pass = 0; pass < 2; pass++) {
    const stop = pass === 0 ? centerPairs : endPairs;
    for (; i < stop; i++) {
      const a = start + 2 * i;
      let t = (lo << 2) + GEAR_LS_LO[source[a]];
      hi = ((hi << 2) + (t >>> LO_BITS) + GEAR_LS_HI[source[a]]) & HI_MASK;
      lo = t & LO_MASK;
      if (((lo & mLsLo) | (hi & mLsHi)) === 0) return 2 * i;
      t = lo + GEAR_LO[source[a + 1]];
      hi = (hi + (t >>> LO_BITS) + GEAR_HI[source[a + 1]]) & HI_MASK;
      lo = t & LO_MASK;
      if (((lo & mLo) | (hi & mHi)) === 0) return 2 * i + 1;
    }
    mLsLo = p.maskLLsLo;
    mLsHi = p.maskLLsHi;
    mLo = p.maskLLo;
    mHi = p.maskLHi;
  }
  return remaining;
}

/** Derived masks per parameter object: a chunker is made per blob, the parameters rarely vary. */
const PREPARED = new WeakMap<FastCdcParams, PreparedParams>();

/**
 * Streaming chunker: feed pieces of any size with {@linkcode push}, then call
 * {@linkcode finish}. Both yield the chunks completed so far in buffers the
 * caller owns (never views of the input or of a buffer still in use here).
 * Memory stays at most one `maxSize` buffer however the input is split, and
 * the cut points are the same for every split.
 */
export class FastCdcChunker {
  readonly #p: PreparedParams;
  /**
   * Input not yet cut. Grown on demand up to `maxSize`: most blobs in a
   * Nix store are far smaller than one chunk, and a daemon creates a
   * chunker per uploaded blob, so a full-size buffer each time meant
   * zeroing 512 KiB for a 2 KiB file (measured: the most expensive single
   * function of a small-file import through the daemon).
   */
  #buf = new Uint8Array(0);
  #len = 0;

  constructor(params: FastCdcParams = OBJECTSTORE_CHUNKING) {
    let p = PREPARED.get(params);
    if (!p) PREPARED.set(params, p = prepareParams(params));
    this.#p = p;
  }

  /** Makes room for `n` buffered bytes (at most `maxSize`). */
  #reserve(n: number): void {
    if (n <= this.#buf.length) return;
    const grown = new Uint8Array(Math.min(this.#p.maxSize, Math.max(n, 2 * this.#buf.length)));
    grown.set(this.#buf.subarray(0, this.#len));
    this.#buf = grown;
  }

  /** Adds input; yields every chunk whose end is now known. */
  *push(data: Uint8Array): Generator<Uint8Array> {
    const max = this.#p.maxSize;
    let pos = 0;
    while (pos < data.length) {
      if (this.#len === 0 && data.length - pos >= max) {
        // A whole window is available in the input: cut it without copying
        // it into the buffer first.
        const n = cutLength(data, pos, max, this.#p);
        // A copy even of a Node Buffer, whose `slice` is a view: the
        // caller may free or reuse `data` (a received gRPC message) at once.
        yield new Uint8Array(data.subarray(pos, pos + n));
        pos += n;
        continue;
      }
      const take = Math.min(max - this.#len, data.length - pos);
      this.#reserve(this.#len + take);
      this.#buf.set(data.subarray(pos, pos + take), this.#len);
      this.#len += take;
      pos += take;
      if (this.#len === max) yield this.#cutBuffered();
    }
  }

  /**
   * The input pushed but not cut yet, as a view that is valid until the
   * next `push` or `finish`.
   */
  buffered(): Uint8Array {
    return this.#buf.subarray(0, this.#len);
  }

  /** Ends the input; yields the remaining chunks. */
  *finish(): Generator<Uint8Array> {
    while (this.#len > 0) yield this.#cutBuffered();
  }

  #cutBuffered(): Uint8Array {
    const n = cutLength(this.#buf, 0, this.#len, this.#p);
    if (n === this.#buf.length) {
      // The buffer is exactly this chunk (a small blob written at once):
      // hand it over instead of copying it.
      const whole = this.#buf;
      this.#buf = new Uint8Array(0);
      this.#len = 0;
      return whole;
    }
    const chunk = this.#buf.slice(0, n);
    this.#buf.copyWithin(0, n, this.#len);
    this.#len -= n;
    return chunk;
  }
}

/** Chunk lengths of a complete buffer (convenience for tests and tools). */
export function chunkLengths(
  data: Uint8Array,
  params: FastCdcParams = OBJECTSTORE_CHUNKING,
): number[] {
  const p = prepareParams(params);
  const lengths: number[] = [];
  for (let pos = 0; pos < data.length;) {
    const n = cutLength(data, pos, data.length - pos, p);
    lengths.push(n);
    pos += n;
  }
  return lengths;
}
