/**
 * Store management over the three services (docs/gc.md): garbage
 * collection (the policies `olderThanMs`/`maxSizeBytes` delete paths,
 * then mark from every PathInfo, then each backend sweeps), verify (every
 * path renders to its recorded NAR), and deleting paths with the reference
 * check Nix does. Long walks report progress and give the event loop a
 * turn now and then, so a daemon running them keeps serving.
 *
 * @module
 */
import type { BlobService } from "../castore/blob/service.ts";
import type { DirectoryService } from "../castore/directory/service.ts";
import { b3Display, bytesEqual, type Digest, digestKey, toHex } from "../castore/digest.ts";
import { directoryDigest } from "../castore/directory.ts";
import type { NodeVariant } from "../castore/node.ts";
import { isSweepable, type SweepReport } from "../castore/sweep.ts";
import { CorruptionError, errorMessage, InvalidRequestError } from "../errors.ts";
import { calculateNar } from "../nar/render.ts";
import { type PathInfo, type PathInfoService, StillReferencedError } from "./pathinfo/service.ts";
import { choosePolicyVictims, type PolicyPath } from "./gc_policy.ts";
import { StorePath } from "./store_path.ts";
import * as nixbase32 from "./nixbase32.ts";

/** The services management works on. */
export interface ManagedServices {
  blob: BlobService;
  directory: DirectoryService;
  pathInfo: PathInfoService;
}

/**
 * Default grace period: what was written or reused within it is never
 * collected, so uploads in flight (blobs first, the PathInfo last) are
 * safe if they finish within it.
 */
export const DEFAULT_GRACE_MS = 60 * 60 * 1000;

/** How far a gc or verify has got (absolute counts of the current phase). */
export interface GcProgress {
  /** `select` (policies walking paths), `mark`, `sweep` or `verify`. */
  phase: "select" | "mark" | "sweep" | "verify";
  pathsDone: number;
  pathsTotal: number;
  /** NAR bytes of the paths done, of all. */
  bytesDone: number;
  bytesTotal: number;
}

/** Options of {@linkcode collectGarbage}. */
export interface GcOptions {
  /** Grace period in ms (default {@linkcode DEFAULT_GRACE_MS}). */
  graceMs?: number;
  /** Report only. */
  dryRun?: boolean;
  /** Delete paths not accessed within this many ms first (docs/gc.md#policies). */
  olderThanMs?: number;
  /** Delete least recently used paths until the stored size is at most this (docs/gc.md#policies). */
  maxSizeBytes?: number;
  /** Called as paths are walked. */
  onProgress?: (progress: GcProgress) => void;
  /**
   * Stops the collection between paths, and before the sweep (a sweep
   * that started runs to its end; each of its steps is a transaction).
   */
  signal?: AbortSignal;
}

/** What {@linkcode collectGarbage} found and did. */
export interface GcReport {
  /** Store paths kept (the roots). */
  paths: number;
  /** Reachable directories and blobs. */
  liveDirectories: number;
  liveBlobs: number;
  directories: SweepReport;
  blobs: SweepReport;
  /** Store paths the policies deleted (in a dry run: would delete), sorted. */
  deletedPaths: string[];
  /** With `maxSizeBytes`: the stored size the policy measured before and after. */
  sizeBefore?: number;
  sizeAfter?: number;
}

/** The store path a PathInfo describes (its root node's name). */
export function storePathOf(info: PathInfo): StorePath {
  const node = info.node?.node;
  if (!node) throw new InvalidRequestError("PathInfo without a root node");
  return StorePath.parseBasenameBytes(node.value.name);
}

/** What gc keeps of each PathInfo while it works. */
interface Root {
  key: string;
  path: StorePath;
  node?: NodeVariant;
  narSize: number;
  references: string[];
}

/** How long gc may run without letting timers and other requests in. */
const YIELD_MS = 50;

/**
 * A function to await in long loops: every {@linkcode YIELD_MS} it waits
 * for one turn of the event loop. Local backends answer through microtasks
 * only, so without it a gc would hold a daemon's other requests, and the
 * timers that draw the progress line, until it is done.
 */
