/**
 * The store as a read-only filesystem (docs/compatibility.md#fuse-behaviour):
 * what each FUSE operation answers, independent of the kernel protocol. One
 * instance per Worker, all sharing one {@linkcode InodeTable}.
 *
 * The mount root lists store paths: `<hash>-<name>` resolves through the
 * PathInfoService to the PathInfo's root node (whose name must equal the
 * looked-up name). Below that, directories are fetched lazily from the
 * DirectoryService by the first Worker that needs them and published in
 * {@linkcode SharedListings} for the others (inode numbers come from the
 * shared content-keyed table, so a listing means the same in every Worker);
 * each Worker keeps the listings it used.
 *
 * Deliberate differences from the reference (nothing on the wire changes):
 * - Upstream quirks fixed (see
 *   docs/compatibility.md#q15-fuse-inode-keys-directory-sizes-and-root-listing):
 *   a directory's `st_size` is always its `DirectoryNode.size` (it does
 *   not change once the directory was listed); the root listing never skips
 *   or repeats entries, honours offsets (keys of the names, so any Worker
 *   continues any listing) and reports provider errors as `EIO` for both
 *   READDIR and READDIRPLUS; `open` of a symlink gives `ELOOP` (what
 *   `open(O_NOFOLLOW)` gives on a symlink; the kernel follows links itself
 *   before OPEN, so only odd callers see it) and of the root `EISDIR`.
 * - `st_nlink` is 1: 0 makes the kernel drop an inode from its cache as
 *   soon as it is unused and look it up again.
 *
 * @module
 */
import { b3Display, blake3, bytesEqual, compareBytes, digestKey } from "../castore/digest.ts";
import { type Directory, directoryDigest, directoryNodes } from "../castore/directory.ts";
import { errorMessage } from "../errors.ts";
import { isValidName, type NodeVariant, validateNode } from "../castore/node.ts";
import type { BlobService } from "../castore/blob/service.ts";
import type { DirectoryService } from "../castore/directory/service.ts";
import type { PathInfoService } from "../store/pathinfo/service.ts";
import { StorePath } from "../store/store_path.ts";
import { log } from "../log.ts";
import { Errno } from "./ffi.ts";
import { InodeTable, Kind, ROOT_INO } from "./inodes.ts";
import { type Attr, S_IFDIR, S_IFLNK, S_IFREG } from "./protocol.ts";
import { BlobRangeReader, type BlobRangeReaderOptions, type ReadResult } from "./range_reader.ts";
import type { Listing, SharedListings } from "./shared_listings.ts";
import { LoadingCache } from "../loading_cache.ts";

/** A failed operation, answered with `errno`. */
export class FsError extends Error {
  override name = "FsError";
  /** The errno the kernel receives. */
  constructor(readonly errno: number, message = `errno ${errno}`) {
    super(message);
  }
}

/** Services the filesystem reads from. */
export interface FsServices {
  blob: BlobService;
  directory: DirectoryService;
  pathInfo: PathInfoService;
}

/** Behaviour switches (`mount` flags). */
export interface FsOptions {
  /** Allow listing the mount root (`--list-root`). */
  listRoot: boolean;
  /** Expose digests as extended attributes (`--show-xattr`). */
  showXattr: boolean;
  /** Distinguishes this Worker's directory handles from other Workers' (0–1023). */
  workerId?: number;
  /** Tuning of blob reads. */
  read?: BlobRangeReaderOptions;
  /** Listings shared with the other Workers (each directory is then fetched once per mount). */
  listings?: SharedListings;
  /**
   * Fetch a directory's whole subtree in one recursive `Get` when it holds
   * at most this many elements in all (`DirectoryNode.size`) and publish
   * every listing in it (needs {@linkcode listings}); 0 (the default) fetches
   * directory by directory. Worth it when each fetch is a round trip to a
   * remote store: `ls -lR` of 101 directories made 101 calls.
   */
  subtreePrefetch?: number;
}

/** Entries of a directory from index `start` on. */
export interface DirSlice extends Listing {
  start: number;
  /**
   * The offset a READDIR passes to continue after each entry; without it,
   * the entry's index + 1 (listings that never change).
   */
  offsets?: number[];
}

