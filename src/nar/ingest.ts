/**
 * Strict streaming NAR reader that stores what it reads: file contents go
 * to the BlobService, directories (leaves first) to one DirectoryService
 * multi-put (docs/compatibility.md#ingesting-a-nar).
 *
 * The NAR is hashed (SHA-256) and counted as it is read. Anything a strict
 * reader must refuse (docs/compatibility.md#nar-encoding) fails the whole ingestion with
 * {@linkcode NarParseError}; the directory upload is then never closed, so no
 * directory of a bad NAR becomes reachable. Blobs uploaded before the error
 * stay behind: they are content-addressed and harmless.
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { type BlobService, writeWholeBlob } from "../castore/blob/service.ts";
import type { DirectoryPutter, DirectoryService } from "../castore/directory/service.ts";
import { b3Display, blake3, bytesEqual, compareBytes, type Digest } from "../castore/digest.ts";
import {
  type Directory,
  directoryDigest,
  directorySize,
  emptyDirectory,
} from "../castore/directory.ts";
import { InvalidRequestError, StorageError } from "../errors.ts";
import { isValidName, type NodeVariant, quoteBytes } from "../castore/node.ts";
import { MAX_NAME_LEN, MAX_TARGET_LEN, padLen, WORD } from "./wire.ts";
import { JobSet } from "../concurrency.ts";

/** Files below this size are buffered and uploaded in the background. */
export const SMALL_FILE = 1024 * 1024;
// Bounds on background uploads of small files.
const INFLIGHT_BYTES = 128 * 1024 * 1024;
const INFLIGHT_COUNT = 64;
// Keywords are at most 13 bytes ("nix-archive-1"); longer strings are not keywords.
const MAX_KEYWORD_LEN = 16;

/** The NAR is malformed (see docs/compatibility.md#nar-encoding). */
export class NarParseError extends InvalidRequestError {
  override name = "NarParseError";
  constructor(message: string, readonly offset?: number) {
    super(
      offset === undefined
        ? `invalid NAR: ${message}`
        : `invalid NAR at byte ${offset}: ${message}`,
    );
  }
}

/** Result of {@linkcode ingestNar}. */
export interface IngestedNar {
  /** The root node, with an empty name. */
  node: NodeVariant;
  /** Number of bytes of the NAR. */
  narSize: bigint;
  /** SHA-256 of the NAR. */
  narSha256: Uint8Array;
}

const td = new TextDecoder();
const show = (bytes: Uint8Array) => quoteBytes(bytes.subarray(0, 64));

/** Pulls exact byte counts out of a stream of pieces, hashing everything received. */
class Reader {
  readonly #it: AsyncIterator<Uint8Array>;
  readonly #hash: Hash = createHash("sha256");
  #buf: Uint8Array = new Uint8Array(0);
  #pos = 0;
  /** Bytes consumed so far (the offset of the next byte). */
  offset = 0;
  #received = 0;
  #eof = false;

  constructor(stream: AsyncIterable<Uint8Array>) {
    this.#it = stream[Symbol.asyncIterator]();
  }

  get received(): number {
    return this.#received;
  }

  sha256(): Uint8Array {
    return new Uint8Array(this.#hash.digest());
  }

  // Loads the next non-empty piece; false at the end of the stream.
  async #more(): Promise<boolean> {
    while (!this.#eof) {
      const r = await this.#it.next();
      if (r.done) {
        this.#eof = true;
        break;
      }
      if (r.value.length === 0) continue;
      this.#hash.update(r.value);
      this.#received += r.value.length;
      this.#buf = r.value;
      this.#pos = 0;
      return true;
    }
    return false;
  }

  #truncated(): NarParseError {
    return new NarParseError("unexpected end of stream (truncated NAR)", this.#received);
  }

