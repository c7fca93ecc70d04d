/**
 * The few libfuse3 and libc symbols the mount needs, loaded with
 * `Deno.dlopen`.
 *
 * libfuse only creates the session, mounts and unmounts (so non-root mounts
 * go through `fusermount3` and mount options behave as users expect). The
 * Workers speak the kernel protocol themselves on cloned `/dev/fuse` fds
 * with plain `read`/`write`/`writev`: libfuse's request loop would need
 * C→JS callbacks, which are slow across isolates, and it always replies on
 * the session fd while the kernel only accepts a reply on the fd that
 * delivered the request.
 *
 * @module
 */
import { errorMessage } from "../errors.ts";
import { cString, errno, openLibc } from "../libc.ts";

/** Shared object name of libfuse 3. */
const LIBFUSE = "libfuse3.so.3";

const fuseSymbols = {
  fuse_session_new: { parameters: ["buffer", "buffer", "usize", "pointer"], result: "pointer" },
  fuse_session_mount: { parameters: ["pointer", "buffer"], result: "i32" },
  fuse_session_unmount: { parameters: ["pointer"], result: "void" },
  fuse_session_destroy: { parameters: ["pointer"], result: "void" },
  fuse_session_fd: { parameters: ["pointer"], result: "i32" },
} as const;

// `read`/`write`/`writev` return ssize_t; they are declared i32 because the
// low 32 bits are exact for the sizes used here and a number avoids a BigInt
// per call on the hot path.
const libcSymbols = {
  open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  /** The same `read`, run on Deno's blocking pool so the isolate is not frozen while it waits. */
  read_async: {
    name: "read",
    parameters: ["i32", "buffer", "usize"],
    result: "i32",
    nonblocking: true,
  },
  write: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  writev: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  sched_getaffinity: { parameters: ["i32", "usize", "buffer"], result: "i32" },
  sched_setaffinity: { parameters: ["i32", "usize", "buffer"], result: "i32" },
} as const;

/** libfuse3 symbols. */
export type FuseLib = Deno.DynamicLibrary<typeof fuseSymbols>["symbols"];
type RawLibC = Deno.DynamicLibrary<typeof libcSymbols>["symbols"];
/**
 * libc symbols. `size_t` parameters also accept plain numbers at run time;
 * the types say so to keep BigInts off the hot path.
 */
export type LibC = Omit<RawLibC, "read" | "read_async" | "write"> & {
  read(fd: number, buf: Uint8Array, count: number): number;
  read_async(fd: number, buf: Uint8Array, count: number): Promise<number>;
  write(fd: number, buf: Uint8Array, count: number): number;
};

let fuseLib: FuseLib | undefined;
let libc: LibC | undefined;

/** Loads libfuse3 once per isolate; throws a readable error if it is missing. */
export function loadFuse(): FuseLib {
  if (!fuseLib) {
    try {
      fuseLib = Deno.dlopen(LIBFUSE, fuseSymbols).symbols;
    } catch (err) {
      throw new Error(`cannot load ${LIBFUSE} (install fuse3/libfuse3): ${errorMessage(err)}`);
    }
  }
  return fuseLib;
}

/** Loads libc once per isolate. */
export function loadLibc(): LibC {
  if (!libc) libc = openLibc(libcSymbols) as unknown as LibC;
  return libc;
}

/** Bytes of a glibc `cpu_set_t` (1024 CPUs). */
const CPU_SET_BYTES = 128;

/** The CPUs this thread may run on (`sched_getaffinity`), ascending; empty if unknown. */
export function allowedCpus(): number[] {
  const set = new Uint8Array(CPU_SET_BYTES);
  if (loadLibc().sched_getaffinity(0, BigInt(CPU_SET_BYTES), set) !== 0) return [];
  const cpus: number[] = [];
  for (let i = 0; i < CPU_SET_BYTES * 8; i++) if (set[i >> 3] & (1 << (i & 7))) cpus.push(i);
  return cpus;
}

/** Restricts the calling thread to `cpus`; returns the errno on failure, 0 on success. */
export function setThreadCpus(cpus: readonly number[]): number {
  const c = loadLibc();
  const set = new Uint8Array(CPU_SET_BYTES);
  for (const cpu of cpus) set[cpu >> 3] |= 1 << (cpu & 7);
  return c.sched_setaffinity(0, BigInt(CPU_SET_BYTES), set) === 0 ? 0 : errno();
}

/** Linux errno values used by the filesystem. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  EACCES: 13,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  EROFS: 30,
  ERANGE: 34,
  ENOSYS: 38,
  ELOOP: 40,
  ENODATA: 61,
  EPROTO: 71,
} as const;

/** `_IOR(229, 0, uint32_t)`: attach a new /dev/fuse fd to an existing session. */
export const FUSE_DEV_IOC_CLONE = 0x8004e500n;
/** `poll(2)` event bits. */
export const POLLIN = 0x1, POLLERR = 0x8, POLLHUP = 0x10, POLLNVAL = 0x20;

/**
 * `struct fuse_args { int argc; char **argv; int allocated; }` (24 bytes on
 * x86_64) for `argv`. `keep` must stay reachable while libfuse may read the
 * strings (until `fuse_session_new` returns).
 */
export function fuseArgs(argv: string[]): { args: Uint8Array<ArrayBuffer>; keep: unknown[] } {
  const strings = argv.map(cString);
  const pointers = new BigUint64Array(argv.length + 1);
  strings.forEach((s, i) => {
    pointers[i] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(s)));
  });
  const args = new Uint8Array(24);
  const view = new DataView(args.buffer);
  view.setInt32(0, argv.length, true);
  view.setBigUint64(8, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(pointers))), true);
  view.setInt32(16, 0, true);
  return { args, keep: [strings, pointers] };
}

/** `sizeof(struct fuse_lowlevel_ops)` in libfuse 3.14 (x86_64): the ops table passed empty. */
export const LOWLEVEL_OPS_SIZE = 352;
