/**
 * One zstd decompression context per thread, reused for every small chunk,
 * and compression contexts per thread, reused for every chunk
 * (docs/storage.md#reading-small-chunks, docs/storage.md#chunks-and-compression).
 *
 * `zstdDecompressSync` creates and frees a zstd context per call: ~28 µs in
 * Deno 2.9.6, against ~1 µs to decode a 4 KiB frame with a context reset
 * and reused; `zstdCompressSync` likewise costs ~19 µs per small chunk,
 * against ~4 µs with a reused context. A store path of thousands of small
 * files pays that per file, on import and on every read. node:zlib has no
 * public API for reuse, so this drives the handle of one `ZstdDecompress`
 * or `ZstdCompress` stream directly (the same calls its synchronous path
 * makes). That is internal: a probe on first use checks that it works and
 * round-trips right (not at load time: a command that compresses nothing,
 * such as an unchanged re-import, should not pay for it), and where it does not, {@linkcode decodeSmallFrame}
 * and {@linkcode encodeFrame} return `undefined` and callers keep the
 * one-shot functions.
 *
 * @module
 */
import {
  constants as zc,
  createZstdCompress,
  createZstdDecompress,
  zstdCompressSync,
  zstdDecompressSync,
} from "node:zlib";

/** Frames larger than this (decoded) are not decoded here: the scratch buffer's size. */
export const SMALL_FRAME_MAX = 64 * 1024;

/** The internals of a node:zlib stream this module drives. */
interface ZlibHandle {
  reset(): void;
  writeSync(
    flush: number,
    input: Uint8Array,
    inOff: number,
    inLen: number,
    out: Uint8Array,
    outOff: number,
    outLen: number,
  ): void;
}
interface ZlibInternals {
  close?(): void;
  _handle?: ZlibHandle;
  /** After `writeSync`: output bytes left free, input bytes left unread. */
  _writeState?: Uint32Array;
}

/** A reused stream handle and the state its `writeSync` reports into. */
interface Context {
  handle: ZlibHandle;
  state: Uint32Array;
  /** The stream the handle belongs to: closed when the context is dropped. */
  engine: ZlibInternals;
}

/** Frees a context that is no longer used (one that failed), instead of leaving it to the collector. */
function drop(ctx: Context | undefined): undefined {
  try {
    ctx?.engine.close?.();
  } catch {
    // Closing is only to free memory early.
  }
  return undefined;
}

/** A reusable context of `engine`; `undefined` where the internals are not as expected. */
function contextOf(engine: ZlibInternals): Context | undefined {
  const handle = engine._handle;
  const state = engine._writeState;
  if (
    !handle || typeof handle.reset !== "function" || typeof handle.writeSync !== "function" ||
    !(state instanceof Uint32Array) || state.length < 2
  ) {
    return undefined;
  }
  return { handle, state, engine };
}

function newContext(): Context | undefined {
  return contextOf(createZstdDecompress() as unknown as ZlibInternals);
}

/**
 * Runs `input` through `ctx` to the end of a frame (ZSTD_e_end) into
 * `out`, from a reset context; returns the bytes read and written. A call
 * may stop early (after a block of incompressible data): it goes on from
 * there as long as it makes progress, like node:zlib's own loop.
 */
function runFrame(
  ctx: Context,
  input: Uint8Array,
  out: Uint8Array,
): { read: number; written: number } {
  const { handle, state } = ctx;
  let read = 0;
  let written = 0;
  handle.reset();
  for (let calls = 0; read < input.length && calls < 64; calls++) {
    handle.writeSync(
      zc.ZSTD_e_end,
      input,
      read,
      input.length - read,
      out,
      written,
      out.length - written,
    );
    const consumed = input.length - read - state[1];
    const produced = out.length - written - state[0];
    read += consumed;
    written += produced;
    if ((consumed === 0 && produced === 0) || written === out.length) break;
  }
  return { read, written };
}

let context: Context | undefined;
// One extra byte: a frame that decodes to more than it should is seen.
const scratch = new Uint8Array(SMALL_FRAME_MAX + 1);

/** Why a frame did not decode to what it should. */
export class SmallFrameError extends Error {
  override name = "SmallFrameError";
}

/**
 * Decodes the zstd frame `frame` (or frames, one after the other, as
 * `zstdDecompressSync` does), which must hold exactly `size`
 * bytes (1 to {@linkcode SMALL_FRAME_MAX}), into a fresh buffer; throws
 * {@linkcode SmallFrameError} if it does not (a frame that is damaged,
 * truncated, longer or shorter). Returns `undefined` where the caller
 * must decode it the ordinary way: the reusable context is unavailable,
 * the size is out of range, or input is left over after the frame.
 */
export function decodeSmallFrame(
  frame: Uint8Array,
  size: number,
): Uint8Array<ArrayBuffer> | undefined {
  if (size === 0 || size > SMALL_FRAME_MAX || !decoderWorks()) return undefined;
  context ??= newContext();
  if (!context) return undefined;
  let read: number;
  let written: number;
  try {
    ({ read, written } = runFrame(context, frame, scratch.subarray(0, size + 1)));
  } catch (err) {
    // A context that failed may keep its error: the next call gets a fresh one.
    context = drop(context);
    throw new SmallFrameError(err instanceof Error ? err.message : String(err));
  }
  if (read !== frame.length) {
    // Input left over (bytes after the frame, more than listed, or a
    // context that stopped): zstdDecompressSync gives the answer instead.
    context = drop(context);
    return undefined;
  }
  if (written !== size) {
    context = drop(context);
    throw new SmallFrameError(`frame holds ${written} bytes or more, expected ${size}`);
  }
  return scratch.slice(0, size);
}

