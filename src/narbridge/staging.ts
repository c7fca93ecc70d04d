/**
 * NARs uploaded by `nix copy --to` that wait for their narinfo.
 *
 * Nix uploads the NAR first (at `nar/<file hash>.nar[.ext]`) and the
 * narinfo naming it second. The NAR's contents are already in the blob and
 * directory services by then (content-addressed, so invisible and
 * harmless), but no PathInfo refers to them: that only happens once the
 * narinfo arrives and agrees with what was ingested. An entry serves every
 * narinfo naming its URL (store paths with identical contents share one)
 * for the length of its lease. A timer releases entries whose lease ended,
 * whether or not more requests come, and their number is bounded (the
 * oldest go first), so what the bridge keeps stays small and short-lived.
 * A released upload's blobs and directories are referenced by nothing;
 * `tvix-store gc` reclaims them.
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

/** Why a staged upload left the staging area. */
export type ReleaseReason = "expired" | "evicted" | "closed";

/** How long staged uploads live and how many there may be. */
export interface StagingOptions {
  /** How long an upload waits for its narinfo (default {@linkcode DEFAULT_UPLOAD_LEASE_MS}). */
  leaseMs?: number;
  /** Bound on waiting uploads; beyond it the oldest are released (default 10,000). */
  maxEntries?: number;
  /** Called for every upload released other than by being replaced. */
  onRelease?: (path: string, reason: ReleaseReason) => void;
}

/**
 * The default lease of a staged upload: Nix sends the narinfo right after
 * the NAR, and lease plus upload time must stay below gc's grace period
 * (default one hour), or gc could remove a NAR's blobs before its narinfo
 * makes them reachable.
 */
export const DEFAULT_UPLOAD_LEASE_MS = 15 * 60 * 1000;

/** Staged NARs by upload path (e.g. `/nar/<hash>.nar.xz`). */
export class Staging {
  readonly #entries = new Map<string, { nar: StagedNar; expires: number }>();
  readonly #onRelease?: (path: string, reason: ReleaseReason) => void;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** How long an upload waits for its narinfo. */
  readonly leaseMs: number;
  /** Bound on waiting uploads. */
  readonly maxEntries: number;

  constructor(opts: StagingOptions = {}) {
    this.leaseMs = opts.leaseMs ?? DEFAULT_UPLOAD_LEASE_MS;
    this.maxEntries = opts.maxEntries ?? 10_000;
    this.#onRelease = opts.onRelease;
  }

  /** Records an ingested upload, replacing an earlier one at the same path. */
  put(path: string, nar: StagedNar, now = Date.now()): void {
    this.#entries.delete(path); // re-insert at the end: Map keeps insertion order
    this.#entries.set(path, { nar, expires: now + this.leaseMs });
    this.#sweep(now);
    this.#schedule(now);
  }

  /** The upload at `path`, if its lease has not ended. */
  get(path: string, now = Date.now()): StagedNar | undefined {
    const entry = this.#entries.get(path);
    if (!entry) return undefined;
    if (entry.expires <= now) {
      this.#drop(path, "expired");
      return undefined;
    }
    return entry.nar;
  }

  /** Number of waiting uploads. */
  get size(): number {
    return this.#entries.size;
  }

  /** Releases every upload and stops the timer. */
  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const path of [...this.#entries.keys()]) this.#drop(path, "closed");
  }

  #drop(path: string, reason: ReleaseReason): void {
    this.#entries.delete(path);
    this.#onRelease?.(path, reason);
  }

  #sweep(now: number): void {
    // Oldest first: insertion order is expiry order (constant lease).
    for (const [path, entry] of this.#entries) {
      if (entry.expires <= now) this.#drop(path, "expired");
      else if (this.#entries.size > this.maxEntries) this.#drop(path, "evicted");
      else break;
    }
  }

  /** Arms the timer for the oldest entry's expiry, unless it is armed. */
  #schedule(now: number): void {
    if (this.#timer !== undefined) return;
    const first = this.#entries.values().next();
    if (first.done) return;
    const timer = setTimeout(() => {
      this.#timer = undefined;
      const t = Date.now();
      this.#sweep(t);
      this.#schedule(t);
    }, Math.max(0, first.value.expires - now));
    // Leases never keep the process alive.
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }
}