function yielder(): () => Promise<void> | undefined {
  let last = performance.now();
  return () => {
    const now = performance.now();
    if (now - last < YIELD_MS) return undefined;
    last = now;
    return new Promise((resolve) => setTimeout(resolve, 0));
  };
}

/**
 * Every stored PathInfo, for the commands that need them all (gc, delete,
 * list, info). A row that does not decode stops them: gc could not know
 * what that path keeps alive, nor delete who refers to what. The error
 * then says which command finds and removes such rows.
 */
export async function* everyPathInfo(pathInfo: PathInfoService): AsyncGenerator<PathInfo> {
  try {
    yield* pathInfo.list();
  } catch (err) {
    if (!(err instanceof CorruptionError)) throw err;
    throw new CorruptionError(
      `${err.message} (\`tvix-store verify\` lists damaged paths, ` +
        "`tvix-store verify --repair` removes them)",
    );
  }
}

/** Every stored PathInfo, reduced to what gc needs. */
async function loadRoots(pathInfo: PathInfoService): Promise<Root[]> {
  const roots: Root[] = [];
  const pause = yielder();
  for await (const info of everyPathInfo(pathInfo)) {
    await pause();
    const path = storePathOf(info);
    roots.push({
      key: digestKey(path.digest),
      path,
      node: info.node?.node,
      narSize: Number(info.narinfo?.narSize ?? 0n),
      references: info.references.map(digestKey),
    });
  }
  return roots;
}

/**
 * Reports walking `roots` as `phase`, at most every 100 ms; `done` returns
 * what to await so the event loop gets a turn (see {@linkcode yielder}).
 */
function progressReporter(
  phase: GcProgress["phase"],
  roots: readonly { narSize: number }[],
  onProgress?: (p: GcProgress) => void,
  signal?: AbortSignal,
): { done(root: { narSize: number }): Promise<void> | undefined; end(): void } {
  const state: GcProgress = {
    phase,
    pathsDone: 0,
    pathsTotal: roots.length,
    bytesDone: 0,
    bytesTotal: roots.reduce((n, r) => n + r.narSize, 0),
  };
  let last = 0;
  const pause = yielder();
  onProgress?.({ ...state });
  return {
    done(root) {
      signal?.throwIfAborted();
      state.pathsDone++;
      state.bytesDone += root.narSize;
      const now = performance.now();
      if (now - last >= 100) {
        last = now;
        onProgress?.({ ...state });
      }
      return pause();
    },
    end: () => onProgress?.({ ...state }),
  };
}

/** Everything reachable from `roots`. */
async function mark(
  directory: DirectoryService,
  pathInfo: PathInfoService,
  roots: readonly Root[],
  options: GcOptions,
): Promise<{ directories: Set<string>; blobs: Set<string> }> {
  const directories = new Set<string>();
  const blobs = new Set<string>();
  const progress = progressReporter("mark", roots, options.onProgress, options.signal);
  for (const root of roots) {
    const node = root.node;
    if (node?.$case === "file") {
      blobs.add(digestKey(node.value.digest));
    } else if (node?.$case === "directory" && !directories.has(digestKey(node.value.digest))) {
      // A missing directory fails the walk: a damaged store is not
      // collected (verify --repair first), since what its paths still
      // reference cannot be told apart from garbage.
      let found = false;
      for await (const d of directory.getRecursive(node.value.digest)) {
        found = true;
        directories.add(digestKey(directoryDigest(d)));
        for (const f of d.files) blobs.add(digestKey(f.digest));
      }
      // A missing root yields nothing rather than failing; it is damage
      // too, unless the path was deleted (or stored anew) since it was listed.
      const now = found ? undefined : (await pathInfo.get(root.path.digest))?.node?.node;
      if (now?.$case === "directory" && bytesEqual(now.value.digest, node.value.digest)) {
        throw new CorruptionError(
          `${root.path.absolute()}: its root directory ${
            b3Display(node.value.digest)
          } does not exist; gc stops (run verify --repair first)`,
        );
      }
    }
    await progress.done(root);
  }
  progress.end();
  return { directories, blobs };
}

