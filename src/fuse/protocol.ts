/**
 * The FUSE kernel protocol (`linux/fuse.h`), the read-only subset the mount
 * speaks: where request fields lie, and the reply structs. Everything is
 * little-endian (x86_64/aarch64). 64-bit fields are read and written as two
 * 32-bit halves so hot paths never allocate BigInts; inode numbers, offsets
 * and sizes stay below 2^53.
 *
 * @module
 */

/** Opcodes (`enum fuse_opcode`). */
export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  COPY_FILE_RANGE: 47,
  TMPFILE: 51,
} as const;

/** Opcodes that would modify the filesystem: all answered with EROFS. */
export const MUTATING_OPS: ReadonlySet<number> = new Set([
  Op.SETATTR,
  Op.SYMLINK,
  Op.MKNOD,
  Op.MKDIR,
  Op.UNLINK,
  Op.RMDIR,
  Op.RENAME,
  Op.LINK,
  Op.WRITE,
  Op.SETXATTR,
  Op.REMOVEXATTR,
  Op.CREATE,
  Op.FALLOCATE,
  Op.RENAME2,
  Op.COPY_FILE_RANGE,
  Op.TMPFILE,
]);

/** `FUSE_INIT` flags we may ask for. */
const InitFlag = {
  ASYNC_READ: 1 << 0,
  BIG_WRITES: 1 << 5,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
} as const;

/** `fuse_open_out.open_flags`. */
export const FOPEN_KEEP_CACHE = 1 << 1;

/** Protocol version we speak (7.31 has everything used here; replies use the 7.36+ INIT layout). */
const KERNEL_MAJOR = 7, KERNEL_MINOR = 38;

/** Size of `fuse_in_header`; each opcode's arguments follow it. */
const IN_HEADER_SIZE = 40;

/** Struct sizes of replies. */
export const OUT_HEADER_SIZE = 16,
  ENTRY_OUT_SIZE = 128,
  ATTR_OUT_SIZE = 104,
  OPEN_OUT_SIZE = 16,
  INIT_OUT_SIZE = 64,
  STATFS_OUT_SIZE = 80,
  GETXATTR_OUT_SIZE = 8,
  DIRENT_SIZE = 24;
const DIRENTPLUS_SIZE = ENTRY_OUT_SIZE + DIRENT_SIZE;

/*
 * Offsets of the request fields the mount reads, in bytes from the start of
 * the request, after the structs of `linux/fuse.h`. Every request field is
 * read through these names, so each layout is written down once, beside its
 * C declaration. 64-bit fields are read with `get64`.
 */

/**
 * `struct fuse_in_header`: `u32 len, u32 opcode, u64 unique, u64 nodeid,
 * u32 uid, u32 gid, u32 pid, u16 total_extlen, u16 padding`.
 */
export const IN_HEADER = {
  opcode: 4,
  /** `unique`, as two 32-bit halves: a reply only echoes it. */
  uniqueLo: 8,
  uniqueHi: 12,
  nodeid: 16,
} as const;

/**
 * `struct fuse_init_in`: `u32 major, u32 minor, u32 max_readahead,
 * u32 flags, u32 flags2, u32 unused[11]`.
 */
const INIT_IN = {
  major: IN_HEADER_SIZE,
  minor: IN_HEADER_SIZE + 4,
  maxReadahead: IN_HEADER_SIZE + 8,
  flags: IN_HEADER_SIZE + 12,
} as const;

/** LOOKUP's argument: the NUL-terminated name, right after the header. */
export const LOOKUP_IN = { name: IN_HEADER_SIZE } as const;

/** `struct fuse_open_in` (OPEN): `u32 flags, u32 open_flags`. */
export const OPEN_IN = { flags: IN_HEADER_SIZE } as const;

/**
 * `struct fuse_read_in` (READ, READDIR, READDIRPLUS): `u64 fh, u64 offset,
 * u32 size, u32 read_flags, u64 lock_owner, u32 flags, u32 padding`.
 */
