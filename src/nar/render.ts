/**
 * Streaming NAR renderer: turns a castore root node into the NAR Nix would
 * produce for the same tree (docs/compatibility.md#rendering-a-castore-node),
 * reading blobs and directories from
 * the services as it goes.
 *
 * Memory stays bounded whatever the file sizes: blob pieces flow straight
 * through, small tokens are batched into pieces of at most
 * {@linkcode PIECE_SIZE} bytes, and only small files are read ahead (a few
 * MiB in total) so that many-small-files trees are not bound by per-blob
 * latency. The directory closure is fetched with one `getRecursive` call,
 * which also works for backends that only serve upload roots by digest.
 *
 * @module
 */
import type { BlobService } from "../castore/blob/service.ts";
import { releaseWhole } from "../castore/blob/chunk_codec.ts";
import type { DirectoryService } from "../castore/directory/service.ts";
import { B3_LEN, b3Display, type Digest, digestKey } from "../castore/digest.ts";
import { type Directory, directoryDigest, directoryNodes } from "../castore/directory.ts";
import { CorruptionError } from "../errors.ts";
import { ByteBudget } from "../concurrency.ts";
import type { FileNode, NodeVariant } from "../castore/node.ts";
import type { NarSummary } from "./calculation.ts";
import { StreamHasher } from "./hasher.ts";
import { concat, padLen, TOK, TokenWriter } from "./wire.ts";

/** Upper bound of the pieces the renderer yields (except blob pieces passed through). */
export const PIECE_SIZE = 128 * 1024;
// Blob pieces at least this large are yielded as they are, without copying.
const PASS_THROUGH = 32 * 1024;
// Read-ahead limits for small files. The count is high because a burst of
// read-ahead (half of it) is what a blob service gets to look up or fetch
// together: over a daemon, a batch call of 32 files cost the bridge more in
// call setup than 128 (CPU of 3 NARs of 20,000 files: 5.0 -> 4.2 s).
const PREFETCH_FILE_MAX = 1024 * 1024;
const PREFETCH_BYTES = 16 * 1024 * 1024;
const PREFETCH_COUNT = 256;

/**
 * Bytes of small files read ahead by all renderings in this process
 * together. Each may read up to {@linkcode PREFETCH_BYTES} ahead, but a
 * binary cache serving hundreds of slow downloads would hold that much
 * per download; beyond this budget a rendering reads its next files when
 * their turn comes (slower for trees of many small files, never stalled).
 */
export const NAR_READ_AHEAD_BYTES = 128 * 1024 * 1024;
/** The budget every rendering in this process shares (see {@linkcode NAR_READ_AHEAD_BYTES}). */
export const narReadAhead: ByteBudget = new ByteBudget(NAR_READ_AHEAD_BYTES);

/** What a rendering failure was about (upstream's io::ErrorKind where it has one). */
export type NarRenderErrorKind =
  | "InvalidDigest"
  | "NotFound"
  | "DirectoryNotFound"
  | "UnexpectedEof"
  | "InvalidInput";

/** The node cannot be rendered: missing or inconsistent data in the services. */
export class NarRenderError extends CorruptionError {
  override name = "NarRenderError";
  constructor(readonly kind: NarRenderErrorKind, message: string) {
    super(message);
  }
}

/** The parts of the BlobService the renderer uses. */
export type BlobSource = Pick<BlobService, "openRead" | "readWhole">;
/** The parts of the DirectoryService the renderer uses. */
export type DirectorySource = Pick<DirectoryService, "get" | "getRecursive">;

/** File contents to copy, from byte `from` of the blob on (non-zero only where a range starts). */
interface FilePart {
  file: FileNode;
  from: number;
}

// The renderer's plan: token bytes, interleaved with file contents to copy.
type Item = Uint8Array | FilePart;

const CLOSE_ENTRY = concat([TOK.close, TOK.close]);

function checkDigest(digest: Uint8Array): void {
  if (digest.length !== B3_LEN) {
    throw new NarRenderError("InvalidDigest", `invalid digest len ${digest.length} in file node`);
  }
}

/** Directories of one closure, fetched in one stream, with single gets as a fallback. */
class DirectoryCache {
  readonly #dirs = new Map<string, Directory>();
  constructor(private readonly source: DirectorySource) {}

  async prefetch(root: Digest): Promise<void> {
    for await (const d of this.source.getRecursive(root)) {
      this.#dirs.set(digestKey(directoryDigest(d)), d);
    }
  }

  /** The directory if it is here already. */
  cached(digest: Digest): Directory | undefined {
    return this.#dirs.get(digestKey(digest));
  }

  /** Fetches a directory the closure did not bring. */
  async load(digest: Digest): Promise<void> {
    const d = await this.source.get(digest);
    if (!d) {
      throw new NarRenderError("DirectoryNotFound", `directory ${b3Display(digest)} not found`);
    }
    this.#dirs.set(digestKey(digest), d);
  }
}

