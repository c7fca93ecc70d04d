/**
 * Byte-level access to directories through libc, for the import walk
 * (docs/architecture.md#names-are-bytes): it reaches file names that are
 * not valid UTF-8, and lists and lstats a directory more cheaply than
 * Deno's string APIs.
 *
 * Deno's path APIs take and return strings: a directory listing turns such
 * a name into U+FFFD, and no string path reaches the file again. Here
 * names stay bytes: a directory is an open descriptor, its entries are
 * listed with `getdents64`, and every entry is reached relative to it
 * (`statx`, `readlinkat`, `openat`), so even a tree below a name that no
 * string can spell is walked. This needs FFI (`--allow-ffi`) and Linux;
 * {@linkcode rawFsUnavailable} says why it cannot run otherwise.
 *
 * All calls are synchronous, like the walk's own metadata calls.
 *
 * @module
 */
import { errorMessage } from "../../errors.ts";
import { cString, errno, OPEN_FLAGS, openLibc, strerror } from "../../libc.ts";

const libcSymbols = {
  openat: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  // off_t result declared i32: only 0 or -1 is looked at.
  lseek: { parameters: ["i32", "i64", "i32"], result: "i32" },
  // ssize_t results are declared i32: the low 32 bits are exact for the
  // buffer sizes used here (and keep -1), and a number avoids a BigInt.
  getdents64: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  readlinkat: { parameters: ["i32", "buffer", "buffer", "usize"], result: "i32" },
  statx: { parameters: ["i32", "buffer", "i32", "u32", "buffer"], result: "i32" },
} as const;

type Libc = Deno.DynamicLibrary<typeof libcSymbols>["symbols"];

const { O_RDONLY, O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK } = OPEN_FLAGS;
const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
/** `statx` of the descriptor itself (the name is empty). */
const AT_EMPTY_PATH = 0x1000;
/** Type, mode, nlink, uid, gid, times, inode, size, blocks. */
const STATX_BASIC_STATS = 0x7ff;
const EINTR = 4;
const SEEK_SET = 0;
/** `sizeof(struct statx)`, the same on every architecture. */
const STATX_SIZE = 256;
/** Buffer for `getdents64`: many entries per call. */
const DENTS_BUFFER = 32 * 1024;
/** First buffer for `readlinkat` (PATH_MAX); grown if a target fills it. */
const LINK_BUFFER = 4096;

let libc: Libc | undefined;
let unavailable: string | undefined;

function load(): Libc {
  if (libc) return libc;
  if (unavailable === undefined) {
    if (Deno.build.os !== "linux") {
      unavailable = `not supported on ${Deno.build.os}`;
    } else {
      try {
        libc = openLibc(libcSymbols);
        return libc;
      } catch (err) {
        unavailable = `cannot load libc.so.6 (needs --allow-ffi): ${errorMessage(err)}`;
      }
    }
  }
  throw new RawFsError(`byte-level file access is unavailable: ${unavailable}`, 0);
}

/**
 * Why byte-level access cannot be used in this process (no FFI permission,
 * not Linux), or `undefined` if it can.
 */
export function rawFsUnavailable(): string | undefined {
  try {
    load();
    return undefined;
  } catch {
    return unavailable;
  }
}

/** A failed libc call: the operation, the name (escaped) and the OS error. */
export class RawFsError extends Error {
  override name = "RawFsError";
  /** The `errno` of the call (0 if it could not be made at all). */
  constructor(message: string, readonly errno: number) {
    super(message);
  }
}

/**
 * Throws the error of the libc call that just failed. `errno` is read
 * first, before `path` (or the function giving it) can run other code.
 */
function fail(op: string, path: string | (() => string)): never {
  const code = errno();
  const shown = typeof path === "string" ? path : path();
  throw new RawFsError(`${op} '${shown}': ${strerror(code)} (os error ${code})`, code);
}

/** Longest name spelt without the decoder (an argument per byte). */
const ASCII_FAST_PATH = 255;
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Whether every byte of `bytes` is ASCII. */
function isAscii(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] >= 0x80) return false;
  return true;
}

/** `name` as a string if it is valid UTF-8 (so a string path can spell it), else `undefined`. */
export function utf8Name(name: Uint8Array): string | undefined {
  // Most names are ASCII, spelt here without a call into the decoder. A
  // plain loop and `apply`, not `every` and a spread: the spread's iterator
  // cost 1.4 µs a name, 5 times the rest, and a walk names every entry.
  if (name.length <= ASCII_FAST_PATH && isAscii(name)) {
    return String.fromCharCode.apply(null, name as unknown as number[]);
  }
  try {
    return strictUtf8.decode(name);
  } catch {
    return undefined;
  }
}

/**
 * `name` for messages: as text if it is valid UTF-8, else with every byte
 * outside printable ASCII (and `\`) written as `\xNN`.
 */