/** The file blobs (key → size) of one path's tree. */
async function blobsOf(
  directory: DirectoryService,
  node?: NodeVariant,
): Promise<Map<string, number>> {
  const blobs = new Map<string, number>();
  if (node?.$case === "file") blobs.set(digestKey(node.value.digest), Number(node.value.size));
  if (node?.$case === "directory") {
    for await (const d of directory.getRecursive(node.value.digest)) {
      for (const f of d.files) blobs.set(digestKey(f.digest), Number(f.size));
    }
  }
  return blobs;
}

/**
 * Applies the policies of `options` (docs/gc.md#policies): chooses the
 * victims and, unless a dry run, deletes them referrers first. A victim
 * used since `startedMs` stays, and so does everything it refers to.
 * Returns the roots left and what was deleted.
 */
async function applyPolicies(
  services: ManagedServices,
  roots: Root[],
  startedMs: number,
  options: GcOptions,
): Promise<{ kept: Root[]; deleted: string[]; sizeBefore?: number; sizeAfter?: number }> {
  const { pathInfo } = services;
  if (!pathInfo.listAccess || !pathInfo.deleteUnaccessed) {
    throw new InvalidRequestError(
      "--older-than and --max-size need access times, which these path info services do not " +
        "keep: run gc through the daemon, or point it at the store's sqlite:// or postgres:// path infos",
    );
  }
  const accessed = new Map<string, number>();
  for await (const a of pathInfo.listAccess()) accessed.set(digestKey(a.digest), a.accessedMs);
  const policyPaths: PolicyPath[] = [];
  const progress = progressReporter("select", roots, options.onProgress, options.signal);
  for (const root of roots) {
    policyPaths.push({
      key: root.key,
      references: root.references,
      // A path stored after the listing above was accessed now.
      accessedMs: accessed.get(root.key) ?? startedMs,
      blobs: options.maxSizeBytes !== undefined
        ? await blobsOf(services.directory, root.node)
        : undefined,
    });
    await progress.done(root);
  }
  progress.end();
  const choice = choosePolicyVictims(policyPaths, {
    olderThanMs: options.olderThanMs,
    maxSizeBytes: options.maxSizeBytes,
    nowMs: startedMs,
  });
  const byKey = new Map(roots.map((r) => [r.key, r]));
  const gone = new Set<string>();
  // Paths that must stay because a victim that stayed refers to them.
  const protectedKeys = new Set<string>();
  const protect = (key: string) => {
    const stack = [key];
    while (stack.length > 0) {
      const k = stack.pop()!;
      if (protectedKeys.has(k)) continue;
      protectedKeys.add(k);
      stack.push(...(byKey.get(k)?.references ?? []));
    }
  };
  try {
    for (const key of choice.victims) {
      options.signal?.throwIfAborted();
      if (protectedKeys.has(key)) continue;
      if (
        options.dryRun || await pathInfo.deleteUnaccessed(byKey.get(key)!.path.digest, startedMs)
      ) {
        gone.add(key);
      } else protect(key);
    }
  } finally {
    // Durable before a sweep (this one, or another process's after a
    // failure here) removes what they named.
    if (gone.size > 0 && !options.dryRun) await pathInfo.sync?.();
  }
  return {
    kept: roots.filter((r) => !gone.has(r.key)),
    deleted: [...gone].map((k) => byKey.get(k)!.path.absolute()).sort(),
    sizeBefore: choice.sizeBefore,
    sizeAfter: choice.sizeAfter,
  };
}

/**
 * Garbage collection: first the policies (`olderThanMs`, `maxSizeBytes`)
 * delete paths, then everything no PathInfo reaches and nobody wrote or
 * reused within the grace period is removed, directories first, then
 * blobs and chunks, whose space the blob backend gives back.
 */
