/**
 * Makes the pages under a buffer present before it is written, with one
 * `madvise(MADV_POPULATE_WRITE)` (Linux 5.14+) instead of one page fault
 * per 4 KiB page during the write.
 *
 * A cold read through the mount writes every chunk into shared-cache
 * memory that was never touched, and each first touch of a page is a fault.
 * On a paravirtualised guest a fault is expensive: a 1 GiB cold read spent
 * about a fifth of its samples in the fault path. Populating a chunk's
 * pages in one call took the cold read from 3.2–3.3 s to 2.5–2.6 s there
 * (docs/architecture.md, "Data flow: FUSE read").
 *
 * Best effort: without FFI, on an older kernel (`EINVAL`) or on any other
 * failure it turns itself off, and the pages fault in as before.
 *
 * @module
 */
import { openLibc } from "../libc.ts";

const MADV_POPULATE_WRITE = 23;
const PAGE = 4096n;

let madvise: ((addr: Deno.PointerValue, len: bigint, advice: number) => number) | null | undefined;

function bind(): typeof madvise {
  try {
    const lib = openLibc({ madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" } });
    return lib.madvise;
  } catch {
    return null; // no FFI permission, or no glibc
  }
}

/**
 * Populates the whole pages inside `view` for writing (the partial pages at
 * either end fault in as usual). Returns whether it did.
 */
export function prefaultForWrite(view: Uint8Array): boolean {
  if (madvise === undefined) madvise = bind();
  if (!madvise || view.length < Number(PAGE)) return false;
  const address = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(view)));
  const start = (address + PAGE - 1n) / PAGE * PAGE;
  const end = (address + BigInt(view.length)) / PAGE * PAGE;
  if (end <= start) return false;
  if (madvise(Deno.UnsafePointer.create(start), end - start, MADV_POPULATE_WRITE) !== 0) {
    madvise = null;
    return false;
  }
  return true;
}
