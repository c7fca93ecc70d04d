/**
 * One zstd decompression context per thread, reused for every small chunk
 * of known size (docs/storage.md#reading-small-chunks).
 *
 * `zstdDecompressSync` creates and frees a zstd context per call: ~28 µs in
 * Deno 2.9.6, against ~1 µs to decode a 4 KiB frame with a context reset
 * and reused. A store path of thousands of small files pays that per file.
 * node:zlib has no public API for reuse, so this drives the handle of one
 * `ZstdDecompress` stream directly (the same calls its synchronous path
 * makes). That is internal: a probe at load time checks that it works and
 * decodes right, and where it does not, {@linkcode decodeSmallFrame}
 * reports it is unavailable and callers keep `zstdDecompressSync`.
 *
 * @module
 */
import { constants as zc, createZstdDecompress, zstdCompressSync } from "node:zlib";

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
  _handle?: ZlibHandle;
  /** After `writeSync`: output bytes left free, input bytes left unread. */
  _writeState?: Uint32Array;
}

/** A reusable context; `undefined` where the internals are not as expected. */
function newContext(): { handle: ZlibHandle; state: Uint32Array } | undefined {
  const engine = createZstdDecompress() as unknown as ZlibInternals;
  const handle = engine._handle;
  const state = engine._writeState;
  if (
    !handle || typeof handle.reset !== "function" || typeof handle.writeSync !== "function" ||
    !(state instanceof Uint32Array) || state.length < 2
  ) {
    return undefined;
  }
  return { handle, state };
}

let context: ReturnType<typeof newContext>;
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
  if (!available || size === 0 || size > SMALL_FRAME_MAX) return undefined;
  context ??= newContext();
  if (!context) return undefined;
  const { handle, state } = context;
  const room = size + 1;
  let read = 0;
  let written = 0;
  try {
    handle.reset();
    // A call may stop early (after a block of incompressible data): go on
    // from there as long as it makes progress, like node:zlib's own loop.
    for (let calls = 0; read < frame.length && calls < 64; calls++) {
      handle.writeSync(
        zc.ZSTD_e_end,
        frame,
        read,
        frame.length - read,
        scratch,
        written,
        room - written,
      );
      const consumed = frame.length - read - state[1];
      const produced = room - written - state[0];
      read += consumed;
      written += produced;
      if ((consumed === 0 && produced === 0) || written === room) break;
    }
  } catch (err) {
    // A context that failed may keep its error: the next call gets a fresh one.
    context = undefined;
    throw new SmallFrameError(err instanceof Error ? err.message : String(err));
  }
  if (read !== frame.length) {
    // Input left over (bytes after the frame, more than listed, or a
    // context that stopped): zstdDecompressSync gives the answer instead.
    context = undefined;
    return undefined;
  }
  if (written !== size) {
    context = undefined;
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

let available = true;
available = probe();

/** Whether small frames are decoded with a reused context in this thread. */
export function smallFrameDecoderAvailable(): boolean {
  return available;
}
