/**
 * What every module that calls libc through FFI (`Deno.dlopen`) shares:
 * the `open(2)` flags, whose values differ between the two architectures
 * Deno runs on, NUL-terminated strings for C, and `errno`.
 *
 * Each caller binds the symbols it needs with {@linkcode openLibc}, its own
 * `Deno.dlopen` of `libc.so.6` (the library is mapped once per process; a
 * handle only binds symbols), so a caller whose symbols do not load leaves
 * the others alone.
 *
 * @module
 */

/** The `open(2)` flags used here, as one architecture defines them. */
export interface OpenFlags {
  readonly O_RDONLY: number;
  readonly O_RDWR: number;
  readonly O_NONBLOCK: number;
  readonly O_CLOEXEC: number;
  readonly O_DIRECTORY: number;
  readonly O_NOFOLLOW: number;
}

/**
 * The flags of `arch`. x86_64 uses the kernel's generic values; aarch64
 * takes O_DIRECTORY and O_NOFOLLOW from arm's own list, where x86_64's
 * O_DIRECTORY value means O_DIRECT (and a directory opened with it fails
 * with EINVAL) and its O_NOFOLLOW value means O_LARGEFILE.
 */
export function openFlagsFor(arch: typeof Deno.build.arch): OpenFlags {
  const common = { O_RDONLY: 0, O_RDWR: 2, O_NONBLOCK: 0o4000, O_CLOEXEC: 0o2000000 };
  return arch === "aarch64"
    ? { ...common, O_DIRECTORY: 0o40000, O_NOFOLLOW: 0o100000 }
    : { ...common, O_DIRECTORY: 0o200000, O_NOFOLLOW: 0o400000 };
}

/** The `open(2)` flags of the running architecture. */
export const OPEN_FLAGS: OpenFlags = openFlagsFor(Deno.build.arch);

const encoder = new TextEncoder();

/** A NUL-terminated copy of `s` (text as UTF-8, or bytes as they are) for C. */
export function cString(s: string | Uint8Array): Uint8Array<ArrayBuffer> {
  const bytes = typeof s === "string" ? encoder.encode(s) : s;
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

const errnoSymbols = {
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const;

let errnoLib: Deno.DynamicLibrary<typeof errnoSymbols>["symbols"] | undefined;

/**
 * Binds `symbols` of libc (throws without FFI permission, or where libc is
 * not glibc's `libc.so.6`), and what {@linkcode errno} and
 * {@linkcode strerror} call along with them: bound only at the first
 * failure, the loading itself could overwrite `errno`.
 */
export function openLibc<const S extends Deno.ForeignLibraryInterface>(
  symbols: S,
): Deno.DynamicLibrary<S>["symbols"] {
  const lib = Deno.dlopen("libc.so.6", symbols).symbols;
  errnoLib ??= Deno.dlopen("libc.so.6", errnoSymbols).symbols;
  return lib;
}

function bound(): Deno.DynamicLibrary<typeof errnoSymbols>["symbols"] {
  if (!errnoLib) throw new Error("errno read before any libc call (openLibc)");
  return errnoLib;
}

/**
 * The calling thread's `errno`: valid right after a synchronous libc call
 * failed, before any other FFI call.
 */
export function errno(): number {
  return new Deno.UnsafePointerView(bound().__errno_location()!).getInt32();
}

/** libc's description of the error `code` (`strerror`). */
export function strerror(code: number): string {
  return new Deno.UnsafePointerView(bound().strerror(code)!).getCString();
}
