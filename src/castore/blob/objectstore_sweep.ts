/**
 * Garbage collection of the object-store blob layout on a store that can
 * list with modification times and delete in batches (S3;
 * docs/gc.md#objects-on-s3), and the other half of its protection: a
 * writer that reuses an object already there touches it, so that its
 * modification time says "in use" as the pack store's `touched` column does.
 *
 * @module
 */
import { decodeBlobIndex } from "./blob_index.ts";
import { mapLimit } from "../../concurrency.ts";
import { type Digest, digestKey, fromHex } from "../digest.ts";
import { InvalidRequestError } from "../../errors.ts";
import type { SweepOptions, SweepReport } from "../sweep.ts";
import {
  type CollectableObjectStore,
  isCollectable,
  type ObjectStore,
} from "../objectstore/store.ts";

/**
 * A reused object older than this is touched. gc keeps what was modified
 * within its grace period, so an upload relying on an object is safe for
 * the grace period minus this (50 minutes with gc's default hour).
 */
export const TOUCH_AFTER_MS = 10 * 60 * 1000;

/**
 * Shortest grace period (other than 0) gc accepts on an object store:
 * {@linkcode TOUCH_AFTER_MS} plus 5 minutes for clock skew between the
 * store and its clients.
 */
export const MIN_GRACE_MS = TOUCH_AFTER_MS + 5 * 60 * 1000;
/** Requests at once for the index reads, and for the re-checks of one batch before deleting it. */
const PARALLEL = 16;
/** Batches of re-checks and deletes under way at once (each its own window; see the sweep). */
const PARALLEL_BATCHES = 4;

/**
 * Whether `path` holds an object of `length` bytes; if so, and it was last
 * modified more than {@linkcode TOUCH_AFTER_MS} ago, it is touched first,
 * since the caller is about to rely on it.
 */
export async function presentAndTouched(
  store: ObjectStore,
  path: string,
  length: number,
): Promise<boolean> {
  if (!isCollectable(store)) return await store.size(path) === length;
  const info = await store.stat(path);
  if (info?.size !== length) return false;
  if (Date.now() - info.modified > TOUCH_AFTER_MS) await store.touch(path);
  return true;
}

/** The digest named by the last segment of an object path, if it is one. */
function digestOfPath(path: string): Digest | undefined {
  const name = path.slice(path.lastIndexOf("/") + 1);
  return /^[0-9a-f]{64}$/.test(name) ? fromHex(name) : undefined;
}

/**
 * Removes blob indexes and chunks that no live blob needs and that were
 * not modified since `options.cutoff`:
 *
 * - an index is kept if its blob is live or it is recent, and then so are
 *   all the chunks it lists (a recent index of an upload in flight may list
 *   old chunks it reused);
 * - a chunk is kept if it is a live single-chunk blob, listed by a kept
 *   index, or recent.
 *
 * Before deleting, each doomed object is looked at once more (HEAD): one
 * touched since the listing (reused meanwhile) is kept. Indexes go before
 * chunks, so a crash in between leaves no index pointing at missing chunks.
 */
export async function sweepObjectStoreBlobs(
  store: CollectableObjectStore,
  isLive: (digest: Digest) => boolean,
  options: SweepOptions,
): Promise<SweepReport> {
  // Writers refresh a reused object only once it is TOUCH_AFTER_MS old, so
  // a shorter grace could collect one an upload in flight just reused.
  // Grace 0 stays allowed: it is for a store nothing writes to.
  // The grace gc was given: the time since the cutoff also counts the
  // listing and marking, which may take long with grace 0.
  const grace = options.graceMs ?? Date.now() - options.cutoff;
  if (grace > 1000 && grace < MIN_GRACE_MS) {
    throw new InvalidRequestError(
      `a grace period under ${MIN_GRACE_MS / 60_000} minutes is unsafe on an object store ` +
        `(uploads refresh the objects they reuse only after ${TOUCH_AFTER_MS / 60_000} ` +
        "minutes); use a longer one, or 0 when nothing writes to the store",
    );
  }
  const indexes = await store.listInfo("blobs/b3/");
  const chunks = await store.listInfo("chunks/b3/");
  const neededChunks = new Set<string>();
  const deadIndexes: typeof indexes = [];
  const keptIndexes: typeof indexes = [];
  for (const o of indexes) {
    const digest = digestOfPath(o.path);
    const keep = digest === undefined || isLive(digest) || o.modified >= options.cutoff;
    (keep ? keptIndexes : deadIndexes).push(o);
  }
  await mapLimit(keptIndexes, PARALLEL, async (o) => {
    const raw = await store.get(o.path);
    if (!raw) return; // removed meanwhile: its chunks are judged on their own
    // A damaged index stops the sweep: its chunks cannot be told apart from unused ones.
    for (const c of decodeBlobIndex(digestOfPath(o.path) ?? o.path, raw)) {
      neededChunks.add(digestKey(c.digest));
    }
  });
  const deadChunks = chunks.filter((o) => {
    const digest = digestOfPath(o.path);
    return digest !== undefined && !isLive(digest) && !neededChunks.has(digestKey(digest)) &&
      o.modified < options.cutoff;
  });

  const doomed = [...deadIndexes, ...deadChunks];
  const report: SweepReport = {
    removed: doomed.length,
    removedBytes: doomed.reduce((sum, o) => sum + o.size, 0),
    kept: indexes.length + chunks.length - doomed.length,
    reclaimedBytes: 0,
  };
  if (options.dryRun) return report;

  let removed = 0;
  let removedBytes = 0;
  for (const group of [deadIndexes, deadChunks]) {
    // Looked at again (HEAD) and deleted in batches of PARALLEL, each
    // deleted right after its HEADs (which run at once): an upload that
    // reuses (touches) an object after its HEAD loses it if the delete
    // still comes, so that window is one round of HEADs, not the group's.
    const batches = [];
    for (let i = 0; i < group.length; i += PARALLEL) batches.push(group.slice(i, i + PARALLEL));
    await mapLimit(batches, PARALLEL_BATCHES, async (batch) => {
      const still = await Promise.all(batch.map(async (o) => {
        const now = await store.stat(o.path);
        return now !== undefined && now.modified < options.cutoff ? now : undefined;
      }));
      const gone = still.filter((o) => o !== undefined);
      await store.deleteMany(gone.map((o) => o.path));
      removed += gone.length;
      removedBytes += gone.reduce((sum, o) => sum + o.size, 0);
    });
  }
  return {
    removed,
    removedBytes,
    kept: indexes.length + chunks.length - removed,
    reclaimedBytes: removedBytes,
  };
}
