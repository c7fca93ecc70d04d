/**
 * Ingests a local filesystem tree into castore
 * (docs/architecture.md#data-flow-import): file contents become blobs,
 * directories go (children first) to one DirectoryService multi-put, and the
 * result is the root node named after the path's last component.
 *
 * Symlinks are never followed, not even at the root. Sockets, FIFOs and
 * devices are refused with an error naming the path. Files are read and
 * uploaded concurrently (bounded), large ones streamed in fixed-size pieces,
 * so memory does not grow with file sizes.
 *
 * @module
 */
import { basename, join } from "node:path";
import type { BlobService } from "../blob/service.ts";
import type { DirectoryPutter, DirectoryService } from "../directory/service.ts";
import { bytesEqual, compareBytes, type Digest, digestKey, newBlake3Hasher } from "../digest.ts";
import { type Directory, directoryDigest, directorySize } from "../directory.ts";
import { errorMessage, InvalidRequestError } from "../../errors.ts";
import { Semaphore } from "../../concurrency.ts";
import type { NodeVariant } from "../node.ts";

/** How many file reads/uploads and directory listings run at once. */
export const DEFAULT_CONCURRENCY = 32;
/**
 * How many of those may be streamed (larger than {@linkcode SMALL_FILE}) at
 * once. Each streaming upload holds a read piece, the chunker's buffer and
 * its writer's in-flight chunks (objectstore: up to 8 × 512 KiB plus their
 * compressed copies), several MiB; 32 of them at once made the importer's
 * peak RSS grow with the number of large files in the tree (542 MiB for a
 * 509 MiB tree). Two already keep both cores busy with hashing, chunking and
 * compression; small files still run alongside.
 */
export const DEFAULT_LARGE_CONCURRENCY = 2;
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

/** Options of {@linkcode ingestPath}. */
export interface IngestOptions {
  /** Parallel file uploads (default {@linkcode DEFAULT_CONCURRENCY}). */
  concurrency?: number;
  /**
   * Of those, parallel uploads of files larger than {@linkcode SMALL_FILE}
   * (default {@linkcode DEFAULT_LARGE_CONCURRENCY}); bounds the bytes in flight.
   */
  largeConcurrency?: number;
  /**
   * Uploads a file of `size` bytes and returns its digest, instead of
   * {@linkcode uploadFile} in this thread (e.g. a `WorkerUploadPool`).
   */
  upload?: (path: string, size: number) => Promise<Digest>;
  progress?: IngestProgress;
  /**
   * Called for every regular file once its contents are stored: what lstat
   * said of it (before reading), including when lstat ran (for a stat
   * cache's "changed too recently" rule), and the digest of what was read.
   */
  onFile?: (file: FileIdentity & { examinedAt: number }, digest: Digest) => void;
  /**
   * Records, for each blob digest, one local file with that content, and
   * every directory produced, so the caller can render the NAR from the
   * local tree without reading blobs back (see `store/import.ts`).
   */
  record?: IngestRecord;
}

/** What {@linkcode IngestOptions.record} collects. */
export interface IngestRecord {
  /** digestKey(blob digest) → a local file with that content, and its size. */
  files: Map<string, { path: string; size: number }>;
  /** digestKey(directory digest) → Directory. */
  directories: Map<string, Directory>;
}

/** A fresh, empty {@linkcode IngestRecord}. */
export function newIngestRecord(): IngestRecord {
  return { files: new Map(), directories: new Map() };
}

const te = new TextEncoder();

/**
 * Uploads one file's contents; returns the digest. Fails with
 * {@linkcode IngestError} if the file's length differs from `size` (it
 * changed while being read).
 */