export function displayName(name: Uint8Array): string {
  const text = utf8Name(name);
  if (text !== undefined) return text;
  let s = "";
  for (const b of name) {
    s += b >= 0x20 && b < 0x7f && b !== 0x5c
      ? String.fromCharCode(b)
      : `\\x${b.toString(16).padStart(2, "0")}`;
  }
  return s;
}

/** What `lstat` says of an entry, in the units of `Deno.FileInfo`. */
export interface RawStat {
  /** `st_mode`: file type and permission bits. */
  mode: number;
  size: number;
  /** `st_dev` encoded as glibc's `makedev` does (as in `Deno.FileInfo.dev`). */
  dev: number;
  /**
   * `st_ino`, or -1 where a number cannot hold it exactly (2^53 and
   * above: overlayfs with `xino`, some network filesystems). Two files
   * must never share one, so such a file counts as unidentified.
   */
  ino: number;
  /** Modification time, whole milliseconds since the epoch. */
  mtimeMs: number;
  /**
   * Status change time, whole milliseconds since the epoch (`Deno.FileInfo`
   * rounds it to seconds; the stat cache only compares a file with itself).
   */
  ctimeMs: number;
}

/** glibc's `makedev`: the `dev_t` that `stat` reports. */
function makedev(major: number, minor: number): number {
  // Without the major's high bits the result stays below 2^53: plain numbers
  // give it exactly, and no BigInt is made per lstat.
  if (major <= 0xfff) return (minor - (minor & 0xff)) * 4096 + major * 256 + (minor & 0xff);
  const ma = BigInt(major), mi = BigInt(minor);
  return Number(
    ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) |
      (mi & 0xffn),
  );
}

/** The u64 at `at` of `v` as a number (exact below 2^53), without a BigInt. */
function u64(v: DataView, at: number): number {
  return v.getUint32(at, true) + v.getUint32(at + 4, true) * 2 ** 32;
}

/** The u64 at `at` of `v` if a number holds it exactly, else -1. */
function exactU64(v: DataView, at: number): number {
  return v.getUint32(at + 4, true) < 2 ** 21 ? u64(v, at) : -1;
}

/** The `statx` result in the shared buffer, as a {@linkcode RawStat}. */
function statxResult(): RawStat {
  // struct statx: fixed layout on every architecture.
  const v = statxView;
  return {
    mode: v.getUint16(28, true),
    ino: exactU64(v, 32),
    size: u64(v, 40),
    ctimeMs: statxMs(v, 96),
    mtimeMs: statxMs(v, 112),
    dev: makedev(v.getUint32(136, true), v.getUint32(140, true)),
  };
}

/** A statx timestamp at `at` of `v` in whole milliseconds since the epoch. */
function statxMs(v: DataView, at: number): number {
  const seconds = v.getUint32(at, true) + v.getInt32(at + 4, true) * 2 ** 32;
  return seconds * 1000 + Math.floor(v.getUint32(at + 8, true) / 1e6);
}

/**
 * One buffer for every `statx` result, one for the NUL-terminated name
 * asked for and one for `getdents64`: a walk makes one call per entry, and fresh buffers per call
 * were most of its garbage. Calls are synchronous, so nothing else uses
 * them meanwhile.
 */
const statxBuffer = new Uint8Array(STATX_SIZE);
const EMPTY_NAME = new Uint8Array(1);
const statxView = new DataView(statxBuffer.buffer);
let nameBuffer = new Uint8Array(256);
const dentsBuffer = new Uint8Array(DENTS_BUFFER);
const dentsView = new DataView(dentsBuffer.buffer);

/** `name` NUL-terminated in the shared name buffer. */
function sharedCName(name: Uint8Array): Uint8Array<ArrayBuffer> {
  if (name.length >= nameBuffer.length) nameBuffer = new Uint8Array(name.length + 1);
  nameBuffer.set(name);
  nameBuffer[name.length] = 0;
  return nameBuffer;
}

/** A regular file opened for reading; reads like a `Deno.FsFile`. */
export class RawFile {
  readonly #c: Libc;
  #fd: number;
  /** The file's path, for messages. */
  readonly path: string;

  /** Wraps an open descriptor (owned from now on). */
  constructor(c: Libc, fd: number, path: string) {
    this.#c = c;
    this.#fd = fd;
    this.path = path;
  }

  /** What `fstat` says of the open file. */
  stat(): RawStat {
    if (this.#c.statx(this.#fd, EMPTY_NAME, AT_EMPTY_PATH, STATX_BASIC_STATS, statxBuffer) !== 0) {
      fail("fstat", this.path);
    }
    return statxResult();
  }

  /** Reads into `buf`; the number of bytes read, or `null` at the end of the file. */
  readSync(buf: Uint8Array): number | null {
    if (buf.length === 0) return 0;
    while (true) {
      const n = this.#c.read(this.#fd, buf, BigInt(buf.length));
      if (n > 0) return n;
      if (n === 0) return null;
      if (errno() !== EINTR) fail("read", this.path);
    }
  }