export const READ_IN = {
  fh: IN_HEADER_SIZE,
  offset: IN_HEADER_SIZE + 8,
  size: IN_HEADER_SIZE + 16,
} as const;

/**
 * `struct fuse_release_in` (RELEASE, RELEASEDIR): `u64 fh, u32 flags,
 * u32 release_flags, u64 lock_owner`.
 */
export const RELEASE_IN = { fh: IN_HEADER_SIZE } as const;

/**
 * `struct fuse_getxattr_in` (GETXATTR, LISTXATTR): `u32 size, u32 padding`;
 * GETXATTR's NUL-terminated attribute name follows it.
 */
export const GETXATTR_IN = { size: IN_HEADER_SIZE, name: IN_HEADER_SIZE + 8 } as const;

/** File type bits of `st_mode`. */
const S_IFMT = 0o170000;
/** File types of `st_mode`. */
export const S_IFDIR = 0o040000, S_IFREG = 0o100000, S_IFLNK = 0o120000;

/** Writes `n` (< 2^53) as a u64 without BigInt. */
function put64(view: DataView, offset: number, n: number): void {
  view.setUint32(offset, n >>> 0, true);
  view.setUint32(offset + 4, Math.floor(n / 0x100000000), true);
}

/** Reads a u64 as a number (exact below 2^53). */
export function get64(view: DataView, offset: number): number {
  return view.getUint32(offset, true) + view.getUint32(offset + 4, true) * 0x100000000;
}

/** Attributes of one inode, as the filesystem reports them. */
export interface Attr {
  ino: number;
  /** `st_mode`: type and permission bits. */
  mode: number;
  size: number;
  blocks: number;
  blksize: number;
  nlink: number;
}

/**
 * Attribute and entry cache timeout: the store never changes under a path,
 * so the kernel may cache forever (2^32-1 s is "forever" after clamping).
 */
const FOREVER_SECS = 0xffffffff;

/** Writes `fuse_attr` (88 bytes); times, owner and rdev are all 0. */
function putAttr(view: DataView, o: number, a: Attr): void {
  put64(view, o, a.ino);
  put64(view, o + 8, a.size);
  put64(view, o + 16, a.blocks);
  for (let i = 24; i < 60; i += 4) view.setUint32(o + i, 0, true); // a/m/ctime + nsecs
  view.setUint32(o + 60, a.mode, true);
  view.setUint32(o + 64, a.nlink, true);
  view.setUint32(o + 68, 0, true); // uid
  view.setUint32(o + 72, 0, true); // gid
  view.setUint32(o + 76, 0, true); // rdev
  view.setUint32(o + 80, a.blksize, true);
  view.setUint32(o + 84, 0, true); // flags
}

/** Writes `fuse_entry_out` (128 bytes) with infinite timeouts. */
export function putEntryOut(view: DataView, o: number, a: Attr): void {
  put64(view, o, a.ino); // nodeid
  put64(view, o + 8, 0); // generation
  put64(view, o + 16, FOREVER_SECS); // entry_valid
  put64(view, o + 24, FOREVER_SECS); // attr_valid
  view.setUint32(o + 32, 0, true);
  view.setUint32(o + 36, 0, true);
  putAttr(view, o + 40, a);
}

/** Writes `fuse_attr_out` (104 bytes) with an infinite timeout. */
export function putAttrOut(view: DataView, o: number, a: Attr): void {
  put64(view, o, FOREVER_SECS);
  view.setUint32(o + 8, 0, true);
  view.setUint32(o + 12, 0, true);
  putAttr(view, o + 16, a);
}

/**
 * Appends a `fuse_dirent` for `name` at `o` if it fits before `end`.
 * `next` is the offset a later READDIR passes to continue after this entry.
 * Returns the bytes used (8-aligned), or 0 if it does not fit.
 */