/** A directory the plan needs and the cache does not have: load it, then continue. */
interface NeedDirectory {
  need: Digest;
}

type PlanStep = Item | NeedDirectory;

/**
 * Walks the tree depth-first in NAR order (children in merged name order)
 * and yields the token bytes and the file nodes whose contents go between.
 * The tokens between two files go out as one piece (a TokenWriter view), and the walk is
 * synchronous (directories come from the prefetched closure; a missing one
 * is asked for with a {@linkcode NeedDirectory} step): a tree of many small
 * files costs two or three steps per file, not eight async ones. An
 * explicit stack keeps deep trees off the call stack.
 */
function* plan(root: NodeVariant, dirs: DirectoryCache): Generator<PlanStep> {
  const tokens = new TokenWriter();
  tokens.bytes(TOK.header);
  const stack: { children: NodeVariant[]; next: number }[] = [];
  // The node whose tokens come next: the root, then each child in turn.
  let node: NodeVariant | undefined = root;
  while (true) {
    if (node) {
      const leafEnd = stack.length > 0 ? CLOSE_ENTRY : TOK.close;
      switch (node.$case) {
        case "symlink":
          tokens.bytes(TOK.symlink);
          tokens.str(node.value.target);
          tokens.bytes(leafEnd);
          break;
        case "file": {
          const f = node.value;
          checkDigest(f.digest);
          tokens.bytes(f.executable ? TOK.executable : TOK.regular);
          tokens.u64(f.size);
          yield tokens.take();
          yield { file: f, from: 0 };
          tokens.zeros(padLen(Number(f.size % 8n)));
          tokens.bytes(leafEnd);
          break;
        }
        case "directory": {
          checkDigest(node.value.digest);
          let d = dirs.cached(node.value.digest);
          while (!d) {
            yield { need: node.value.digest };
            d = dirs.cached(node.value.digest);
          }
          tokens.bytes(TOK.directory);
          stack.push({ children: [...directoryNodes(d)], next: 0 });
          break;
        }
      }
      node = undefined;
    }
    if (stack.length === 0) break;
    const top = stack[stack.length - 1];
    if (top.next < top.children.length) {
      node = top.children[top.next++];
      tokens.bytes(TOK.entryOpen);
      tokens.str(node.value.name);
      tokens.bytes(TOK.nodeOpen);
    } else {
      stack.pop();
      tokens.bytes(stack.length > 0 ? CLOSE_ENTRY : TOK.close);
    }
    // Long runs without files (a directory of symlinks) go out in pieces,
    // below PIECE_SIZE even with the largest entry (names and targets are
    // limited to a few KiB).
    if (tokens.pending >= PIECE_SIZE / 2) yield tokens.take();
  }
  yield tokens.take();
}

/** Collects small byte strings into pieces of up to {@linkcode PIECE_SIZE}. */
class Batcher {
  #buf: Uint8Array<ArrayBuffer> = new Uint8Array(0);
  #len = 0;