export async function uploadFile(
  blob: BlobService,
  path: string,
  size: number,
  progress?: IngestProgress,
): Promise<Digest> {
  const w = blob.openWrite();
  let got = 0;
  try {
    if (size <= SMALL_FILE) {
      // Synchronous for the same reason as the metadata calls.
      const data = Deno.readFileSync(path);
      got = data.length;
      if (got > 0) await w.write(data);
    } else {
      using f = await Deno.open(path, { read: true });
      while (true) {
        // A fresh buffer per piece: the writer may still hold the last one.
        const buf = new Uint8Array(READ_PIECE);
        const n = await f.read(buf);
        if (n === null) break;
        got += n;
        if (got > size) break;
        await w.write(buf.subarray(0, n));
        progress?.bytes?.(n);
      }
    }
  } catch (err) {
    await w.abort().catch(() => {});
    throw new IngestError(path, `upload failed: ${errorMessage(err)}`);
  }
  if (got !== size) {
    await w.abort().catch(() => {});
    throw new IngestError(path, `file changed while reading (size ${size}, read ${got} bytes)`);
  }
  if (size <= SMALL_FILE) progress?.bytes?.(size);
  return await w.close();
}

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
    ino: info.ino ?? -1,
    mtimeMs: info.mtime?.getTime() ?? -1,
    ctimeMs: info.ctime?.getTime() ?? -1,
    examinedAt: Date.now(),
  };
}

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

/** The children of the directory at `hostPath`, lstat'ed. */
function listDirectory(hostPath: string): { hostPath: string; name: Uint8Array; info: Stat }[] {
  // Metadata calls are synchronous: against the page cache they take
  // microseconds, far less than an async round trip through the threadpool.
  const children: { hostPath: string; name: Uint8Array; info: Stat }[] = [];
  try {
    for (const e of Deno.readDirSync(hostPath)) {
      const p = join(hostPath, e.name);
      children.push({ hostPath: p, name: te.encode(e.name), info: statOf(Deno.lstatSync(p)) });
    }
  } catch (err) {
    throw new IngestError(hostPath, `listing failed: ${errorMessage(err)}`);
  }
  return children;
}

function readLink(hostPath: string): Uint8Array {
  try {
    return te.encode(Deno.readLinkSync(hostPath));
  } catch (err) {
    throw new IngestError(hostPath, `readlink failed: ${errorMessage(err)}`);
  }
}

/**
 * The root node `path` would be ingested as, computed from metadata alone:
 * file digests come from `knownDigest` (a stat cache), directories are
 * assembled and hashed locally, nothing is read or stored. `undefined` as
 * soon as one file's digest is not known (or the tree holds something that
 * cannot be ingested): then only a real ingestion can tell.
 */
export function nodeFromStats(
  path: string,
  knownDigest: (file: FileIdentity) => Digest | undefined,
): NodeVariant | undefined {
  const visit = (hostPath: string, name: Uint8Array, info: Stat): NodeVariant | undefined => {
    if (info.kind === "symlink") {
      return { $case: "symlink", value: { name, target: readLink(hostPath) } };
    }
    if (info.kind === "file") {
      const digest = knownDigest(info);
      if (!digest) return undefined;
      const value = { name, digest, size: BigInt(info.size), executable: info.executable };
      return { $case: "file", value };
    }
    if (info.kind !== "directory") return undefined;
    const nodes: NodeVariant[] = [];
    for (const c of listDirectory(hostPath)) {
      const n = visit(c.hostPath, c.name, c.info);
      if (!n) return undefined;
      nodes.push(n);
    }
    const d = assembleDirectory(nodes);
    return {
      $case: "directory",
      value: { name, digest: directoryDigest(d), size: directorySize(d) },
    };
  };
  try {
    return visit(path, te.encode(basename(path)), statOf(Deno.lstatSync(path)));
  } catch {
    return undefined; // whatever failed, a real ingestion reports it properly
  }
}

/**
 * Ingests `path` (docs/compatibility.md#the-import-algorithm, step 2) and
 * returns its root node, named after the
 * last path component. Throws {@linkcode IngestError} naming the offending
 * path; blob/directory service errors pass through. On failure the
 * directory upload is not closed, so no partial tree becomes reachable.
 */