/**
 * A snapshot of the root, in the order of each entry's key (see
 * {@linkcode rootKey}), which is also its READDIR offset.
 */
interface RootListing extends Listing {
  keys: number[];
}

/** Names of the extended attributes (docs/compatibility.md#extended-attributes). */
const XATTR_DIRECTORY = "user.tvix.castore.directory.digest";
/** See {@linkcode XATTR_DIRECTORY}. */
const XATTR_BLOB = "user.tvix.castore.blob.digest";

const encoder = new TextEncoder();
const XATTR_DIRECTORY_NAME = encoder.encode(XATTR_DIRECTORY);
const XATTR_BLOB_NAME = encoder.encode(XATTR_BLOB);
const XATTR_DIRECTORY_LIST = encoder.encode(XATTR_DIRECTORY + "\0");
const XATTR_BLOB_LIST = encoder.encode(XATTR_BLOB + "\0");
const EMPTY = new Uint8Array(0);

/** Directories (their entry count) kept listed per Worker before the least recently used are dropped. */
const DIR_CACHE_ENTRIES = 1 << 20;
/**
 * Root listings kept per Worker (another Worker may have released them).
 * Each is a snapshot of the whole store's names; one dropped costs only a
 * new snapshot if its listing goes on (offsets are keys, see #readRoot).
 */
const MAX_ROOT_LISTINGS = 4;