  /**
   * Adds `bytes`, appending the pieces that are full to `done`; large
   * inputs pass through after what is pending.
   */
  push(bytes: Uint8Array, done: Uint8Array[]): void {
    if (bytes.length === 0) return;
    if (bytes.length >= PASS_THROUGH) {
      if (this.#len > 0) done.push(this.take());
      done.push(bytes);
      return;
    }
    if (this.#len + bytes.length > this.#buf.length) {
      if (this.#len > 0) done.push(this.take());
      if (this.#buf.length < PIECE_SIZE) this.#buf = new Uint8Array(PIECE_SIZE);
    }
    this.#buf.set(bytes, this.#len);
    this.#len += bytes.length;
  }

  /** Whether bytes are pending. */
  get pending(): boolean {
    return this.#len > 0;
  }

  /**
   * Hands out the pending bytes as a piece that spans a buffer of its own,
   * which whoever sends it may free once sent (`releaseWhole`, as the HTTP
   * layer does); the next bytes go to a fresh buffer.
   *
   * A piece used to be a view into its 128 KiB buffer, which `releaseWhole`
   * leaves alone, so every piece but a full one waited for the collector:
   * serving a NAR of small files, nearly all of them. In `bench readpath`,
   * 8 downloads at once of its NAR of 20,000 files then took the daemon to
   * 695-921 MiB; now 384-394 MiB (docs/architecture.md#narbridge).
   * Shrinking the buffer with `transfer` costs about 2 µs per piece.
   */
  take(): Uint8Array {
    const out = this.#len === this.#buf.length
      ? this.#buf
      : new Uint8Array(this.#buf.buffer.transfer(this.#len));
    this.#buf = new Uint8Array(0);
    this.#len = 0;
    return out;
  }
}

async function openBlob(
  blob: BlobSource,
  f: FileNode,
  from: number,
): Promise<AsyncIterable<Uint8Array>> {
  const reader = await blob.openRead(f.digest, from, Number(f.size));
  if (!reader) {
    throw new NarRenderError("NotFound", `blob with digest ${b3Display(f.digest)} not found`);
  }
  return reader;
}

/**
 * Yields exactly `f.size - from` bytes of the blob from byte `from` on,
 * failing if it is shorter or longer than that.
 */
async function* blobContents(
  blob: BlobSource,
  f: FileNode,
  from = 0,
): AsyncGenerator<Uint8Array> {
  const want = f.size - BigInt(from);
  let got = 0n;
  for await (const piece of await openBlob(blob, f, from)) {
    got += BigInt(piece.length);
    if (got > want) throw lengthError(f, from, got);
    if (piece.length > 0) yield piece;
  }
  if (got < want) throw lengthError(f, from, got);
}

/** The blob of `f` read from `from` on gave `got` bytes, not `f.size - from`. */
function lengthError(f: FileNode, from: number, got: bigint): NarRenderError {
  const want = f.size - BigInt(from);
  return got > want
    ? new NarRenderError(
      "InvalidInput",
      `reader contained more data than specified size (${want}) for blob ${b3Display(f.digest)}`,
    )
    : new NarRenderError(
      "UnexpectedEof",
      `unexpected EOF: blob ${b3Display(f.digest)} has ${
        got + BigInt(from)
      } bytes, node says ${f.size}`,
    );
}

/**
 * A small file's contents, whole: {@linkcode blobContents} without its
 * generator, which cost more than the read itself for files of a few KiB.
 * A backend that reads small blobs whole gets one call per file.
 */
function readSmall(blob: BlobSource, part: FilePart): Promise<Uint8Array[]> {
  if (!blob.readWhole) return readSmallStreamed(blob, part);
  return blob.readWhole(part.file.digest, Number(part.file.size)).then((whole) => {
    if (!whole) return readSmallStreamed(blob, part);
    if (whole.length !== Number(part.file.size)) {
      throw lengthError(part.file, part.from, BigInt(whole.length - part.from));
    }
    if (part.from === 0) return [whole];
    return part.from < whole.length ? [whole.subarray(part.from)] : [];
  });
}

/** {@linkcode readSmall} through `openRead`. */
async function readSmallStreamed(blob: BlobSource, part: FilePart): Promise<Uint8Array[]> {
  const want = Number(part.file.size) - part.from;
  const pieces: Uint8Array[] = [];
  let got = 0;
  for await (const piece of await openBlob(blob, part.file, part.from)) {
    got += piece.length;
    if (got > want) break;
    if (piece.length > 0) pieces.push(piece);
  }
  if (got !== want) throw lengthError(part.file, part.from, BigInt(got));
  return pieces;
}

/**
 * The plan from NAR byte `start` on: what lies before it is dropped by
 * layout arithmetic (token lengths, file sizes from the nodes) without
 * reading any blob, the token that straddles `start` is cut, and the file
 * that straddles it is read from the right offset in its blob, so the
 * backend starts at the chunk that holds it.
 */
function* seekPlan(items: Generator<PlanStep>, start: number): Generator<PlanStep> {
  let pos = 0;
  for (const item of items) {
    if (pos >= start || "need" in item) {
      yield item;
      continue;
    }
    const len = item instanceof Uint8Array ? item.length : Number(item.file.size);
    if (pos + len > start) {
      const cut = start - pos;
      yield item instanceof Uint8Array ? item.subarray(cut) : { file: item.file, from: cut };
    }
    pos += len;
  }
}

/**
 * The NAR of `node` as it is produced: tokens (often a few bytes each) and
 * blob pieces, unbatched, from NAR byte `start` on and at most `length`
 * bytes of it. What {@linkcode renderNar} batches and
 * {@linkcode calculateNar} hashes. They come in groups of about
 * {@linkcode PIECE_SIZE} bytes: a step of an async generator costs a few
 * promises, which for a tree of small files was more than their contents
 * cost to read. A group ends where `length` does, so files read ahead past
 * the end are never waited for (nor their errors reported).
 */
async function* narParts(
  node: NodeVariant,
  blob: BlobSource,
  dir: DirectorySource,
  start = 0,
  length = Infinity,
  budget = narReadAhead,
): AsyncGenerator<Uint8Array[]> {
  const dirs = new DirectoryCache(dir);
  if (node.$case === "directory") {
    checkDigest(node.value.digest);
    await dirs.prefetch(node.value.digest);
  }
  const items = start > 0 ? seekPlan(plan(node, dirs), start) : plan(node, dirs);
  // Read-ahead queue: plan items, small files with their contents loading.
  const queue: { item: Item; data?: Promise<Uint8Array[]> }[] = [];
  let queuedBytes = 0;
  let queuedFiles = 0;
  let exhausted = false;

  const fill = async () => {
    while (!exhausted && queuedFiles < PREFETCH_COUNT && queuedBytes < PREFETCH_BYTES) {
      const r = items.next();
      if (r.done) {
        exhausted = true;
        break;
      }
      const item = r.value;
      if (item instanceof Uint8Array) {
        if (item.length > 0) queue.push({ item });
        continue;
      }
      if ("need" in item) {
        await dirs.load(item.need);
        continue;
      }
      queuedFiles++;
      const left = item.file.size - BigInt(item.from);
      if (left <= BigInt(PREFETCH_FILE_MAX) && budget.tryTake(Number(left))) {
        queuedBytes += Number(left);
        const data = readSmall(blob, item);
        data.catch(() => {}); // surfaced when its turn comes
        queue.push({ item, data });
      } else {
        queue.push({ item });
        break; // stream it before reading further ahead
      }
    }
  };

  let group: Uint8Array[] = [];
  let groupBytes = 0;
  let left = length;
  const add = (part: Uint8Array) => {
    if (part.length > left) part = part.subarray(0, left);
    group.push(part);
    groupBytes += part.length;
    left -= part.length;
  };
  const takeGroup = () => {
    const out = group;
    group = [];
    groupBytes = 0;
    return out;
  };
  try {
    while (left > 0) {
      if (queue.length === 0 || queuedFiles === 0) await fill();
      const head = queue.shift();
      if (!head) break;
      const { item, data } = head;
      if (item instanceof Uint8Array) {
        add(item);
      } else {
        queuedFiles--;
        if (data) {
          const bytes = Number(item.file.size - BigInt(item.from));
          queuedBytes -= bytes;
          try {
            for (const piece of await data) add(piece);
          } finally {
            budget.give(bytes);
          }
        } else {
          if (groupBytes > 0) yield takeGroup();
          for await (const piece of blobContents(blob, item.file, item.from)) {
            add(piece);
            yield takeGroup();
            if (left === 0) break; // closes the blob reader
          }
        }
      }
      if (groupBytes >= PIECE_SIZE || (left === 0 && groupBytes > 0)) yield takeGroup();
      // Refilled in bursts, once half of the read-ahead is consumed: the
      // small files then reach the blob service together, which can look
      // them up and read them together (see PackBlobService.#readSingles).
      if (queuedFiles <= PREFETCH_COUNT / 2 && queuedBytes <= PREFETCH_BYTES / 2) await fill();
    }
    if (groupBytes > 0) yield takeGroup();
  } finally {
    items.return(undefined);
    // Stopped early: small files read ahead were never handed out; free them now.
    for (const { data } of queue) data?.then((pieces) => pieces.forEach(releaseWhole), () => {});
    budget.give(queuedBytes);
  }
}

/** A byte range of a NAR: `length` bytes from byte `start` on. */
export interface NarRange {
  start: number;
  length: number;
}

/**
 * The NAR of `node`, in pieces; with `range`, only those bytes, starting
 * at the file and chunk that hold `range.start` rather than rendering from
 * the beginning. Small files are read ahead within `readAhead`, which
 * every rendering in the process shares unless told otherwise. The root
 * node's name is ignored. Fails with
 * {@linkcode NarRenderError} on missing blobs/directories, a blob whose
 * length differs from its node's `size`, or a NAR that ends before the
 * range does; backend errors pass through.
 */
export async function* renderNar(
  node: NodeVariant,
  blob: BlobSource,
  dir: DirectorySource,
  range?: NarRange,
  readAhead: ByteBudget = narReadAhead,
): AsyncGenerator<Uint8Array> {
  const out = new Batcher();
  const done: Uint8Array[] = [];
  // Bytes still to yield: all of them without a range.
  let left = range ? range.length : Infinity;
  if (left <= 0) return;
  for await (const group of narParts(node, blob, dir, range?.start, left, readAhead)) {
    for (const part of group) {
      out.push(part, done);
      left -= part.length;
    }
    yield* done;
    done.length = 0;
  }
  if (out.pending) yield out.take();
  if (range && left > 0) {
    throw new NarRenderError("UnexpectedEof", `NAR ended ${left} bytes before the range did`);
  }
}

/**
 * NAR size and SHA-256 of `node`, streaming the rendering through the hash
 * (nothing is kept). Same failures as {@linkcode renderNar}.
 */
export async function calculateNar(
  node: NodeVariant,
  blob: BlobSource,
  dir: DirectorySource,
): Promise<NarSummary> {
  // Hashed as produced: batching into pieces first would copy every byte.
  const hash = new StreamHasher();
  for await (const group of narParts(node, blob, dir)) {
    for (const part of group) hash.update(part);
  }
  return hash.summary();
}