export async function ingestPath(
  path: string,
  blob: BlobService,
  dir: DirectoryService,
  options: IngestOptions = {},
): Promise<NodeVariant> {
  const limit = new Semaphore(options.concurrency ?? DEFAULT_CONCURRENCY);
  const largeLimit = new Semaphore(options.largeConcurrency ?? DEFAULT_LARGE_CONCURRENCY);
  // A large file waits for its own slot before taking a general one, so
  // waiting large files never keep small ones from running.
  const runUpload = <T>(size: number, fn: () => Promise<T>): Promise<T> =>
    size > SMALL_FILE ? largeLimit.run(() => limit.run(fn)) : limit.run(fn);
  const record = options.record;
  let putter: DirectoryPutter | undefined;
  // Puts are serialised: the putter sees each directory after its children.
  let putChain: Promise<unknown> = Promise.resolve();
  const putDirectory = (d: Directory): Promise<unknown> => {
    putter ??= dir.putMultiple();
    const p = putter;
    putChain = putChain.then(() => p.put(d));
    return putChain;
  };

  async function entry(
    hostPath: string,
    name: Uint8Array,
    info: Stat,
  ): Promise<NodeVariant> {
    if (info.kind === "symlink") {
      return { $case: "symlink", value: { name, target: readLink(hostPath) } };
    }
    if (info.kind === "file") {
      const size = info.size;
      const upload = options.upload;
      const digest = await runUpload(size, async () => {
        if (!upload) return await uploadFile(blob, hostPath, size, options.progress);
        const d = await upload(hostPath, size);
        options.progress?.bytes?.(size);
        return d;
      });
      if (record && !record.files.has(digestKey(digest))) {
        record.files.set(digestKey(digest), { path: hostPath, size });
      }
      options.onFile?.(info, digest);
      const executable = info.executable;
      return { $case: "file", value: { name, digest, size: BigInt(size), executable } };
    }
    if (info.kind === "directory") {
      // Continue in a fresh microtask, so deep trees do not grow the call stack.
      await Promise.resolve();
      const children = listDirectory(hostPath);
      const nodes = await Promise.all(children.map((c) => entry(c.hostPath, c.name, c.info)));
      const d = assembleDirectory(nodes);
      await putDirectory(d);
      const digest = directoryDigest(d);
      record?.directories.set(digestKey(digest), d);
      return { $case: "directory", value: { name, digest, size: directorySize(d) } };
    }
    throw new IngestError(hostPath, `unsupported file type (${info.kind})`);
  }

  let info: Stat;
  try {
    info = statOf(await Deno.lstat(path));
  } catch (err) {
    throw new IngestError(path, errorMessage(err));
  }
  const root = await entry(path, te.encode(basename(path)), info);
  if (putter) await putter.close();
  return root;
}

/**
 * Blob and directory sources over what an ingestion recorded: blobs are read
 * from the local files they came from, directories from memory. They let
 * the NAR renderer hash the tree without reading anything back from the
 * (possibly remote) services. Every file read here is hashed with BLAKE3
 * as it streams and must match the digest that was stored: a file rewritten
 * since ingestion (even at the same length) makes the rendering fail, so a
 * NAR hash always describes exactly the stored bytes.
 */
export function recordedSources(record: IngestRecord): {
  blob: { openRead(digest: Digest): Promise<AsyncIterable<Uint8Array> | undefined> };
  dir: {
    get(digest: Digest): Promise<Directory | undefined>;
    getRecursive(digest: Digest): AsyncIterable<Directory>;
  };
} {
  return {
    blob: {
      openRead(digest) {
        const file = record.files.get(digestKey(digest));
        return Promise.resolve(file && verifiedPieces(file.path, file.size, digest));
      },
    },
    dir: {
      get: (digest) => Promise.resolve(record.directories.get(digestKey(digest))),
      // The renderer falls back to get() for every directory: nothing to prefetch.
      getRecursive: async function* () {},
    },
  };
}

/** The pieces of `path`, failing at the end unless their BLAKE3 is `digest`. */
async function* verifiedPieces(
  path: string,
  size: number,
  digest: Digest,
): AsyncGenerator<Uint8Array> {
  const hasher = await newBlake3Hasher();
  for await (const piece of readPieces(path, size)) {
    hasher.update(piece);
    yield piece;
  }
  if (!bytesEqual(hasher.digest(), digest)) {
    throw new IngestError(
      path,
      "file changed while importing (its contents differ from what was stored)",
    );
  }
}

async function* readPieces(path: string, size: number): AsyncGenerator<Uint8Array> {
  if (size <= READ_PIECE) {
    // One call for the common small file. A changed length shows up as a
    // size mismatch in the renderer.
    yield await Deno.readFile(path);
    return;
  }
  using f = await Deno.open(path, { read: true });
  while (true) {
    const buf = new Uint8Array(READ_PIECE);
    const n = await f.read(buf);
    if (n === null) return;
    yield buf.subarray(0, n);
  }
}
