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
 * The gear loop runs in WebAssembly (gear_scan.wat): native 64-bit
 * arithmetic there scans about 2.6 times as fast per CPU second as the
 * earlier JavaScript loop, which had to split the hash into two small
 * integers to stay out of BigInt. Each cut copies the bytes it may scan
 * (at most `maxSize - minSize`) into the module's memory.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { GEAR_SCAN_WASM } from "./gear_scan_wasm.ts";

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

let gear: readonly bigint[] | undefined;

/**
 * The 256 gear values (full 64-bit), derived from MD5 as the crate does;
 * computed on first use, not when the module loads.
 */
export function gearTable(): readonly bigint[] {
  gear ??= Array.from({ length: 256 }, (_, i) => {
    const md5 = createHash("md5").update(new Uint8Array(64).fill(i)).digest();
    return md5.readBigUInt64BE(0);
  });
  return gear;
}

/** Parameters checked and turned into masks, ready for {@linkcode cutLength}. */
export interface PreparedParams {
  readonly minSize: number;
  readonly avgSize: number;
  readonly maxSize: number;
  /** Mask before the average size (more bits), and shifted left by one. */
  readonly maskS: bigint;
  readonly maskSLs: bigint;
  /** Mask after the average size (fewer bits), and shifted left by one. */
  readonly maskL: bigint;
  readonly maskLLs: bigint;
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
  return {
    minSize: params.minSize,
    avgSize: params.avgSize,
    maxSize: params.maxSize,
    maskS,
    maskSLs: maskS << 1n,
    maskL,
    maskLLs: maskL << 1n,
  };
}

/** Where gear_scan.wat expects the tables and the input. */
const GEAR_AT = 0;
const GEAR_LS_AT = 2048;
const INPUT_AT = 4096;
const WASM_PAGE = 65536;

/** The gear scanner: one instance per thread, its memory grown to the largest window asked for. */
interface GearScanner {
  readonly memory: WebAssembly.Memory;
  bytes: Uint8Array;
  readonly scan: (
    from: number,
    smallEnd: number,
    end: number,
    maskS: bigint,
    maskSLs: bigint,
    maskL: bigint,
    maskLLs: bigint,
  ) => number;
}

let scanner: GearScanner | undefined;

function gearScanner(window: number): GearScanner {
  if (!scanner) {
    const instance = new WebAssembly.Instance(
      new WebAssembly.Module(GEAR_SCAN_WASM as BufferSource),
    );
    const memory = instance.exports.memory as WebAssembly.Memory;
    const view = new DataView(memory.buffer);
    gearTable().forEach((g, i) => {
      view.setBigUint64(GEAR_AT + 8 * i, g, true);
      view.setBigUint64(GEAR_LS_AT + 8 * i, (g << 1n) & U64, true);
    });
    scanner = {
      memory,
      bytes: new Uint8Array(memory.buffer),
      scan: instance.exports.scan as GearScanner["scan"],
    };
  }
  const needed = INPUT_AT + window;
  if (scanner.memory.buffer.byteLength < needed) {
    scanner.memory.grow(Math.ceil((needed - scanner.memory.buffer.byteLength) / WASM_PAGE));
    scanner.bytes = new Uint8Array(scanner.memory.buffer);
  }
  return scanner;
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
  // Pairs are hashed from byte 2 * floor(min / 2); the scanner sees the
  // bytes from there on, at INPUT_AT.
  const first = p.minSize & ~1;
  const s = gearScanner(remaining - first);
  s.bytes.set(source.subarray(start + first, start + remaining), INPUT_AT);
  const base = INPUT_AT - first; // address of the chunk's byte 0
  const cut = s.scan(
    INPUT_AT,
    base + (center & ~1),
    base + (remaining & ~1),
    p.maskS,
    p.maskSLs,
    p.maskL,
    p.maskLLs,
  );
  return cut < 0 ? remaining : cut - base;
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
