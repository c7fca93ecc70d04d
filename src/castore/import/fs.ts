/**
 * Ingests a local filesystem tree into castore in one pass
 * (docs/architecture.md#data-flow-import): the tree is walked depth-first
 * in name order, each file read once; its bytes go to the blob upload and,
 * in the same order, to an optional {@linkcode TreeObserver} (the store
 * layer hashes the NAR there). Directories are assembled once every file
 * digest is known and go, children first, to one DirectoryService
 * multi-put; the result is the root node named after the path's last
 * component.
 *
 * Symlinks are never followed, not even at the root. Sockets, FIFOs and
 * devices are refused with an error naming the path. The walk itself is
 * sequential; uploads run behind it, bounded in count and bytes, so a
 * remote store sees many files in flight while memory stays bounded.
 *
 * Names are bytes. Where FFI is allowed, every directory is listed through
 * `dir_ffi.ts` (names as bytes, `statx` relative to the directory), which
 * is also cheaper than Deno's lstat; an entry whose name is not valid
 * UTF-8 (with everything below it) is reached relative to the directory's
 * descriptor, the others by string path. Without FFI the walk uses Deno's
 * string paths, which cannot spell such a name: the import then fails.
 *
 * @module
 */
import nodeFs from "node:fs";
import { basename } from "node:path";
import { type BlobService, writeWholeBlob } from "../blob/service.ts";
import type { DirectoryPutter, DirectoryService } from "../directory/service.ts";
import { compareBytes, type Digest } from "../digest.ts";
import { type Directory, directoryDigest, directorySize } from "../directory.ts";
import { errorMessage, InvalidRequestError } from "../../errors.ts";
import { JobSet } from "../../concurrency.ts";
import type { NodeVariant } from "../node.ts";
import {
  displayName,
  RawDir,
  type RawFile,
  RawFsError,
  rawFsUnavailable,
  type RawStat,
} from "./dir_ffi.ts";
import { type ListingEntry, listingKey } from "./listing_key.ts";
import { releaseWhole } from "../blob/chunk_codec.ts";
import { LOCAL_INFLIGHT_LIMITS } from "../blob/chunked_writer.ts";

/**
 * Uploads in flight at once (files read, not yet stored) into a remote
 * store (`BlobService.remote`: a daemon, S3), where every upload waits for
 * a round trip. Small files travel to a daemon in batches of 16
 * (`small_blob_batcher.ts`), so this many keeps a dozen batches going.
 * Raised from 64: importing 20,000 small files through a daemon took
 * 4-11 % less time in five of six interleaved pairs (run back to back, so
 * at a load of 0.9-2.0 from the pairs themselves; `deno task bench import`
 * showed no change beyond its noise), and the byte limit below still
 * bounds memory. 32 instead took about 10 % longer through a daemon (three
 * pairs by hand).
 */
export const REMOTE_MAX_INFLIGHT = 192;
/**
 * Uploads in flight at once into a local store (pack, file object store),
 * whose cost is CPU: a few dozen keep the chunk Worker busy. Each upload in
 * flight holds objects that outlive young-generation collections and are
 * promoted, so more only cost memory and old-generation collections (six
 * against one on 20,000 small files): by hand, the importer's peak RSS on those
 * files fell from 210-219 to 157-160 MiB with 32, and on the 509 MiB mixed
 * tree from 218-238 to 196-207 MiB (the file object store: 240-254 to
 * 208-220), at the same speed.
 */
export const LOCAL_MAX_INFLIGHT = 32;
/** Bytes of file contents in flight at once. */
export const DEFAULT_MAX_INFLIGHT_BYTES = 16 * 1024 * 1024;
/** Piece size for streaming large files. */
export const READ_PIECE = 1024 * 1024;
/** Files up to this size are read with one call; larger ones are streamed. */
export const SMALL_FILE = 256 * 1024;

/** The path cannot be ingested (unsupported type, changed while reading, bad name). */
export class IngestError extends InvalidRequestError {
  override name = "IngestError";
  constructor(readonly path: string, readonly detail: string) {
    super(`${path}: ${detail}`);
  }
}

