/**
 * Store management over the three services (docs/gc.md): garbage
 * collection (mark from every PathInfo, then each backend sweeps), verify
 * (every path renders to its recorded NAR), and deleting paths with the
 * reference check Nix does.
 *
 * @module
 */
import type { BlobService } from "../castore/blob/service.ts";
import type { DirectoryService } from "../castore/directory/service.ts";
import { type Digest, digestKey, toHex } from "../castore/digest.ts";
import { directoryDigest } from "../castore/directory.ts";
import type { NodeVariant } from "../castore/node.ts";
import { isSweepable, type SweepReport } from "../castore/sweep.ts";
import { errorMessage, InvalidRequestError } from "../errors.ts";
import { calculateNar } from "../nar/render.ts";
import type { PathInfo, PathInfoService } from "./pathinfo/service.ts";
import { StorePath } from "./store_path.ts";

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

/** Options of {@linkcode collectGarbage}. */
export interface GcOptions {
  /** Grace period in ms (default {@linkcode DEFAULT_GRACE_MS}). */
  graceMs?: number;
  /** Report only. */
  dryRun?: boolean;
}

/** What {@linkcode collectGarbage} found and did. */
export interface GcReport {
  /** Store paths (the roots). */
  paths: number;
  /** Reachable directories and blobs. */
  liveDirectories: number;
  liveBlobs: number;
  directories: SweepReport;
  blobs: SweepReport;
}

/** The store path a PathInfo describes (its root node's name). */
export function storePathOf(info: PathInfo): StorePath {
  const node = info.node?.node;
  if (!node) throw new InvalidRequestError("PathInfo without a root node");
  return StorePath.parseBasenameBytes(node.value.name);
}

/** Everything reachable from the stored PathInfos. */
async function mark(
  services: ManagedServices,
): Promise<{ paths: number; directories: Set<string>; blobs: Set<string> }> {
  const directories = new Set<string>();
  const blobs = new Set<string>();
  let paths = 0;
  const visit = async (node: NodeVariant) => {
    if (node.$case === "file") {
      blobs.add(digestKey(node.value.digest));
    } else if (node.$case === "directory" && !directories.has(digestKey(node.value.digest))) {
      // A missing directory fails the walk: a damaged store is not
      // collected (verify --repair first), since what its paths still
      // reference cannot be told apart from garbage.
      for await (const d of services.directory.getRecursive(node.value.digest)) {
        directories.add(digestKey(directoryDigest(d)));
        for (const f of d.files) blobs.add(digestKey(f.digest));
      }
    }
  };
  for await (const info of services.pathInfo.list()) {
    paths++;
    const node = info.node?.node;
    if (node) await visit(node);
  }
  return { paths, directories, blobs };
}

/**
 * Garbage collection: everything no PathInfo reaches and nobody wrote or
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
      "these services cannot be garbage collected: gc needs local backends that can " +
        "enumerate and delete (pack:// or objectstore+s3:// blobs, sqlite:// or postgres:// " +
        "directories); point " +
        "it at the " +
        "daemon's store files, not at the daemon",
    );
  }
  // The cutoff is taken before marking: whatever an upload writes or
  // reuses from now on is newer, so it is kept even though marking may not
  // see the PathInfo that will refer to it.
  const cutoff = Date.now() - (options.graceMs ?? DEFAULT_GRACE_MS);
  const live = await mark(services);
  const sweepOptions = { cutoff, dryRun: options.dryRun ?? false };
  const directories = await directory.sweep(
    (d: Digest) => live.directories.has(digestKey(d)),
    sweepOptions,
  );
  const blobs = await blob.sweep((d: Digest) => live.blobs.has(digestKey(d)), sweepOptions);
  return {
    paths: live.paths,
    liveDirectories: live.directories.size,
    liveBlobs: live.blobs.size,
    directories,
    blobs,
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
 * Renders every stored path from the blob and directory services (each
 * chunk and directory is verified as it is read) and compares the NAR
 * with the PathInfo's size and hash. With `repair`, damaged paths' PathInfos
 * are removed, so no client is served a broken path.
 */
export async function verifyStore(
  services: ManagedServices,
  options: { repair?: boolean } = {},
): Promise<VerifyReport> {
  const damaged: DamagedPath[] = [];
  const broken: Uint8Array[] = [];
  let paths = 0;
  for await (const info of services.pathInfo.list()) {
    paths++;
    let name = "(unnamed)";
    try {
      const storePath = storePathOf(info);
      name = storePath.absolute();
      const nar = await calculateNar(info.node!.node!, services.blob, services.directory);
      const want = info.narinfo;
      if (
        want && (nar.narSize !== want.narSize || toHex(nar.narSha256) !== toHex(want.narSha256))
      ) {
        throw new Error(
          `NAR is ${nar.narSize} bytes sha256:${toHex(nar.narSha256)}, ` +
            `recorded ${want.narSize} bytes sha256:${toHex(want.narSha256)}`,
        );
      }
    } catch (err) {
      damaged.push({ storePath: name, error: errorMessage(err) });
      try {
        broken.push(storePathOf(info).digest);
      } catch { /* unnamed: nothing to remove by name */ }
    }
  }
  let repaired = 0;
  if (options.repair && broken.length > 0) {
    const remove = services.pathInfo.delete;
    if (!remove) throw new InvalidRequestError("these path info services cannot delete");
    for (const digest of broken) if (await remove.call(services.pathInfo, digest)) repaired++;
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
      "these path info services cannot delete: point delete at the store's files " +
        "(e.g. sqlite://…), not at a daemon",
    );
  }
  // Who refers to whom, over the whole store.
  const byKey = new Map<string, StorePath>();
  const referrers = new Map<string, Set<string>>();
  for await (const info of pathInfo.list()) {
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
    if (!byKey.has(key)) throw new InvalidRequestError(`${t.absolute()} is not in the store`);
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
        throw new InvalidRequestError(
          `${byKey.get(key)!.absolute()} is still referenced by ${
            alive.map((r) => byKey.get(r)!.absolute()).join(", ")
          } (use --recursive to delete them too)`,
        );
      }
    }
  }
  const deleted: StorePath[] = [];
  for (const key of doomed) {
    const path = byKey.get(key)!;
    if (await remove.call(pathInfo, path.digest)) deleted.push(path);
  }
  return deleted;
}