export async function collectGarbage(
  services: ManagedServices,
  options: GcOptions = {},
): Promise<GcReport> {
  const { blob, directory } = services;
  if (!isSweepable(blob) || !isSweepable(directory)) {
    throw new InvalidRequestError(
      "these services cannot be garbage collected: gc needs backends that can enumerate " +
        "and delete (pack:// or objectstore+s3:// blobs, sqlite:// or postgres:// directories)",
    );
  }
  // The cutoff is taken before listing: whatever an upload writes or
  // reuses from now on is newer, so it is kept even though marking may not
  // see the PathInfo that will refer to it.
  const startedMs = Date.now();
  const graceMs = options.graceMs ?? DEFAULT_GRACE_MS;
  const cutoff = startedMs - graceMs;
  let roots = await loadRoots(services.pathInfo);
  let policy: Awaited<ReturnType<typeof applyPolicies>> | undefined;
  if (options.olderThanMs !== undefined || options.maxSizeBytes !== undefined) {
    policy = await applyPolicies(services, roots, startedMs, options);
    roots = policy.kept;
  }
  const live = await mark(directory, services.pathInfo, roots, options);
  options.signal?.throwIfAborted();
  options.onProgress?.({
    phase: "sweep",
    pathsDone: 0,
    pathsTotal: 0,
    bytesDone: 0,
    bytesTotal: 0,
  });
  const sweepOptions = { cutoff, dryRun: options.dryRun ?? false, graceMs };
  const directories = await directory.sweep(
    (d: Digest) => live.directories.has(digestKey(d)),
    sweepOptions,
  );
  const blobs = await blob.sweep((d: Digest) => live.blobs.has(digestKey(d)), sweepOptions);
  return {
    paths: roots.length,
    liveDirectories: live.directories.size,
    liveBlobs: live.blobs.size,
    directories,
    blobs,
    deletedPaths: policy?.deleted ?? [],
    sizeBefore: policy?.sizeBefore,
    sizeAfter: policy?.sizeAfter,
  };
}

/** A path that failed verification. */
export interface DamagedPath {
  storePath: string;
  error: string;
}

/** What {@linkcode verifyStore} found. */
export interface VerifyReport {
  paths: number;
  damaged: DamagedPath[];
  /** PathInfos removed by `repair`. */
  repaired: number;
  /** Unreachable directories and blobs (with a zero grace period), where countable. */
  orphans?: { directories: number; blobs: number; bytes: number };
}

/**
 * What is wrong with the path `info` describes: its NAR is rendered from
 * the blob and directory services (each chunk and directory verified as it
 * is read) and compared with the PathInfo's size and hash. `undefined` if
 * nothing is. Only damage the store shows counts (a missing or corrupt
 * object, a `CorruptionError`; a NAR that differs; an invalid PathInfo);
 * any other failure is thrown, since it says nothing about the path.
 */
async function pathDamage(
  info: PathInfo,
  services: ManagedServices,
): Promise<string | undefined> {
  try {
    const nar = await calculateNar(info.node!.node!, services.blob, services.directory);
    const want = info.narinfo;
    if (
      want && (nar.narSize !== want.narSize || !bytesEqual(nar.narSha256, want.narSha256))
    ) {
      return `NAR is ${nar.narSize} bytes sha256:${toHex(nar.narSha256)}, ` +
        `recorded ${want.narSize} bytes sha256:${toHex(want.narSha256)}`;
    }
    return undefined;
  } catch (err) {
    // Damage only where the store shows it: something it lists is gone, or
    // does not verify, or the PathInfo itself is invalid. Anything else (a
    // backend refusing or out of reach, a full disk) says nothing about the
    // path, and removing it would lose it.
    if (err instanceof CorruptionError || err instanceof InvalidRequestError) {
      return errorMessage(err);
    }
    throw err;
  }
}

/**
 * Checks every stored path ({@linkcode pathDamage}). With `repair`, damaged
 * paths' PathInfos are removed, so no client is served a broken path; each
 * is checked once more right before, and kept if it now reads whole (the
 * first failure was passing). A backend out of reach ends the run with its
 * error, before anything is removed.
 */