  /** Closes the descriptor (once). */
  close(): void {
    if (this.#fd >= 0) this.#c.close(this.#fd);
    this.#fd = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * An open directory whose entries are named by bytes. Close it when done:
 * it holds a file descriptor.
 */
export class RawDir {
  readonly #c: Libc;
  #fd: number;
  /** How the directory was reached, for messages. */
  readonly path: string;

  private constructor(c: Libc, fd: number, path: string) {
    this.#c = c;
    this.#fd = fd;
    this.path = path;
  }

  /** Opens the directory at `path` (a symlink there is not followed). */
  static open(path: string): RawDir {
    const c = load();
    const fd = c.openat(AT_FDCWD, cString(path), DIR_FLAGS, 0);
    if (fd < 0) fail("open", path);
    return new RawDir(c, fd, path);
  }

  /** The target of the symlink at `path`, as bytes. */
  static readLink(path: string): Uint8Array {
    const c = load();
    return readLinkAt(c, AT_FDCWD, new TextEncoder().encode(path), path);
  }

  /** Opens the subdirectory `name` (not following a symlink). */
  openDir(name: Uint8Array): RawDir {
    const fd = this.#c.openat(this.#live(), cString(name), DIR_FLAGS, 0);
    if (fd < 0) fail("open", () => this.#shown(name));
    return new RawDir(this.#c, fd, this.#shown(name));
  }

  /** The names of the entries, without `.` and `..`, in the order the filesystem gives them. */
  names(): Uint8Array[] {
    const fd = this.#live();
    // From the start, even if the directory was listed before.
    if (this.#c.lseek(fd, 0n, SEEK_SET) < 0) fail("lseek", this.path);
    const buf = dentsBuffer;
    const view = dentsView;
    const names: Uint8Array[] = [];
    while (true) {
      const n = this.#c.getdents64(fd, buf, BigInt(buf.length));
      if (n < 0) {
        if (errno() === EINTR) continue;
        fail("getdents64", this.path);
      }
      if (n === 0) break;
      // The names are views into one copy of what this call returned: one
      // buffer per call, not one per name.
      const copy = buf.slice(0, n);
      // struct linux_dirent64: u64 d_ino, s64 d_off, u16 d_reclen, u8 d_type, char d_name[].
      for (let off = 0; off < n;) {
        const reclen = view.getUint16(off + 16, true);
        const start = off + 19;
        let end = start;
        while (end < off + reclen && buf[end] !== 0) end++;
        const name = copy.subarray(start, end);
        if (!isDotOrDotDot(name)) names.push(name);
        off += reclen;
      }
    }
    return names;
  }

  /** What `lstat` says of the entry `name` (a symlink is not followed). */
  lstat(name: Uint8Array): RawStat {
    const buf = statxBuffer;
    if (
      this.#c.statx(
        this.#live(),
        sharedCName(name),
        AT_SYMLINK_NOFOLLOW,
        STATX_BASIC_STATS,
        buf,
      ) !==
        0
    ) {
      fail("lstat", () => this.#shown(name));
    }
    return statxResult();
  }

  /** The target of the symlink `name`, as bytes. */
  readLink(name: Uint8Array): Uint8Array {
    return readLinkAt(this.#c, this.#live(), name, this.#shown(name));
  }

  /**
   * Opens the entry `name` for reading: not following a symlink, and
   * without waiting for a writer if it is a FIFO now (the caller checks
   * with {@linkcode RawFile.stat} that it is still the file it listed).
   */
  openFile(name: Uint8Array): RawFile {
    const fd = this.#c.openat(
      this.#live(),
      cString(name),
      O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK,
      0,
    );
    if (fd < 0) fail("open", () => this.#shown(name));
    return new RawFile(this.#c, fd, this.#shown(name));
  }

  /** Closes the descriptor (once); entries can no longer be reached through it. */
  close(): void {
    if (this.#fd >= 0) this.#c.close(this.#fd);
    this.#fd = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #live(): number {
    if (this.#fd < 0) throw new RawFsError(`${this.path}: directory already closed`, 0);
    return this.#fd;
  }

  #shown(name: Uint8Array): string {
    return `${this.path}/${displayName(name)}`;
  }
}

const DIR_FLAGS = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;

function isDotOrDotDot(name: Uint8Array): boolean {
  return name[0] === 0x2e && (name.length === 1 || (name.length === 2 && name[1] === 0x2e));
}

function readLinkAt(c: Libc, dirFd: number, name: Uint8Array, shown: string): Uint8Array {
  const path = cString(name);
  for (let size = LINK_BUFFER;; size *= 2) {
    const buf = new Uint8Array(size);
    const n = c.readlinkat(dirFd, path, buf, BigInt(size));
    if (n < 0) fail("readlink", shown);
    // A full buffer may mean a cut target: try again with a larger one.
    if (n < size) return buf.slice(0, n);
  }
}