/** Whether the probe decoded a known frame right with a reused context (twice). */
function probe(): boolean {
  try {
    const sample = Uint8Array.from({ length: 3000 }, (_, i) => (i * 31) % 251);
    const frame = new Uint8Array(zstdCompressSync(sample));
    for (let i = 0; i < 2; i++) {
      const got = decodeSmallFrame(frame, sample.length);
      if (!got || got.length !== sample.length || got.some((b, j) => b !== sample[j])) {
        return false;
      }
    }
    return true;
  } catch {
    return false;
  }
}

/**
 * `probe`'s answer, found on the first call and remembered. The probe runs
 * through the very code that asks (it decodes or encodes a sample), so
 * while it runs the answer is true.
 */
function probedOnce(probe: () => boolean): () => boolean {
  let answer: boolean | undefined;
  return () => {
    if (answer === undefined) {
      answer = true;
      answer = probe();
    }
    return answer;
  };
}

/** Whether the reused decoding context works here, probed on first call. */
const decoderWorks = probedOnce(probe);

/** Largest input {@linkcode encodeFrame} compresses: the largest FastCDC chunk. */
export const ENCODE_FRAME_MAX = 512 * 1024;

/**
 * log2 of the window a frame of `n` bytes declares: 128 KiB for inputs up
 * to that (small files), 512 KiB up to {@linkcode ENCODE_FRAME_MAX}. Never
 * the level's own (2 MiB at level 3), which a streaming decoder would set
 * up per chunk.
 */
function windowLogFor(n: number): number {
  return n <= 128 * 1024 ? 17 : 19;
}

/** Compression contexts of this thread, by level and window. */
const encodeContexts = new Map<string, Context>();
/** Room for the zstd frame of any input of up to `n` bytes (zstd's own bound is lower). */
export function frameBound(n: number): number {
  return n + (n >> 7) + 1024;
}
/** Output of the reused contexts; grown once to {@linkcode ENCODE_FRAME_MAX}'s bound when a chunk that large comes. */
let encodeScratch = new Uint8Array(frameBound(SMALL_FRAME_MAX));

/**
 * `input` (1 to {@linkcode ENCODE_FRAME_MAX} bytes) as one zstd frame at
 * `level`, in a fresh buffer of its exact size, compressed with this
 * thread's reused context; `undefined` where the caller must use
 * `zstdCompressSync` (the context is unavailable, the size is out of
 * range, the context failed). The frame does not record the content
 * size, which readers of chunks know from the index and streaming
 * decoders do not need; it declares a window of 128 KiB or 512 KiB
 * ({@linkcode windowLogFor}). The output buffer holds zstd's worst case
 * for the input, so a frame is always finished in one call; room left
 * over after it is the proof.
 *
 * Reuse pays for large chunks too: measured over 256 KiB chunks of
 * `/usr/lib` bytes at level 3, 295-299 MB/s against 226-263 MB/s for
 * `zstdCompressSync`, which sets up and frees its tables per call.
 */
export function encodeFrame(
  input: Uint8Array,
  level: number,
): Uint8Array<ArrayBuffer> | undefined {
  if (input.length === 0 || input.length > ENCODE_FRAME_MAX || !encoderWorks()) return undefined;
  const windowLog = windowLogFor(input.length);
  const key = `${level}/${windowLog}`;
  let ctx = encodeContexts.get(key);
  if (!ctx) {
    const engine = createZstdCompress({
      params: { [zc.ZSTD_c_compressionLevel]: level, [zc.ZSTD_c_windowLog]: windowLog },
    });
    ctx = contextOf(engine as unknown as ZlibInternals);
    if (!ctx) return undefined;
    encodeContexts.set(key, ctx);
  }
  if (encodeScratch.length < frameBound(input.length)) {
    encodeScratch = new Uint8Array(frameBound(ENCODE_FRAME_MAX));
  }
  try {
    const { read, written } = runFrame(ctx, input, encodeScratch);
    if (read === input.length && written < encodeScratch.length) {
      return encodeScratch.slice(0, written);
    }
  } catch {
    // Fall through: the one-shot function compresses it, and reports what is wrong.
  }
  // A context that failed or stopped may keep its state: the next call gets a fresh one.
  drop(ctx);
  encodeContexts.delete(key);
  return undefined;
}

/** Whether frames from the reused compression context decode to their input (twice). */
function probeEncoder(): boolean {
  try {
    const sample = Uint8Array.from({ length: 3000 }, (_, i) => (i * 31) % 251);
    for (let i = 0; i < 2; i++) {
      const frame = encodeFrame(sample, 3);
      if (!frame) return false;
      const back = zstdDecompressSync(frame);
      if (back.length !== sample.length || back.some((b, j) => b !== sample[j])) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/** Whether the reused compression contexts work here, probed on first call. */
const encoderWorks = probedOnce(probeEncoder);

/** Whether chunks are compressed with a reused context in this thread. */
export function frameEncoderAvailable(): boolean {
  return encoderWorks();
}

/** Whether small frames are decoded with a reused context in this thread. */
export function smallFrameDecoderAvailable(): boolean {
  return decoderWorks();
}