export async function verifyStore(
  services: ManagedServices,
  options: { repair?: boolean; onProgress?: (progress: GcProgress) => void } = {},
): Promise<VerifyReport> {
  const damaged: DamagedPath[] = [];
  const broken: Uint8Array[] = [];
  const infos: PathInfo[] = [];
  // Stored rows that do not read as a PathInfo: damage too, known by key only.
  const unreadable: Uint8Array[] = [];
  for await (
    const info of services.pathInfo.list((digest, err) => {
      unreadable.push(digest);
      damaged.push({ storePath: `(PathInfo ${nixbase32.encode(digest)})`, error: err.message });
    })
  ) infos.push(info);
  const sized = infos.map((info) => ({ info, narSize: Number(info.narinfo?.narSize ?? 0n) }));
  const progress = progressReporter("verify", sized, options.onProgress);
  const paths = infos.length + unreadable.length;
  for (const item of sized) {
    const info = item.info;
    let storePath: StorePath | undefined;
    let error: string | undefined;
    try {
      storePath = storePathOf(info);
    } catch (err) {
      error = errorMessage(err);
    }
    error ??= await pathDamage(info, services);
    if (error !== undefined) {
      damaged.push({ storePath: storePath?.absolute() ?? "(unnamed)", error });
      // Unnamed: nothing to remove by name.
      if (storePath) broken.push(storePath.digest);
    }
    await progress.done(item);
  }
  progress.end();
  let repaired = 0;
  if (options.repair && broken.length > 0) {
    const remove = services.pathInfo.delete;
    if (!remove) throw new InvalidRequestError("these path info services cannot delete");
    for (const digest of broken) {
      // What is stored now, checked again: the path may have been stored
      // anew (whole) since the first pass, and then it stays. Removed only
      // if it is still what this check found damaged.
      const current = await services.pathInfo.get(digest);
      if (!current || await pathDamage(current, services) === undefined) continue;
      if (await remove.call(services.pathInfo, digest, current)) repaired++;
    }
    if (repaired > 0) await services.pathInfo.sync?.();
  }
  if (options.repair && unreadable.length > 0) {
    const removeRow = services.pathInfo.deleteDamaged;
    if (!removeRow) throw new InvalidRequestError("these path info services cannot remove rows");
    let removed = 0;
    // Each removed only if still damaged: a path stored anew over it stays.
    for (const digest of unreadable) if (await removeRow.call(services.pathInfo, digest)) removed++;
    if (removed > 0) await services.pathInfo.sync?.();
    repaired += removed;
  }
  let orphans: VerifyReport["orphans"];
  if (damaged.length === 0 && isSweepable(services.blob) && isSweepable(services.directory)) {
    const r = await collectGarbage(services, { graceMs: 0, dryRun: true });
    orphans = {
      directories: r.directories.removed,
      blobs: r.blobs.removed,
      bytes: r.directories.removedBytes + r.blobs.removedBytes,
    };
  }
  return { paths, damaged, repaired, orphans };
}

/**
 * The keys of `doomed` ordered so that each comes after every doomed path
 * that refers to it (a depth-first post-order over the referrer edges;
 * paths that refer to each other come in any order).
 */
function referrersFirst(doomed: Set<string>, referrers: Map<string, Set<string>>): string[] {
  const order: string[] = [];
  const placed = new Set<string>();
  for (const start of doomed) {
    // Iterative: a long chain of references must not exhaust the stack.
    const stack: { key: string; next: Iterator<string> }[] = [];
    const enter = (key: string) => {
      placed.add(key);
      stack.push({ key, next: (referrers.get(key) ?? new Set()).values() });
    };
    if (!placed.has(start)) enter(start);
    while (stack.length > 0) {
      const top = stack[stack.length - 1];
      const step = top.next.next();
      if (step.done) {
        order.push(top.key);
        stack.pop();
      } else if (doomed.has(step.value) && !placed.has(step.value)) enter(step.value);
    }
  }
  return order;
}

