/**
 * NARs uploaded by `nix copy --to` that wait for their narinfo.
 *
 * Nix uploads the NAR first (at `nar/<file hash>.nar[.ext]`) and the
 * narinfo naming it second. The NAR's contents are already in the blob and
 * directory services by then (content-addressed, so invisible and
 * harmless), but no PathInfo refers to them: that only happens once the
 * narinfo arrives and agrees with what was ingested. An entry serves every
 * narinfo naming its URL (store paths with identical contents share one)
 * until it expires; their number is bounded, so memory stays small.
 *
 * @module
 */
import type { NodeVariant } from "../castore/node.ts";

/** What ingesting one uploaded NAR file produced. */
export interface StagedNar {
  /** Root node (empty name). */
  node: NodeVariant;
  /** Size and SHA-256 of the uncompressed NAR. */
  narSize: bigint;
  narSha256: Uint8Array;
  /** Size and SHA-256 of the file as uploaded (possibly compressed). */
  fileSize: bigint;
  fileSha256: Uint8Array;
}

/** Staged NARs by upload path (e.g. `/nar/<hash>.nar.xz`). */
export class Staging {
  readonly #entries = new Map<string, { nar: StagedNar; expires: number }>();

  /**
   * @param ttlMs how long an upload waits for its narinfo
   * @param maxEntries bound on waiting uploads; the oldest are dropped first
   */
  constructor(readonly ttlMs = 60 * 60 * 1000, readonly maxEntries = 10_000) {}

  /** Records an ingested upload, replacing an earlier one at the same path. */
  put(path: string, nar: StagedNar, now = Date.now()): void {
    this.#entries.delete(path); // re-insert at the end: Map keeps insertion order
    this.#entries.set(path, { nar, expires: now + this.ttlMs });
    this.#sweep(now);
  }

  /** The upload at `path`, if it has not expired. */
  get(path: string, now = Date.now()): StagedNar | undefined {
    const entry = this.#entries.get(path);
    if (!entry) return undefined;
    if (entry.expires <= now) {
      this.#entries.delete(path);
      return undefined;
    }
    return entry.nar;
  }

  /** Number of waiting uploads. */
  get size(): number {
    return this.#entries.size;
  }

  #sweep(now: number): void {
    // Oldest first: insertion order is expiry order (constant TTL).
    for (const [path, entry] of this.#entries) {
      if (this.#entries.size <= this.maxEntries && entry.expires > now) break;
      this.#entries.delete(path);
    }
  }
}
