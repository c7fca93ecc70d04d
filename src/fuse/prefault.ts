/**
 * Makes the pages under a buffer present before it is written, with one
 * `madvise(MADV_POPULATE_WRITE)` (Linux 5.14+) instead of one page fault
 * per page during the write.
 *
 * A cold read through the mount writes every chunk into shared-cache
 * memory that was never touched, and each first touch of a page is a fault.
 * On a paravirtualised guest a fault is expensive: a 1 GiB cold read spent
 * about a fifth of its samples in the fault path. Populating a chunk's
 * pages in one call took the cold read from 3.79–3.95 s to 3.02–3.08 s
 * there (docs/architecture.md, "Data flow: FUSE read").
 *
 * Best effort: without FFI, on an older kernel (`EINVAL`) or on any other
 * failure it turns itself off (saying why at debug level), and the pages
 * fault in as before.
 *
 * @module
 */
import { errno, openLibc, strerror } from "../libc.ts";
import { log } from "../log.ts";

const MADV_POPULATE_WRITE = 23;
const SC_PAGESIZE = 30;

interface Bound {
  madvise(addr: Deno.PointerValue, len: bigint, advice: number): number;
  page: bigint;
}

/** `undefined` until first use, `null` once turned off. */
let bound: Bound | null | undefined;

function bind(): Bound | null {
  try {
    const lib = openLibc({
      madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
      sysconf: { parameters: ["i32"], result: "i64" },
    });
    const page = BigInt(lib.sysconf(SC_PAGESIZE));
    if (page <= 0n) return null;
    return { madvise: lib.madvise, page };
  } catch (err) {
    log.debug("prefaulting off: libc not callable", { error: String(err) });
    return null; // no FFI permission, or no glibc
  }
}

/**
 * Populates the whole pages inside `view` for writing (the partial pages at
 * either end fault in as usual). Returns whether it did.
 */
export function prefaultForWrite(view: Uint8Array): boolean {
  if (bound === undefined) bound = bind();
  if (!bound || view.length === 0) return false;
  const { page } = bound;
  const address = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(view)));
  const start = (address + page - 1n) / page * page;
  const end = (address + BigInt(view.length)) / page * page;
  if (end <= start) return false;
  if (bound.madvise(Deno.UnsafePointer.create(start), end - start, MADV_POPULATE_WRITE) !== 0) {
    log.debug("prefaulting off: madvise(MADV_POPULATE_WRITE) failed", {
      error: strerror(errno()),
    });
    bound = null;
    return false;
  }
  return true;
}