/** Progress callbacks, called as work completes. */
export interface IngestProgress {
  /** `n` more file bytes were uploaded. */
  bytes?(n: number): void;
}

/**
 * Sees the tree as the walk reads it, in NAR order: a node is a file
 * (`file`, its `contents` in pieces, `endFile`), a symlink, or a directory
 * (`beginDirectory`, then each child between `beginEntry` and `endEntry`,
 * then `endDirectory`). The pieces are exactly the bytes uploaded; each is
 * valid only during its `contents` call (its buffer is then reused or freed).
 */
export interface TreeObserver {
  file(size: number, executable: boolean): void;
  contents(piece: Uint8Array): void;
  endFile(): void;
  symlink(target: Uint8Array): void;
  beginDirectory(): void;
  beginEntry(name: Uint8Array): void;
  endEntry(): void;
  endDirectory(): void;
}

/** Options of {@linkcode ingestPath}. */
export interface IngestOptions {
  /**
   * Uploads in flight at once (default {@linkcode REMOTE_MAX_INFLIGHT} into a
   * remote store, else {@linkcode LOCAL_MAX_INFLIGHT}).
   */
  maxInflight?: number;
  /** Bytes in flight at once (default {@linkcode DEFAULT_MAX_INFLIGHT_BYTES}). */
  maxInflightBytes?: number;
  progress?: IngestProgress;
  /** Sees every node and every byte read, in NAR order. */
  observer?: TreeObserver;
  /**
   * Called for every regular file once its contents are stored: what lstat
   * said of it (before reading), including when lstat ran (for a stat
   * cache's "changed too recently" rule), and the digest of what was read.
   */
  onFile?: (file: FileIdentity & { examinedAt: number }, digest: Digest) => void;
  /** Called for every directory once its digest is known (see {@linkcode DirectoryRecord}). */
  onDirectory?: (record: DirectoryRecord) => void;
}

/**
 * A directory as a stat cache records it: its listing key
 * (`listing_key.ts`), the newest change among its files and symlinks, when
 * the listing was lstat'ed, and the resulting digest and size.
 */
export interface DirectoryRecord {
  key: Digest;
  newestChange: number;
  examinedAt: number;
  digest: Digest;
  size: bigint;
}

/**
 * What a stat cache knows, for {@linkcode nodeFromStats}: file digests
 * (asked once per directory, for all of its files) and directories by
 * listing key.
 */
export interface KnownTree {
  fileDigests(files: FileIdentity[]): (Digest | undefined)[];
  directory?(key: Digest): { digest: Digest; size: bigint } | undefined;
  /** Called for a directory assembled from file digests (a directory record missed). */
  onDirectory?(record: DirectoryRecord): void;
}

const te = new TextEncoder();

/**
 * What identifies a regular file's contents without reading them, as far
 * as lstat can tell: any write changes the ctime, a replacement the inode,
 * `chmod` the ctime and the executable bit (see `store/stat_cache.ts`).
 */
export interface FileIdentity {
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  executable: boolean;
}

/**
 * What the walk keeps of an lstat result. The whole tree is listed before
 * most files are uploaded, so this is held for every entry at once: a
 * `Deno.FileInfo` (with its Date objects) costs several times as much heap.
 */
interface Stat extends FileIdentity {
  /** "file", "directory", "symlink", or a description of an unsupported type. */
  kind: string;
  /** When lstat ran (ms since the epoch). */
  examinedAt: number;
}

function statOf(info: Deno.FileInfo): Stat {
  const kind = info.isFile
    ? "file"
    : info.isDirectory
    ? "directory"
    : info.isSymlink
    ? "symlink"
    : info.isBlockDevice
    ? "block device"
    : info.isCharDevice
    ? "character device"
    : info.isFifo
    ? "FIFO"
    : info.isSocket
    ? "socket"
    : "unknown file type";
  return {
    kind,
    size: info.size,
    executable: ((info.mode ?? 0) & 0o100) !== 0,
    dev: info.dev,
    // Above 2^53 the number is rounded, and two files could share it.
    ino: info.ino !== null && Number.isSafeInteger(info.ino) ? info.ino : -1,
    mtimeMs: info.mtime?.getTime() ?? -1,
    ctimeMs: info.ctime?.getTime() ?? -1,
    examinedAt: Date.now(),
  };
}