/** The absolute store paths of these digests, as stored now (sorted). */
async function pathsOf(pathInfo: PathInfoService, digests: Uint8Array[]): Promise<string[]> {
  const out: string[] = [];
  for (const digest of digests) {
    const info = await pathInfo.get(digest);
    out.push(info ? storePathOf(info).absolute() : `the path with digest ${toHex(digest)}`);
  }
  return out.sort();
}

/** A path given to {@linkcode deletePaths} is not in the store. */
export class PathNotFoundError extends InvalidRequestError {
  override name = "PathNotFoundError";
}

/** A path given to {@linkcode deletePaths} is referenced by paths not being deleted. */
export class PathReferencedError extends InvalidRequestError {
  override name = "PathReferencedError";
  /**
   * The absolute store path refused, the paths that refer to it, and what
   * to do about it (by default: delete them too).
   */
  constructor(
    readonly path: string,
    readonly referrers: string[],
    advice = "use --recursive to delete them too",
  ) {
    super(`${path} is still referenced by ${referrers.join(", ")} (${advice})`);
  }
}

/**
 * Removes the PathInfos of `targets`. A path another remaining path refers
 * to is refused (naming the referrers) unless `recursive`, which deletes
 * the referrers too, transitively. A target not in the store is an error.
 * Returns what was deleted. Data is reclaimed by a later gc.
 */
export async function deletePaths(
  pathInfo: PathInfoService,
  targets: StorePath[],
  options: { recursive?: boolean } = {},
): Promise<StorePath[]> {
  const remove = pathInfo.delete;
  if (!remove) {
    throw new InvalidRequestError(
      "these path info services cannot delete: point delete at a daemon (grpc+http://, " +
        "grpc+unix://) or at the store's files (e.g. sqlite://…)",
    );
  }
  // Who refers to whom, over the whole store.
  const byKey = new Map<string, StorePath>();
  const referrers = new Map<string, Set<string>>();
  for await (const info of everyPathInfo(pathInfo)) {
    const path = storePathOf(info);
    const key = digestKey(path.digest);
    byKey.set(key, path);
    for (const ref of info.references) {
      const refKey = digestKey(ref);
      if (refKey === key) continue; // self-references do not keep a path alive
      if (!referrers.has(refKey)) referrers.set(refKey, new Set());
      referrers.get(refKey)!.add(key);
    }
  }
  const doomed = new Set<string>();
  for (const t of targets) {
    const key = digestKey(t.digest);
    if (!byKey.has(key)) throw new PathNotFoundError(`${t.absolute()} is not in the store`);
    doomed.add(key);
  }
  if (options.recursive) {
    const queue = [...doomed];
    while (queue.length > 0) {
      for (const r of referrers.get(queue.pop()!) ?? []) {
        if (!doomed.has(r)) {
          doomed.add(r);
          queue.push(r);
        }
      }
    }
  } else {
    for (const key of doomed) {
      const alive = [...referrers.get(key) ?? []].filter((r) => !doomed.has(r));
      if (alive.length > 0) {
        throw new PathReferencedError(
          byKey.get(key)!.absolute(),
          alive.map((r) => byKey.get(r)!.absolute()).sort(),
        );
      }
    }
  }
  const deleted: StorePath[] = [];
  try {
    // Referrers before what they refer to: the store refuses a path while
    // a stored path refers to it, and re-checks that as it deletes, so a
    // referrer stored since the listing above is named here too.
    for (const key of referrersFirst(doomed, referrers)) {
      const path = byKey.get(key)!;
      try {
        // Paths that refer to each other go together.
        if (await remove.call(pathInfo, path.digest, undefined, doomed)) deleted.push(path);
      } catch (err) {
        if (!(err instanceof StillReferencedError)) throw err;
        throw new PathReferencedError(
          path.absolute(),
          await pathsOf(pathInfo, err.referrers),
          options.recursive ? "stored since the deletion started; run it again" : undefined,
        );
      }
    }
  } finally {
    // Durable before a gc (this process's or another's) removes their
    // data, also when a later deletion failed.
    if (deleted.length > 0) await pathInfo.sync?.();
  }
  return deleted;
}
