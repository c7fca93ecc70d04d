/**
 * Compression of NAR files as a Nix binary cache stores them: streaming
 * zstd for NARs we serve, and decompression of whatever `nix copy --to`
 * uploads.
 *
 * Uploads are recognised by their magic bytes, not by the URL: Nix names
 * gzip uploads plain `.nar`, and the narinfo naming the compression only
 * arrives after the NAR. gzip and brotli are decoded by node:zlib. xz (Nix's
 * default for HTTP caches) and bzip2 have no decoder in the runtime, and
 * Deno 2.9's zstd decoder throws some corruption errors (e.g. a bad frame
 * checksum in the final flush) outside the stream, as an uncaught exception
 * that would end the process; these three go through the `xz`, `bzip2` and
 * `zstd` tools (Debian packages xz-utils, bzip2, zstd) when installed.
 *
 * @module
 */
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import {
  createBrotliCompress,
  createBrotliDecompress,
  createGunzip,
  createGzip,
  createZstdCompress,
} from "node:zlib";
import type { Transform } from "node:stream";
import { concatBytes } from "../castore/digest.ts";
import { errorMessage } from "../errors.ts";

/** An upload that cannot be decoded (unknown format, missing tool, corrupt data). */
export class DecompressError extends Error {
  override name = "DecompressError";
  constructor(message: string, readonly unsupported = false) {
    super(message);
  }
}

/** A compressed-file format we recognise. */
export type Codec = "none" | "zstd" | "xz" | "bzip2" | "gzip" | "br";

const NAR_MAGIC = Uint8Array.from([13, 0, 0, 0, 0, 0, 0, 0, ...new TextEncoder().encode("nix-")]);
const MAGICS: Array<[Codec, Uint8Array]> = [
  ["none", NAR_MAGIC],
  ["zstd", Uint8Array.from([0x28, 0xb5, 0x2f, 0xfd])],
  ["xz", Uint8Array.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])],
  ["bzip2", Uint8Array.from([0x42, 0x5a, 0x68])],
  ["gzip", Uint8Array.from([0x1f, 0x8b])],
];
const SNIFF_LEN = Math.max(...MAGICS.map(([, m]) => m.length));

function startsWith(data: Uint8Array, prefix: Uint8Array): boolean {
  return data.length >= prefix.length && prefix.every((b, i) => data[i] === b);
}

/**
 * Runs a node:zlib transform over a stream, yielding its output. A failure
 * of the transform itself (corrupt data) becomes a {@linkcode DecompressError};
 * a failure of `input` is rethrown as is.
 */
async function* throughTransform(
  input: AsyncIterable<Uint8Array>,
  transform: Transform,
  what: string,
): AsyncGenerator<Uint8Array> {
  let inputFailed = false;
  let inputError: unknown;
  const source = async function* () {
    try {
      yield* input;
    } catch (err) {
      inputFailed = true;
      inputError = err;
      throw err;
    }
  };
  const done = pipeline(Readable.from(source(), { objectMode: false }), transform);
  done.catch(() => {}); // the same error ends the iteration below
  try {
    for await (const chunk of transform) yield new Uint8Array(chunk);
    await done;
  } catch (err) {
    if (inputFailed) throw inputError;
    throw new DecompressError(`${what}: ${errorMessage(err)}`);
  } finally {
    transform.destroy();
  }
}

/** Pipes a stream through an external tool (`<tool> -dc` decompresses). */
async function* throughTool(
  input: AsyncIterable<Uint8Array>,
  tool: string,
  args = ["-dc"],
): AsyncGenerator<Uint8Array> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(tool, {
      args,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    throw new DecompressError(
      `${tool} uploads need the ${tool} tool, which is unavailable (${errorMessage(err)}); ` +
        `upload with ?compression=zstd or ?compression=none instead`,
      true,
    );
  }
  const stderr = new Response(child.stderr).text();
  const writer = child.stdin.getWriter();
  const feeding = (async () => {
    try {
      for await (const chunk of input) await writer.write(chunk);
      await writer.close();
    } catch (err) {
      await writer.abort(err).catch(() => {});
      throw err;
    }
  })();
  feeding.catch(() => {}); // awaited below
  let finished = false;
  try {
    for await (const chunk of child.stdout) yield chunk;
    const status = await child.status;
    await feeding;
    if (!status.success) {
      throw new DecompressError(`${tool}: ${(await stderr).trim() || `exit ${status.code}`}`);
    }
    finished = true;
  } finally {
    if (!finished) {
      try {
        child.kill();
      } catch { /* already gone */ }
      await child.status;
      await feeding.catch(() => {});
    }
    await stderr.catch(() => {});
  }
}

/**
 * Reads the first bytes of `input` to tell its format; `hint` (`br`, from
 * a `.br` URL) covers brotli, which has no magic bytes. Yields the
 * decompressed NAR bytes and reports the codec through `onCodec`.
 */
export async function* decompressUpload(
  input: AsyncIterable<Uint8Array>,
  hint: Codec | undefined,
  onCodec?: (codec: Codec) => void,
): AsyncGenerator<Uint8Array> {
  const it = input[Symbol.asyncIterator]();
  const head: Uint8Array[] = [];
  let headLen = 0;
  let ended = false;
  while (headLen < SNIFF_LEN) {
    const r = await it.next();
    if (r.done) {
      ended = true;
      break;
    }
    head.push(r.value);
    headLen += r.value.length;
  }
  const first = concatBytes(head);
  const rest: AsyncIterable<Uint8Array> = {
    async *[Symbol.asyncIterator]() {
      if (first.length) yield first;
      if (ended) return;
      while (true) {
        const r = await it.next();
        if (r.done) return;
        yield r.value;
      }
    },
  };
  let codec: Codec | undefined = hint === "br" ? "br" : undefined;
  for (const [c, magic] of MAGICS) {
    if (!codec && startsWith(first, magic)) codec = c;
  }
  // Anything else goes to the NAR parser, which reports what is wrong with it.
  codec ??= "none";
  onCodec?.(codec);
  switch (codec) {
    case "none":
      yield* rest;
      return;
    case "gzip":
      yield* throughTransform(rest, createGunzip(), "gzip data");
      return;
    case "br":
      yield* throughTransform(rest, createBrotliDecompress(), "brotli data");
      return;
    case "zstd":
    case "xz":
    case "bzip2":
      yield* throughTool(rest, codec);
      return;
  }
}

/** zstd-compresses a stream (for `.nar.zst` downloads), with backpressure. */
export function compressZstd(input: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  return throughTransform(input, createZstdCompress(), "zstd compression");
}

/** Whether {@linkcode compressAs} can produce Nix's compression `name`. */
export function isCodec(name: string): name is Codec {
  return ["none", "zstd", "xz", "bzip2", "gzip", "br"].includes(name);
}

/**
 * Compresses a NAR stream with `codec` (Nix's names), to serve an uploaded
 * NAR URL in the compression its narinfo names. xz and bzip2 go through
 * their tools, at their default levels.
 */
export function compressAs(
  codec: Codec,
  input: AsyncIterable<Uint8Array>,
): AsyncGenerator<Uint8Array> {
  switch (codec) {
    case "none":
      return (async function* () {
        yield* input;
      })();
    case "zstd":
      return compressZstd(input);
    case "gzip":
      return throughTransform(input, createGzip(), "gzip compression");
    case "br":
      return throughTransform(input, createBrotliCompress(), "brotli compression");
    case "xz":
    case "bzip2":
      return throughTool(input, codec, ["-c"]);
  }
}