  /**
   * The next `n` bytes. A view into the input when they lie in one piece
   * (valid until the next read), else a fresh copy; `copy` forces a copy.
   */
  async read(n: number, copy = false): Promise<Uint8Array> {
    const avail = this.#buf.length - this.#pos;
    if (avail >= n) {
      const view = this.#buf.subarray(this.#pos, this.#pos + n);
      this.#pos += n;
      this.offset += n;
      return copy ? view.slice() : view;
    }
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      if (this.#pos === this.#buf.length && !(await this.#more())) throw this.#truncated();
      const take = Math.min(n - at, this.#buf.length - this.#pos);
      out.set(this.#buf.subarray(this.#pos, this.#pos + take), at);
      this.#pos += take;
      at += take;
      this.offset += take;
    }
    return out;
  }

  /** The next `n` bytes as views into the input pieces (no copies). */
  async *stream(n: bigint): AsyncGenerator<Uint8Array> {
    let left = n;
    while (left > 0n) {
      if (this.#pos === this.#buf.length && !(await this.#more())) throw this.#truncated();
      const avail = this.#buf.length - this.#pos;
      const take = left < BigInt(avail) ? Number(left) : avail;
      const view = this.#buf.subarray(this.#pos, this.#pos + take);
      this.#pos += take;
      this.offset += take;
      left -= BigInt(take);
      yield view;
    }
  }

  /** Whether the stream has ended exactly here. */
  async atEnd(): Promise<boolean> {
    return this.#pos === this.#buf.length && !(await this.#more());
  }
}

/** The NAR primitives on top of {@linkcode Reader}. */
class Primitives {
  constructor(readonly r: Reader) {}

  fail(message: string, at = this.r.offset): never {
    throw new NarParseError(message, at);
  }

  async u64(): Promise<bigint> {
    const b = await this.r.read(8);
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
  }

  async padding(len: bigint): Promise<void> {
    const n = padLen(Number(len % 8n));
    if (n === 0) return;
    const at = this.r.offset;
    const pad = await this.r.read(n);
    if (pad.some((x) => x !== 0)) this.fail("non-zero padding", at);
  }

  /** A `str()` of at most `max` bytes; `copy` returns bytes that outlive the next read. */
  async bytes(max: number, what: string, copy = false): Promise<Uint8Array> {
    const at = this.r.offset;
    const len = await this.u64();
    if (len > BigInt(max)) this.fail(`${what} too long (${len} bytes, at most ${max})`, at);
    const b = await this.r.read(Number(len), copy);
    await this.padding(len);
    return b;
  }

  /** The next keyword, compared against the expected ones by the caller. */
  keyword(): Promise<Uint8Array> {
    return this.bytes(MAX_KEYWORD_LEN, "keyword");
  }

  async expect(word: Uint8Array): Promise<void> {
    const at = this.r.offset;
    const got = await this.keyword();
    if (!isWord(got, word)) this.fail(`expected ${wordText(word)}, got ${show(got)}`, at);
  }
}

// `word` is a str()-encoded keyword from WORD; `got` the raw bytes read.
function isWord(got: Uint8Array, word: Uint8Array): boolean {
  const len = word[0];
  return got.length === len && bytesEqual(got, word.subarray(8, 8 + len));
}

function wordText(word: Uint8Array): string {
  return JSON.stringify(td.decode(word.subarray(8, 8 + word[0])));
}

/**
 * Uploads a small file read whole (with `copy`, so no later read reuses
 * its bytes), checking the digest the caller computed.
 */
async function uploadAll(blob: BlobService, data: Uint8Array, expected: Digest): Promise<void> {
  const got = await writeWholeBlob(blob, data);
  if (!bytesEqual(got, expected)) {
    throw new StorageError(
      `blob service returned digest ${b3Display(got)}, expected ${b3Display(expected)}`,
    );
  }
}

/** Uploads `pieces` as one blob; a failed write aborts the writer, leaving nothing. */
async function uploadStream(
  blob: BlobService,
  pieces: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
): Promise<Digest> {
  const w = blob.openWrite();
  try {
    for await (const piece of pieces) await w.write(piece);
  } catch (err) {
    await w.abort().catch(() => {});
    throw err;
  }
  return await w.close();
}

/** One directory being read: its children so far and the entry being parsed. */
interface Frame {
  directory: Directory;
  lastName?: Uint8Array;
  entryName: Uint8Array;
}

function attach(frame: Frame, child: NodeVariant): void {
  const name = frame.entryName;
  // Names arrive in ascending order, so appending keeps every list sorted.
  switch (child.$case) {
    case "directory":
      frame.directory.directories.push({ ...child.value, name });
      break;
    case "file":
      frame.directory.files.push({ ...child.value, name });
      break;
    case "symlink":
      frame.directory.symlinks.push({ ...child.value, name });
      break;
  }
}

/**
 * Reads a NAR from `stream`, uploading file contents to `blob` and
 * directories to one multi-put of `dir`; returns the root node (empty name)
 * with the NAR's size and SHA-256. The stream's pieces must not be reused by
 * the producer after being yielded.
 *
 * Throws {@linkcode NarParseError} for malformed input (bad token, order,
 * name, target, padding, truncation, trailing data); service errors pass
 * through. Nothing is made reachable on failure (see the module doc).
 */
export async function ingestNar(
  stream: AsyncIterable<Uint8Array>,
  blob: BlobService,
  dir: DirectoryService,
): Promise<IngestedNar> {
  const r = new Reader(stream);
  const p = new Primitives(r);
  // Small files upload in the background, bounded in count and in bytes
  // held; the first failed upload fails the ingestion at the next check.
  const uploads = new JobSet({ maxJobs: INFLIGHT_COUNT, maxWeight: INFLIGHT_BYTES });
  let putter: DirectoryPutter | undefined;
  const stack: Frame[] = [];

  await p.expect(WORD.magic);
  await p.expect(WORD.open);
  await p.expect(WORD.type);

  let root: NodeVariant | undefined;
  // Each turn: just after `"(" "type"`, read one node body.
  while (root === undefined) {
    let done: NodeVariant | undefined;
    const at = r.offset;
    const kind = await p.keyword();
    if (isWord(kind, WORD.symlink)) {
      await p.expect(WORD.target);
      const tAt = r.offset;
      const target = await p.bytes(MAX_TARGET_LEN, "symlink target", true);
      if (target.length === 0) p.fail("empty symlink target", tAt);
      if (target.includes(0)) p.fail(`symlink target ${show(target)} contains NUL`, tAt);
      await p.expect(WORD.close);
      done = { $case: "symlink", value: { name: new Uint8Array(0), target } };
    } else if (isWord(kind, WORD.regular)) {
      let executable = false;
      let wAt = r.offset;
      let word = await p.keyword();
      if (isWord(word, WORD.executable)) {
        executable = true;
        await p.expect(WORD.empty);
        wAt = r.offset;
        word = await p.keyword();
      }
      if (!isWord(word, WORD.contents)) {
        p.fail(`expected "contents", got ${show(word)}`, wAt);
      }
      const size = await p.u64();
      let digest: Digest;
      if (size < BigInt(SMALL_FILE)) {
        const data = await r.read(Number(size), true);
        digest = blake3(data);
        await uploads.add(() => uploadAll(blob, data, digest), data.length);
      } else {
        digest = await uploadStream(blob, r.stream(size));
      }
      await p.padding(size);
      await p.expect(WORD.close);
      done = { $case: "file", value: { name: new Uint8Array(0), digest, size, executable } };
    } else if (isWord(kind, WORD.directory)) {
      stack.push({ directory: emptyDirectory(), entryName: new Uint8Array(0) });
    } else {
      p.fail(`unknown node type ${show(kind)}`, at);
    }

    // Close finished nodes upwards until a new entry starts or the root is done.
    while (true) {
      if (done !== undefined) {
        const parent = stack[stack.length - 1];
        if (!parent) {
          root = done;
          break;
        }
        await p.expect(WORD.close); // end of the entry
        attach(parent, done);
        done = undefined;
      }
      const frame = stack[stack.length - 1];
      const tAt = r.offset;
      const token = await p.keyword();
      if (isWord(token, WORD.close)) {
        stack.pop();
        uploads.check();
        const d = frame.directory;
        putter ??= dir.putMultiple();
        await putter.put(d);
        done = {
          $case: "directory",
          value: { name: new Uint8Array(0), digest: directoryDigest(d), size: directorySize(d) },
        };
        continue;
      }
      if (!isWord(token, WORD.entry)) p.fail(`expected "entry" or ")", got ${show(token)}`, tAt);
      await p.expect(WORD.open);
      await p.expect(WORD.name);
      const nAt = r.offset;
      const name = await p.bytes(MAX_NAME_LEN, "entry name", true);
      if (!isValidName(name)) p.fail(`invalid entry name ${show(name)}`, nAt);
      if (frame.lastName && compareBytes(frame.lastName, name) >= 0) {
        p.fail(
          `entry ${show(name)} does not sort after ${show(frame.lastName)} (unsorted or duplicate)`,
          nAt,
        );
      }
      frame.lastName = name;
      frame.entryName = name;
      await p.expect(WORD.node);
      await p.expect(WORD.open);
      await p.expect(WORD.type);
      break; // read the entry's node body
    }
  }

  if (!(await r.atEnd())) p.fail("trailing data after the NAR");
  await uploads.drain();
  if (putter) {
    const rootDigest = await putter.close();
    if (root.$case === "directory" && !bytesEqual(rootDigest, root.value.digest)) {
      throw new StorageError(
        `directory service returned root ${b3Display(rootDigest)}, expected ${
          b3Display(root.value.digest)
        }`,
      );
    }
  }
  return { node: root, narSize: BigInt(r.received), narSha256: r.sha256() };
}