/** `st_mode` file types, as {@linkcode Stat.kind} names them. */
const KIND_OF_TYPE: Record<number, string> = {
  0o100000: "file",
  0o040000: "directory",
  0o120000: "symlink",
  0o060000: "block device",
  0o020000: "character device",
  0o010000: "FIFO",
  0o140000: "socket",
};

function rawStatOf(info: RawStat, examinedAt: number): Stat {
  return {
    kind: KIND_OF_TYPE[info.mode & 0o170000] ?? "unknown file type",
    size: info.size,
    executable: (info.mode & 0o100) !== 0,
    dev: info.dev,
    ino: info.ino,
    mtimeMs: info.mtimeMs,
    ctimeMs: info.ctimeMs,
    examinedAt,
  };
}

/**
 * Where an entry of the walk is: a path, or (for a name that is not valid
 * UTF-8, and everything below it) a name inside a directory open by
 * descriptor, which no string path can reach.
 */
type Location = string | RawLocation;

interface RawLocation {
  dir: RawDir;
  name: Uint8Array;
  /** The path with undecodable bytes escaped, for messages only. */
  path: string;
}

/** `loc` for messages. */
function shown(loc: Location): string {
  return typeof loc === "string" ? loc : loc.path;
}

/** An entry of a directory listing, lstat'ed. */
interface Child {
  loc: Location;
  name: Uint8Array;
  info: Stat;
}

/**
 * A directory's children. `close()` once they have all been walked: a
 * listing may hold the directory's descriptor, through which children with
 * byte names are reached.
 */
interface Listing {
  children: Child[];
  close(): void;
}

const noClose = () => {};

/** A Directory of `nodes` (unique names from one listing), in name order. */
function assembleDirectory(nodes: NodeVariant[]): Directory {
  nodes.sort((a, b) => compareBytes(a.value.name, b.value.name));
  const d: Directory = { directories: [], files: [], symlinks: [] };
  for (const n of nodes) {
    if (n.$case === "directory") d.directories.push(n.value);
    else if (n.$case === "file") d.files.push(n.value);
    else d.symlinks.push(n.value);
  }
  return d;
}

/**
 * The path of `name` in the directory at `dir`, kept as given: `join`
 * would normalise it once per entry, which showed in re-import profiles,
 * and the walk's paths need no normalising (they are only listed names).
 */