export function putDirent(
  buf: Uint8Array,
  view: DataView,
  o: number,
  end: number,
  ino: number,
  next: number,
  name: Uint8Array,
  mode: number,
): number {
  const len = (DIRENT_SIZE + name.length + 7) & ~7;
  if (o + len > end) return 0;
  put64(view, o, ino);
  put64(view, o + 8, next);
  view.setUint32(o + 16, name.length, true);
  view.setUint32(o + 20, (mode & S_IFMT) >>> 12, true);
  buf.set(name, o + DIRENT_SIZE);
  buf.fill(0, o + DIRENT_SIZE + name.length, o + len);
  return len;
}

/** Like {@linkcode putDirent} for READDIRPLUS: a `fuse_entry_out` followed by the dirent. */
export function putDirentPlus(
  buf: Uint8Array,
  view: DataView,
  o: number,
  end: number,
  a: Attr,
  next: number,
  name: Uint8Array,
): number {
  const len = (DIRENTPLUS_SIZE + name.length + 7) & ~7;
  if (o + len > end) return 0;
  putEntryOut(view, o, a);
  return ENTRY_OUT_SIZE + putDirent(buf, view, o + ENTRY_OUT_SIZE, end, a.ino, next, name, a.mode);
}

/** Parameters of our INIT reply. */
export interface InitParams {
  /** Largest READ the kernel may send, in 4 KiB pages. */
  maxPages: number;
  maxReadahead: number;
}

/**
 * Builds `fuse_init_out` (64 bytes) at `o` for the kernel's `fuse_init_in`
 * in the INIT request `req`. Returns an error string if the kernel speaks
 * an unsupported major version.
 */
export function putInitOut(
  req: DataView,
  view: DataView,
  o: number,
  p: InitParams,
): string | undefined {
  const major = req.getUint32(INIT_IN.major, true);
  const minor = req.getUint32(INIT_IN.minor, true);
  if (major !== KERNEL_MAJOR || minor < 23) {
    return `unsupported FUSE kernel protocol ${major}.${minor} (need 7.23 or later)`;
  }
  const kernelReadahead = req.getUint32(INIT_IN.maxReadahead, true);
  const kernelFlags = req.getUint32(INIT_IN.flags, true);
  const want = InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.DO_READDIRPLUS |
    InitFlag.READDIRPLUS_AUTO | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES |
    InitFlag.CACHE_SYMLINKS;
  for (let i = 0; i < INIT_OUT_SIZE; i += 4) view.setUint32(o + i, 0, true);
  view.setUint32(o, KERNEL_MAJOR, true);
  view.setUint32(o + 4, KERNEL_MINOR, true);
  view.setUint32(o + 8, Math.min(kernelReadahead, p.maxReadahead), true);
  view.setUint32(o + 12, (kernelFlags & want) >>> 0, true);
  // max_background / congestion_threshold 0: kernel defaults.
  view.setUint32(o + 20, p.maxPages * 4096, true); // max_write
  view.setUint32(o + 24, 1, true); // time_gran
  view.setUint16(o + 28, p.maxPages, true);
  return undefined;
}

/** The longest name a path can hold (Linux's NAME_MAX), what statfs reports. */
export const NAME_MAX = 255;

/** Writes `fuse_statfs_out` (80 bytes): an empty, read-only filesystem. */
export function putStatfsOut(view: DataView, o: number): void {
  for (let i = 0; i < STATFS_OUT_SIZE; i += 4) view.setUint32(o + i, 0, true);
  view.setUint32(o + 40, 4096, true); // bsize
  view.setUint32(o + 44, NAME_MAX, true); // namelen
  view.setUint32(o + 48, 4096, true); // frsize
}

/** The bytes of a NUL-terminated string in a request, without the NUL. */
export function cStringAt(buf: Uint8Array, start: number, end: number): Uint8Array {
  const nul = buf.indexOf(0, start);
  return buf.subarray(start, nul < 0 || nul > end ? end : nul);
}
