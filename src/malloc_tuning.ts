/**
 * Tells glibc's allocator to keep freed memory for reuse instead of giving
 * it back to the kernel at once.
 *
 * By default glibc serves blocks above a threshold that adapts up to about
 * the largest block freed (a chunk buffer: 0.25–1 MiB) with their own
 * `mmap`, and trims the heap once twice that is free at its top. A daemon
 * streaming NARs allocates and frees such buffers all the time, so their
 * pages went back to the kernel and were faulted in again for the next
 * chunk: 22,000–33,000 page faults per 512 MiB NAR. Where a first touch
 * is expensive (paravirtualised guests that hand freed memory to the host)
 * that was half of the daemon's CPU. With blocks up to 32 MiB taken from
 * the heap and up to 64 MiB kept free at its top, the same download faults
 * a few hundred times (docs/architecture.md, "Allocator settings").
 *
 * Best effort: without FFI or glibc nothing changes, and settings the user
 * gave glibc (`MALLOC_*` variables, `GLIBC_TUNABLES`) are left alone.
 *
 * @module
 */
import { openLibc } from "./libc.ts";

const M_TRIM_THRESHOLD = -1;
const M_MMAP_THRESHOLD = -3;
/** glibc's largest mmap threshold on 64-bit systems. */
const MMAP_THRESHOLD_BYTES = 32 << 20;
const TRIM_THRESHOLD_BYTES = 64 << 20;

/** Applies the settings above once per process; returns whether they were applied. */
export function tuneMalloc(): boolean {
  try {
    const env = Deno.env.toObject();
    if (env.GLIBC_TUNABLES || Object.keys(env).some((k) => k.startsWith("MALLOC_"))) return false;
    if (Deno.build.os !== "linux") return false;
    const { mallopt } = openLibc({ mallopt: { parameters: ["i32", "i32"], result: "i32" } });
    // mallopt returns 1 on success.
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) === 1 &&
      mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) === 1;
  } catch {
    return false; // no FFI or env permission, or not glibc
  }
}