function childPath(dir: string, name: string): string {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

/** The children of the directory at `loc`, lstat'ed. */
function listDirectory(loc: Location): Listing {
  if (typeof loc !== "string") return listRawDirectory(loc);
  // Where libc can be reached, every directory is listed through it:
  // `statx` relative to the directory's descriptor, into a reused buffer,
  // costs less than Deno's lstat by path with its `FileInfo` and Dates.
  if (rawFsUnavailable() === undefined) return listBytewise(loc);
  // Metadata calls are synchronous: against the page cache they take
  // microseconds, far less than an async round trip through the threadpool.
  const children: Child[] = [];
  // Names with U+FFFD may stand for bytes that are not UTF-8. If so, either
  // their path misses (NotFound) or it reaches the file that really has that
  // name, which the listing then holds twice.
  let replaced = false;
  try {
    for (const e of Deno.readDirSync(loc)) {
      const p = childPath(loc, e.name);
      if (e.name.includes("\uFFFD")) replaced = true;
      let info: Deno.FileInfo;
      try {
        info = Deno.lstatSync(p);
      } catch (err) {
        if (replaced && err instanceof Deno.errors.NotFound) return listBytewise(loc);
        throw err;
      }
      children.push({ loc: p, name: te.encode(e.name), info: statOf(info) });
    }
  } catch (err) {
    if (err instanceof IngestError) throw err;
    throw new IngestError(loc, `listing failed: ${errorMessage(err)}`);
  }
  if (replaced && new Set(children.map((c) => c.loc)).size !== children.length) {
    return listBytewise(loc);
  }
  return { children, close: noClose };
}

/**
 * The children of the directory at `path`, listed by bytes (needed where a
 * name is not valid UTF-8) and reached through the directory's descriptor:
 * the directory they were listed in, even if a directory on the way to it
 * is renamed or replaced while the walk runs (a file read by its path
 * could then be another one than the one lstat saw, and the stat cache
 * would record one file's identity with another's contents).
 */
function listBytewise(path: string): Listing {
  const why = rawFsUnavailable();
  if (why !== undefined) {
    throw new IngestError(
      path,
      `holds a file name that is not valid UTF-8, which only byte-level file access can read: ${why}`,
    );
  }
  return listThrough(path, () => RawDir.open(path));
}

/** The children of a directory that only its parent's descriptor reaches. */
function listRawDirectory(loc: RawLocation): Listing {
  return listThrough(loc.path, () => loc.dir.openDir(loc.name));
}

/**
 * The children of the directory `open` opens (shown as `path`), lstat'ed
 * and reached through its descriptor, which the listing holds until closed.
 */
function listThrough(path: string, open: () => RawDir): Listing {
  let dir: RawDir | undefined;
  try {
    // Taken before any lstat, which is the safe side of the racy rule.
    const examinedAt = Date.now();
    dir = open();
    const children: Child[] = [];
    for (const name of dir.names()) {
      const info = rawStatOf(dir.lstat(name), examinedAt);
      children.push({ loc: { dir, name, path: childPath(path, displayName(name)) }, name, info });
    }
    return { children, close: () => dir!.close() };
  } catch (err) {
    dir?.close();
    throw new IngestError(path, `listing failed: ${errorMessage(err)}`);
  }
}

/** The target of the symlink at `loc`, as bytes. */
function readLink(loc: Location): Uint8Array {
  try {
    if (typeof loc !== "string") return loc.dir.readLink(loc.name);
    try {
      return te.encode(Deno.readLinkSync(loc));
    } catch (err) {
      // Deno refuses a target that is not valid UTF-8.
      if (!(err instanceof Deno.errors.InvalidData)) throw err;
      const why = rawFsUnavailable();
      if (why === undefined) return RawDir.readLink(loc);
      throw new Error(
        `the target is not valid UTF-8, which only byte-level file access can read: ${why}`,
      );
    }
  } catch (err) {
    throw new IngestError(shown(loc), `readlink failed: ${errorMessage(err)}`);
  }
}

/** A reader of a file's contents in pieces (`Deno.FsFile` or `RawFile`). */
interface PieceReader extends Disposable {
  readSync(buf: Uint8Array): number | null;
}

/**
 * Opens the regular file at `loc`, which the listing lstat'ed as `info`,
 * for reading, and checks that it opened that file: still a regular file
 * with the same device and inode. One replaced since (by another file, a
 * symlink, a FIFO) fails the import rather than have the stat cache record
 * the listed file's identity with other contents. Through a descriptor
 * nothing is followed and a FIFO does not block; by path (no FFI) a
 * symlink is followed, and caught here.
 */
function openFile(loc: Location, info: Stat): PieceReader {
  let f: RawFile | PathFile;
  try {
    f = typeof loc === "string" ? new PathFile(loc) : loc.dir.openFile(loc.name);
  } catch (err) {
    // O_NOFOLLOW met a symlink where the listing saw a file.
    if (err instanceof RawFsError && err.errno === ELOOP) throw replaced(loc, "symlink");
    throw err;
  }
  try {
    const now = f instanceof PathFile ? f.stat() : rawStatOf(f.stat(), 0);
    if (now.kind !== "file" || now.dev !== info.dev || now.ino !== info.ino) {
      throw replaced(loc, now.kind === "file" ? "different file" : now.kind);
    }
  } catch (err) {
    f.close();
    throw err;
  }
  return f;
}

const ELOOP = 40;

/**
 * A file opened by path (no FFI), through node:fs, which passes
 * `O_NONBLOCK` to open(2): a FIFO put where the listing saw a file does
 * not block the open, and `stat` then shows it. (`O_NOFOLLOW` is not
 * passed on; a symlink is followed, and `stat` shows another file.)
 */
class PathFile implements PieceReader {
  readonly #fd: number;

  constructor(path: string) {
    this.#fd = nodeFs.openSync(path, nodeFs.constants.O_RDONLY | nodeFs.constants.O_NONBLOCK);
  }

  /** What the descriptor refers to now. */
  stat(): Stat {
    const st = nodeFs.fstatSync(this.#fd, { bigint: true });
    return rawStatOf({
      mode: Number(st.mode),
      size: Number(st.size),
      dev: Number(st.dev),
      // Above 2^53 a number would be rounded, and two files could share it.
      ino: st.ino <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(st.ino) : -1,
      mtimeMs: Number(st.mtimeNs / 1_000_000n),
      ctimeMs: Number(st.ctimeNs / 1_000_000n),
    }, Date.now());
  }

  readSync(buf: Uint8Array): number | null {
    if (buf.length === 0) return 0;
    const n = nodeFs.readSync(this.#fd, buf, 0, buf.length, null);
    return n === 0 ? null : n;
  }

  close(): void {
    nodeFs.closeSync(this.#fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** The import's failure for a file that is no longer the one its directory listed. */
function replaced(loc: Location, now: string): IngestError {
  return new IngestError(shown(loc), `was replaced while the import ran (now a ${now})`);
}

/**
 * The whole contents of the (small) file at `loc`, which lstat said is
 * `info`; longer or shorter if it changed since.
 */
function readSmallFile(loc: Location, info: Stat): Uint8Array {
  // Synchronous: against the page cache one call takes microseconds,
  // far less than a round trip through the threadpool.
  const size = info.size;
  using f = openFile(loc, info);
  const data = new Uint8Array(size);
  let got = 0;
  while (got < size) {
    const n = f.readSync(data.subarray(got));
    if (n === null) return data.subarray(0, got);
    got += n;
  }
  // One byte more means the file grew.
  const more = f.readSync(new Uint8Array(1));
  if (more === null) return data;
  const grown = new Uint8Array(size + 1);
  grown.set(data);
  return grown;
}

/**
 * The root node `path` would be ingested as, computed from metadata alone:
 * a directory whose listing key (`listing_key.ts`) `known` has recorded is
 * taken whole; otherwise its file digests come from `known` (asked once
 * per directory for all of its files) and it is assembled and hashed
 * locally. Nothing is read but directory listings, lstat results and
 * symlink targets of directories not known whole; nothing is stored.
 * `undefined` as soon as one file's digest is not known (or the tree holds
 * something that cannot be ingested): then only a real ingestion can tell.
 */
export function nodeFromStats(path: string, known: KnownTree): NodeVariant | undefined {
  const fileNode = (name: Uint8Array, info: Stat, digest: Digest | undefined) =>
    digest && {
      $case: "file" as const,
      value: { name, digest, size: BigInt(info.size), executable: info.executable },
    };
  const visit = (loc: Location, name: Uint8Array, info: Stat): NodeVariant | undefined => {
    if (info.kind === "symlink") {
      return { $case: "symlink", value: { name, target: readLink(loc) } };
    }
    if (info.kind === "file") return fileNode(name, info, known.fileDigests([info])[0]);
    if (info.kind !== "directory") return undefined;
    const listing = listDirectory(loc);
    try {
      const children = listing.children;
      children.sort((a, b) => compareBytes(a.name, b.name));
      // Subdirectories first: their digests are part of this listing's key.
      const entries: ListingEntry[] = [];
      for (const c of children) {
        if (c.info.kind === "directory") {
          const sub = visit(c.loc, c.name, c.info);
          if (sub?.$case !== "directory") return undefined;
          entries.push({ name: c.name, kind: "directory", info: c.info, directory: sub.value });
        } else if (c.info.kind === "file" || c.info.kind === "symlink") {
          entries.push({ name: c.name, kind: c.info.kind, info: c.info });
        } else {
          return undefined;
        }
      }
      const { key, newestChange, examinedAt } = listingKey(entries);
      const whole = known.directory?.(key);
      if (whole) return { $case: "directory", value: { name, ...whole } };

      const files = children.filter((c) => c.info.kind === "file");
      const digests = files.length > 0 ? known.fileDigests(files.map((c) => c.info)) : [];
      const nodes: NodeVariant[] = [];
      let f = 0;
      for (let i = 0; i < children.length; i++) {
        const c = children[i];
        const e = entries[i];
        const n = c.info.kind === "file"
          ? fileNode(c.name, c.info, digests[f++])
          : e.directory
          ? { $case: "directory" as const, value: { name: c.name, ...e.directory } }
          : visit(c.loc, c.name, c.info);
        if (!n) return undefined;
        nodes.push(n);
      }
      const d = assembleDirectory(nodes);
      const digest = directoryDigest(d);
      const size = directorySize(d);
      known.onDirectory?.({ key, newestChange, examinedAt, digest, size });
      return { $case: "directory", value: { name, digest, size } };
    } finally {
      listing.close();
    }
  };
  try {
    return visit(path, te.encode(basename(path)), statOf(Deno.lstatSync(path)));
  } catch {
    return undefined; // whatever failed, a real ingestion reports it properly
  }
}

/** A file whose upload may still be running. */
interface WalkedFile {
  kind: "file";
  name: Uint8Array;
  info: Stat;
  /** Set once the upload is done. */
  digest?: Digest;
}

/** A directory whose files' digests may not all be known yet. */
interface WalkedDirectory {
  kind: "directory";
  name: Uint8Array;
  info: Stat;
  /** In name order. */
  children: Walked[];
}

type Walked = WalkedFile | WalkedDirectory | {
  kind: "symlink";
  name: Uint8Array;
  info: Stat;
  node: NodeVariant;
};

/**
 * Ingests `path` (docs/compatibility.md#the-import-algorithm, step 2) and
 * returns its root node, named after the last path component. Throws
 * {@linkcode IngestError} naming the offending path; blob/directory service
 * errors pass through. On failure no directory is stored, so no partial
 * tree becomes reachable.
 */
export async function ingestPath(
  path: string,
  blob: BlobService,
  dir: DirectoryService,
  options: IngestOptions = {},
): Promise<NodeVariant> {
  const uploads = new JobSet({
    maxJobs: options.maxInflight ?? (blob.remote ? REMOTE_MAX_INFLIGHT : LOCAL_MAX_INFLIGHT),
    maxWeight: options.maxInflightBytes ?? DEFAULT_MAX_INFLIGHT_BYTES,
  });
  const observer = options.observer;
  const progress = options.progress;
  // Large files are read piece by piece into this one buffer: the walk
  // streams one file at a time, and a writer is done with a piece once its
  // `write` resolves (see BlobWriter). A fresh buffer per piece left a
  // MiB of garbage per piece for the collector.
  let pieceBuffer: Uint8Array | undefined;

  /** Reads a file once, feeding the observer and an upload. */
  async function file(loc: Location, walked: WalkedFile): Promise<void> {
    const { size, executable } = walked.info;
    observer?.file(size, executable);
    if (size <= SMALL_FILE) {
      let data: Uint8Array;
      try {
        data = readSmallFile(loc, walked.info);
      } catch (err) {
        if (err instanceof IngestError) throw err;
        throw new IngestError(shown(loc), `reading failed: ${errorMessage(err)}`);
      }
      if (data.length !== size) throw changed(shown(loc), size, data.length);
      observer?.contents(data);
      observer?.endFile();
      await uploads.add(async () => {
        try {
          walked.digest = await writeWholeBlob(blob, data);
        } catch (err) {
          throw new IngestError(shown(loc), `upload failed: ${errorMessage(err)}`);
        }
        // Stored, and the observer saw the bytes already: free them now
        // (unless the store took the buffer) rather than at a collection.
        releaseWhole(data);
        progress?.bytes?.(size);
      }, size);
      return;
    }
    // Large files stream through one writer; the walk waits for each piece
    // to be taken (the writer's own bound), and the upload's end runs behind.
    // That end holds what the writer still has in flight (up to its bound,
    // 8 MiB in a local store), so it counts as that much here. Counted as
    // one piece, the ends of many large files ran at once: importing the
    // benchmark's mixed tree peaked at 81-82 MiB of buffers, against 46-63
    // MiB counted this way (by hand, three to six runs each).
    const writer = blob.openWrite();
    try {
      using f = openFile(loc, walked.info);
      const buf = pieceBuffer ??= new Uint8Array(READ_PIECE);
      let got = 0;
      while (true) {
        const n = f.readSync(buf);
        if (n === null) break;
        got += n;
        if (got > size) break;
        const piece = buf.subarray(0, n);
        observer?.contents(piece);
        await writer.write(piece);
        progress?.bytes?.(n);
      }
      if (got !== size) throw changed(shown(loc), size, got);
      observer?.endFile();
    } catch (err) {
      await writer.abort().catch(() => {});
      if (err instanceof IngestError) throw err;
      throw new IngestError(shown(loc), `upload failed: ${errorMessage(err)}`);
    }
    await uploads.add(async () => {
      try {
        walked.digest = await writer.close();
      } catch (err) {
        throw new IngestError(shown(loc), `upload failed: ${errorMessage(err)}`);
      }
    }, Math.min(size, LOCAL_INFLIGHT_LIMITS.bytes));
  }

  async function walk(loc: Location, name: Uint8Array, info: Stat): Promise<Walked> {
    if (info.kind === "symlink") {
      const target = readLink(loc);
      observer?.symlink(target);
      return { kind: "symlink", name, info, node: { $case: "symlink", value: { name, target } } };
    }
    if (info.kind === "file") {
      const walked: WalkedFile = { kind: "file", name, info };
      await file(loc, walked);
      return walked;
    }
    if (info.kind === "directory") {
      // Continue in a fresh microtask, so deep trees do not grow the call stack.
      await Promise.resolve();
      const listing = listDirectory(loc);
      try {
        const children = listing.children;
        children.sort((a, b) => compareBytes(a.name, b.name));
        observer?.beginDirectory();
        const walked: WalkedDirectory = { kind: "directory", name, info, children: [] };
        for (const c of children) {
          observer?.beginEntry(c.name);
          walked.children.push(await walk(c.loc, c.name, c.info));
          observer?.endEntry();
        }
        observer?.endDirectory();
        return walked;
      } finally {
        listing.close();
      }
    }
    throw new IngestError(shown(loc), `unsupported file type (${info.kind})`);
  }

  let info: Stat;
  try {
    info = statOf(Deno.lstatSync(path));
  } catch (err) {
    throw new IngestError(path, errorMessage(err));
  }
  const root = await walk(path, te.encode(basename(path)), info);
  await uploads.drain();

  // Every digest is known: assemble the directories, children first.
  let putter: DirectoryPutter | undefined;
  const finish = async (w: Walked): Promise<NodeVariant> => {
    if (w.kind === "symlink") return w.node;
    if (w.kind === "file") {
      const digest = w.digest!;
      options.onFile?.(w.info, digest);
      const value = {
        name: w.name,
        digest,
        size: BigInt(w.info.size),
        executable: w.info.executable,
      };
      return { $case: "file", value };
    }
    await Promise.resolve();
    const nodes: NodeVariant[] = [];
    for (const c of w.children) nodes.push(await finish(c));
    const d = assembleDirectory(nodes);
    putter ??= dir.putMultiple();
    await putter.put(d);
    const value = { name: w.name, digest: directoryDigest(d), size: directorySize(d) };
    if (options.onDirectory) recordDirectory(w, nodes, value, options.onDirectory);
    return { $case: "directory", value };
  };
  const node = await finish(root);
  if (putter) await putter.close();
  return node;
}

/**
 * Reports directory `w`, whose children (in name order) became `nodes`, as
 * `value`, with its listing key.
 */
function recordDirectory(
  w: WalkedDirectory,
  nodes: NodeVariant[],
  value: { digest: Digest; size: bigint },
  onDirectory: (record: DirectoryRecord) => void,
): void {
  const entries: ListingEntry[] = w.children.map((c, i) => {
    const n = nodes[i];
    const directory = n.$case === "directory" ? n.value : undefined;
    return { name: c.name, kind: c.kind, info: c.info, directory };
  });
  const { key, newestChange, examinedAt } = listingKey(entries);
  onDirectory({ key, newestChange, examinedAt, digest: value.digest, size: value.size });
}

function changed(path: string, size: number, got: number): IngestError {
  return new IngestError(
    path,
    `file changed while reading (size ${size}, read ${got}${got > size ? "+" : ""} bytes)`,
  );
}