/** The filesystem; see the module doc. */
export class StoreFs {
  readonly #svc: FsServices;
  readonly #inodes: InodeTable;
  readonly #opts: FsOptions;
  readonly #reader: BlobRangeReader;
  /** Listings this Worker used, bounded by their entries; concurrent fetches of one are shared. */
  readonly #dirs = new LoadingCache<number, Listing>(
    DIR_CACHE_ENTRIES,
    (listing) => listing.names.length + 1,
  );
  readonly #rootNames = new Map<string, number>();
  readonly #rootLookups = new Map<string, Promise<number>>();
  readonly #listings = new Map<number, Promise<RootListing>>();
  #nextHandle = 1;

  /** A filesystem over `services`, allocating inodes in `inodes`. */
  constructor(services: FsServices, inodes: InodeTable, opts: FsOptions) {
    this.#svc = services;
    this.#inodes = inodes;
    this.#opts = opts;
    this.#reader = new BlobRangeReader(services.blob, opts.read);
  }

  /** Fetches running in the background (readahead), which a blocking wait would stall. */
  get backgroundWork(): number {
    return this.#reader.loading;
  }

  /**
   * Attributes of `ino` (docs/compatibility.md#attributes). Throws ENOENT for
   * an unknown inode.
   */
  getattr(ino: number): Attr {
    const info = this.#inodes.info(ino);
    if (!info) throw new FsError(Errno.ENOENT);
    switch (info.kind) {
      case Kind.Root:
        return { ino, mode: S_IFDIR | 0o555, size: 0, blocks: 0, blksize: 1024, nlink: 1 };
      case Kind.Directory:
        return { ino, mode: S_IFDIR | 0o555, size: info.size, blocks: 1024, blksize: 0, nlink: 1 };
      case Kind.File:
        return {
          ino,
          mode: S_IFREG | (info.executable ? 0o555 : 0o444),
          size: info.size,
          blocks: 1024,
          blksize: 0,
          nlink: 1,
        };
      default:
        return { ino, mode: S_IFLNK | 0o444, size: info.size, blocks: 1024, blksize: 0, nlink: 1 };
    }
  }

  /** Resolves `name` in directory `parent`. */
  lookup(parent: number, name: Uint8Array): Attr | Promise<Attr> {
    if (parent === ROOT_INO) {
      const known = this.#rootNames.get(nameKey(name));
      if (known !== undefined) return this.getattr(known);
      return this.#lookupRoot(name).then((ino) => this.getattr(ino));
    }
    const dir = this.#populated(parent);
    if (dir instanceof Promise) return dir.then((d) => this.getattr(findChild(d, name)));
    return this.getattr(findChild(dir, name));
  }

  /** Opens a directory; returns the handle (only the root listing uses one). */
  opendir(ino: number): number {
    if (ino === ROOT_INO) {
      if (!this.#opts.listRoot) throw new FsError(Errno.EPERM, "listing the root is disabled");
      return this.#nextHandle++ * 1024 + (this.#opts.workerId ?? 0);
    }
    const info = this.#inodes.info(ino);
    if (!info) throw new FsError(Errno.ENOENT);
    if (info.kind !== Kind.Directory) throw new FsError(Errno.ENOTDIR);
    return 0;
  }

  /** Drops the root listing of handle `fh`. */
  releasedir(ino: number, fh: number): void {
    if (ino === ROOT_INO) this.#listings.delete(fh);
  }

  /**
   * Entries of `ino` after READDIR offset `offset` (no `.` or `..`): the
   * whole listing, and where in it to start.
   */
  readdir(ino: number, fh: number, offset: number): DirSlice | Promise<DirSlice> {
    if (ino === ROOT_INO) return this.#readRoot(fh, offset);
    const dir = this.#populated(ino);
    if (dir instanceof Promise) {
      return dir.then((d) => ({ names: d.names, inos: d.inos, start: offset }));
    }
    return { names: dir.names, inos: dir.inos, start: offset };
  }

  /** Checks that `ino` can be opened for reading (and that its blob exists). */
  async open(ino: number, flags: number): Promise<void> {
    const info = this.#inodes.info(ino);
    if (!info) throw new FsError(Errno.ENOENT);
    if (info.kind === Kind.Symlink) throw new FsError(Errno.ELOOP);
    if (info.kind !== Kind.File) throw new FsError(Errno.EISDIR);
    if ((flags & 3) !== 0) throw new FsError(Errno.EROFS);
    try {
      await this.#reader.check(this.#inodes.digest(ino)!.slice(), info.size);
    } catch (err) {
      log.warn("cannot open file", { ino, error: errorMessage(err) });
      throw new FsError(Errno.EIO);
    }
  }

  /**
   * Up to `size` bytes of file `ino` from `offset`, as pieces in order (see
   * {@linkcode ReadResult}); synchronous when the bytes are in memory.
   */
  read(ino: number, offset: number, size: number): ReadResult | Promise<ReadResult> {
    // The hot path of a streaming read: no allocation but the reply's own.
    const kind = this.#inodes.kind(ino);
    if (kind === 0) throw new FsError(Errno.ENOENT);
    if (kind !== Kind.File) throw new FsError(Errno.EISDIR);
    const failed = (err: unknown): never => {
      log.warn("read failed", { ino, offset, size, error: errorMessage(err) });
      throw new FsError(Errno.EIO);
    };
    try {
      // A view of the shared table: the reader copies it if it keeps it.
      const digest = this.#inodes.digest(ino)!;
      const r = this.#reader.read(digest, this.#inodes.size(ino), offset, size);
      return r instanceof Promise ? r.catch(failed) : r;
    } catch (err) {
      return failed(err);
    }
  }

  /** Target of symlink `ino`. */
  readlink(ino: number): Uint8Array {
    const info = this.#inodes.info(ino);
    if (!info) throw new FsError(Errno.ENOENT);
    const target = this.#inodes.symlinkTarget(ino);
    if (!target) throw new FsError(Errno.EINVAL);
    return target;
  }

  /**
   * NUL-terminated names of the extended attributes of `ino`, or an errno.
   * Errors are returned, not thrown: `ls -l` probes attributes of every
   * file, and building an exception costs more than the whole answer.
   */
  listxattr(ino: number): Uint8Array | number {
    if (!this.#opts.showXattr) return Errno.ENOSYS;
    const kind = this.#inodes.kind(ino);
    if (kind === Kind.Directory) return XATTR_DIRECTORY_LIST;
    if (kind === Kind.File) return XATTR_BLOB_LIST;
    return EMPTY;
  }

  /** Value of extended attribute `name` (bytes, no NUL) of `ino`, or an errno (see {@linkcode listxattr}). */
  getxattr(ino: number, name: Uint8Array): Uint8Array | number {
    if (!this.#opts.showXattr) return Errno.ENOSYS;
    const kind = this.#inodes.kind(ino);
    if (
      (kind === Kind.Directory && bytesEqual(name, XATTR_DIRECTORY_NAME)) ||
      (kind === Kind.File && bytesEqual(name, XATTR_BLOB_NAME))
    ) {
      return encoder.encode(b3Display(this.#inodes.digest(ino)!));
    }
    return Errno.ENODATA;
  }

  /** The populated state of directory `ino`, fetching its Directory if needed. */
  #populated(ino: number): Listing | Promise<Listing> {
    const hit = this.#dirs.get(ino);
    if (hit) return hit;
    const kind = this.#inodes.kind(ino);
    if (kind === 0) throw new FsError(Errno.ENOENT);
    if (kind !== Kind.Directory) throw new FsError(Errno.ENOTDIR);
    const shared = this.#opts.listings?.get(ino);
    if (shared) {
      this.#dirs.set(ino, shared);
      return shared;
    }
    return this.#dirs.fetch(ino, () => this.#populate(ino));
  }

  /**
   * Fetches and lists directory `ino`. With `subtreePrefetch`, a small
   * enough directory comes with everything below it in one recursive fetch
   * and each listing in it is published for all Workers; a directory's
   * inode then comes from interning its node in the parent, which the
   * closure (root first, each directory after one that references it)
   * always yields earlier.
   */
  async #populate(ino: number): Promise<Listing> {
    const digest = this.#inodes.digest(ino)!.slice();
    const limit = this.#opts.subtreePrefetch ?? 0;
    const subtree = limit > 0 && this.#opts.listings !== undefined &&
      this.#inodes.size(ino) <= limit;
    const inoOf = new Map([[digestKey(digest), ino]]);
    let root: Listing | undefined;
    try {
      // Each directory arrives verified against its digest and validated by the service.
      let directories: AsyncIterable<Directory> | Directory[];
      if (subtree) directories = this.#svc.directory.getRecursive(digest);
      else {
        const one = await this.#svc.directory.get(digest);
        directories = one ? [one] : [];
      }
      for await (const directory of directories) {
        const at = subtree ? inoOf.get(digestKey(directoryDigest(directory))) : ino;
        if (at === undefined) continue;
        const names: Uint8Array[] = [];
        const inos: number[] = [];
        for (const node of directoryNodes(directory)) {
          const child = this.#inodes.intern(node);
          names.push(node.value.name);
          inos.push(child);
          if (subtree && node.$case === "directory") inoOf.set(digestKey(node.value.digest), child);
        }
        const listing = { names, inos };
        this.#opts.listings?.publish(at, listing);
        if (at === ino) root = listing;
      }
    } catch (err) {
      log.warn("cannot fetch directory", { digest: b3Display(digest), error: errorMessage(err) });
      throw new FsError(Errno.EIO);
    }
    if (!root) {
      log.warn("directory not found", { digest: b3Display(digest) });
      throw new FsError(Errno.EIO);
    }
    return root;
  }

  #lookupRoot(name: Uint8Array): Promise<number> {
    const key = nameKey(name);
    let p = this.#rootLookups.get(key);
    if (!p) {
      p = this.#resolveRoot(name.slice(), key).finally(() => this.#rootLookups.delete(key));
      this.#rootLookups.set(key, p);
    }
    return p;
  }

  async #resolveRoot(name: Uint8Array, key: string): Promise<number> {
    let digest: Uint8Array;
    try {
      digest = StorePath.parseBasenameBytes(name).digest;
    } catch {
      throw new FsError(Errno.ENOENT);
    }
    let node: NodeVariant | undefined;
    try {
      node = (await this.#svc.pathInfo.get(digest))?.node?.node;
      if (node) validateNode(node);
    } catch (err) {
      log.warn("root lookup failed", { name: key, error: errorMessage(err) });
      throw new FsError(Errno.EIO);
    }
    // The node's own name must match byte for byte
    // (docs/compatibility.md#mount-and-layout).
    if (!node || !bytesEqual(node.value.name, name)) throw new FsError(Errno.ENOENT);
    const ino = this.#inodes.intern(node);
    this.#rootNames.set(key, ino);
    return ino;
  }

  /**
   * The root entries after READDIR offset `offset`. Offsets are the
   * entries' keys, not positions, so a listing continues right wherever it
   * is answered: on another Worker, or after its snapshot was dropped (more
   * than {@linkcode MAX_ROOT_LISTINGS} open), a fresh snapshot is taken and
   * entered after the key the kernel last saw. Paths present throughout are
   * then listed exactly once, whatever was added or removed meanwhile.
   */
  async #readRoot(fh: number, offset: number): Promise<DirSlice> {
    if (!this.#opts.listRoot) throw new FsError(Errno.EPERM, "listing the root is disabled");
    let listing = this.#listings.get(fh);
    if (!listing) {
      listing = this.#listRoot();
      this.#listings.set(fh, listing);
      if (this.#listings.size > MAX_ROOT_LISTINGS) {
        const [oldFh] = this.#listings.keys();
        this.#listings.delete(oldFh);
      }
    }
    let l: RootListing;
    try {
      l = await listing;
    } catch (err) {
      // Not kept: the next READDIR tries again.
      if (this.#listings.get(fh) === listing) this.#listings.delete(fh);
      log.warn("listing the root failed", { error: errorMessage(err) });
      throw new FsError(Errno.EIO);
    }
    return { names: l.names, inos: l.inos, start: firstAbove(l.keys, offset), offsets: l.keys };
  }

  /** Every valid root entry the path info service lists, ordered by key. */
  async #listRoot(): Promise<RootListing> {
    const entries: { key: number; name: Uint8Array; ino: number }[] = [];
    for await (const info of this.#svc.pathInfo.list()) {
      const node = info.node?.node;
      if (!node || !isValidName(node.value.name)) continue;
      const ino = this.#inodes.intern(node);
      this.#rootNames.set(nameKey(node.value.name), ino);
      // A copy: the decoded name is a view into the whole stored PathInfo.
      const name = node.value.name.slice();
      entries.push({ key: rootKey(name), name, ino });
    }
    entries.sort((a, b) => a.key - b.key || compareBytes(a.name, b.name));
    // Two names whose keys collide (one in 2^52) still get distinct offsets.
    for (let i = 1; i < entries.length; i++) {
      if (entries[i].key <= entries[i - 1].key) entries[i].key = entries[i - 1].key + 1;
    }
    return {
      names: entries.map((e) => e.name),
      inos: entries.map((e) => e.ino),
      keys: entries.map((e) => e.key),
    };
  }
}

/**
 * A root entry's READDIR offset: 52 bits of the BLAKE3 digest of its name
 * (exact in a JavaScript number), never 0, which starts a listing. Derived
 * from the name alone, so every Worker and every snapshot agrees on it.
 */
function rootKey(name: Uint8Array): number {
  const d = blake3(name);
  const high = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4); // 20 bits
  const low = ((d[3] << 24) | (d[4] << 16) | (d[5] << 8) | d[6]) >>> 0; // 32 bits
  const key = high * 0x100000000 + low;
  return key === 0 ? 1 : key;
}

/** Index of the first of ascending `keys` above `offset`. */
function firstAbove(keys: number[], offset: number): number {
  let lo = 0, hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keys[mid] <= offset) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The inode of `name` in `dir` (binary search over the sorted names); ENOENT if absent. */
function findChild(dir: Listing, name: Uint8Array): number {
  const names = dir.names;
  let lo = 0, hi = names.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const c = compareBytes(names[mid], name);
    if (c === 0) return dir.inos[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  throw new FsError(Errno.ENOENT);
}

/** A name's bytes as a string key (latin-1, lossless). */
function nameKey(name: Uint8Array): string {
  let s = "";
  for (let i = 0; i < name.length; i++) s += String.fromCharCode(name[i]);
  return s;
}
