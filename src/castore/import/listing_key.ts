/**
 * Listing keys: what identifies a directory's contents without reading
 * them, for the stat cache's directory records
 * (docs/architecture.md#re-imports-the-stat-cache).
 *
 * The key is a BLAKE3 hash over the directory's entries in name order:
 * each entry's name and kind, then for a regular file or symlink what
 * lstat identifies it by (device, inode, size, mtime, ctime, executable
 * bit), and for a subdirectory its digest and size. A symlink cannot be
 * retargeted in place, so its identity stands for its target, as a file's
 * stands for its contents. Subdirectories enter by digest, so a change
 * anywhere below a directory changes its key and the keys above it.
 *
 * @module
 */
import { blake3, type Digest } from "../digest.ts";
import type { FileIdentity } from "./fs.ts";

/** One entry of a listing, as the key sees it. */
export interface ListingEntry {
  name: Uint8Array;
  /** "file", "symlink" or "directory". */
  kind: string;
  /** What lstat said (for a file or symlink), and when it ran (ms, for every entry). */
  info: FileIdentity & { examinedAt: number };
  /** The subdirectory's node (for a directory). */
  directory?: { digest: Digest; size: bigint };
}

/** A listing's key, how recent its newest entry is, and when it was examined. */
export interface ListingKey {
  key: Digest;
  /**
   * The latest mtime or ctime (ms) of its files and symlinks (`-Infinity`
   * with none), for the cache's "changed too recently" rule; `Infinity`
   * if one of them has no inode or times to identify it by.
   */
  newestChange: number;
  /** When the earliest of its entries was lstat'ed (ms; `Infinity` with none). */
  examinedAt: number;
}

const KIND_CODE: Record<string, number> = { file: 1, symlink: 2, directory: 3 };
/** Bytes of an entry besides its name: length, kind, then five numbers and a flag, or a digest and a size. */
const ENTRY_FIXED = 4 + 1 + 5 * 8 + 1;

/**
 * One buffer for every key: a key is built in one go, after the
 * subdirectories' nodes are known, so builds never interleave.
 */
let buffer = new Uint8Array(64 * 1024);
let view = new DataView(buffer.buffer);

/** The key of a listing whose `entries` are sorted by name (bytewise, unique). */
export function listingKey(entries: readonly ListingEntry[]): ListingKey {
  let need = 0;
  for (const e of entries) need += ENTRY_FIXED + e.name.length;
  if (need > buffer.length) {
    buffer = new Uint8Array(need * 2);
    view = new DataView(buffer.buffer);
  }
  let at = 0;
  let newestChange = -Infinity;
  let examinedAt = Infinity;
  for (const e of entries) {
    examinedAt = Math.min(examinedAt, e.info.examinedAt);
    view.setUint32(at, e.name.length, true);
    buffer.set(e.name, at + 4);
    at += 4 + e.name.length;
    const code = KIND_CODE[e.kind];
    if (code === undefined) throw new Error(`no listing key for a ${e.kind}`);
    buffer[at++] = code;
    if (e.directory) {
      buffer.set(e.directory.digest, at);
      view.setBigUint64(at + 32, e.directory.size, true);
      at += 40;
      continue;
    }
    const i = e.info;
    view.setFloat64(at, i.dev, true);
    view.setFloat64(at + 8, i.ino, true);
    view.setFloat64(at + 16, i.size, true);
    view.setFloat64(at + 24, i.mtimeMs, true);
    view.setFloat64(at + 32, i.ctimeMs, true);
    buffer[at + 40] = i.executable ? 1 : 0;
    at += 41;
    // The walk records -1 where lstat gave no inode or times.
    const identified = i.ino >= 0 && i.mtimeMs >= 0 && i.ctimeMs >= 0;
    newestChange = Math.max(newestChange, identified ? Math.max(i.mtimeMs, i.ctimeMs) : Infinity);
  }
  return { key: blake3(buffer.subarray(0, at)), newestChange, examinedAt };
}
