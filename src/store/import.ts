/**
 * Importing local paths into the store as content-addressed ("source")
 * store paths, the way `nix-store --add` does
 * (docs/compatibility.md#the-import-algorithm).
 *
 * The NAR hash is computed in the same pass that ingests the tree: each
 * file is read once and its bytes go both to the blob service and to the
 * hash (`nar/hasher.ts`), so the hash describes exactly the stored bytes,
 * even if a file changes meanwhile, and nothing is read back from the blob
 * service (with a remote daemon that would download everything again,
 * docs/compatibility.md#q2-import-hashes-the-nar-by-reading-blobs-back).
 *
 * @module
 */
import { resolve } from "node:path";
import type { BlobService } from "../castore/blob/service.ts";
import type { DirectoryService } from "../castore/directory/service.ts";
import {
  type DirectoryRecord,
  type FileIdentity,
  IngestError,
  ingestPath,
  type IngestProgress,
  nodeFromStats,
} from "../castore/import/fs.ts";
import { InvalidRequestError } from "../errors.ts";
import { type NodeVariant, renameNode, toNode } from "../castore/node.ts";
import { NarHasher } from "../nar/hasher.ts";
import { NARInfo_CA_Hash, type PathInfo } from "../proto/tvix/store/protos/pathinfo.ts";
import type { PathInfoService } from "./pathinfo/service.ts";
import { narCacheKey, type NarSummary } from "../nar/calculation.ts";
import type { StatCache } from "./stat_cache.ts";
import { caNarSha256StorePath, type StorePath, validateName } from "./store_path.ts";

/** The services an import writes to. */
export interface ImportServices {
  blob: BlobService;
  directory: DirectoryService;
  pathInfo: PathInfoService;
}

/** A local path ingested into castore, with the NAR Nix would make of it. */
export interface IngestedTree extends NarSummary {
  /** Root node, named after the path's last component. */
  node: NodeVariant;
}

/** Options of {@linkcode ingestPathWithNar} and {@linkcode importPath}. */
export interface ImportOptions {
  progress?: IngestProgress;
  /**
   * What earlier imports into this store learnt: an unchanged tree is
   * recognised from metadata alone, and a new import records what it read.
   */
  statCache?: StatCache;
  /**
   * The caller already looked for an unchanged import of this path
   * ({@linkcode importUnchanged}) and found none: `importPath` ingests it
   * without walking its metadata a second time.
   */
  checkedUnchanged?: boolean;
}

/** What {@linkcode importPath} produced. */
export interface ImportResult {
  storePath: StorePath;
  pathInfo: PathInfo;
}

const te = new TextEncoder();

/**
 * The store path name for a local path: its last component
 * (docs/compatibility.md#the-import-algorithm, step 1). `a/b/../c` → `c`; a path ending in `..`, or with no final component
 * (`.`, `/`), is refused with {@linkcode IngestError}.
 */
export function nameFromPath(path: string): string {
  const parts = path.split("/").filter((p) => p !== "" && p !== ".");
  const last = parts[parts.length - 1];
  if (last === undefined || last === "..") {
    throw new IngestError(path, "path must not be .. and the basename valid unicode");
  }
  return last;
}

/**
 * The path to lstat, made absolute and canonical as Nix does it: `.` and
 * `..` are resolved in the text, not by the kernel, so `a/../b` is `./b`
 * even where `a` is a symlink (the kernel would go to the parent of its
 * target), and a trailing `/` or `/.`, which would follow a symlink at the
 * root, goes.
 */
function hostPath(path: string): string {
  return resolve(path);
}

/**
 * Ingests `path` into the blob and directory services and computes its
 * NAR size and SHA-256 in the same pass (no reads from the services).
 */
export async function ingestPathWithNar(
  path: string,
  blob: BlobService,
  directory: DirectoryService,
  options: ImportOptions = {},
): Promise<IngestedTree> {
  const local = hostPath(path);
  const seen: { file: FileIdentity & { examinedAt: number }; digest: Uint8Array }[] = [];
  const directories: DirectoryRecord[] = [];
  const cache = options.statCache;
  const nar = new NarHasher();
  const node = await ingestPath(local, blob, directory, {
    progress: options.progress,
    observer: nar,
    onFile: cache && ((file, digest) => seen.push({ file, digest })),
    onDirectory: cache && ((record) => directories.push(record)),
  });
  const summary = nar.summary();
  cache?.use(() =>
    cache.batch(() => {
      for (const s of seen) cache.rememberFile(s.file, s.digest, s.file.examinedAt);
      for (const d of directories) cache.rememberDirectory(d);
      cache.rememberNar(narCacheKey(node), summary);
    })
  );
  return { node, ...summary };
}

/**
 * The import of `path` if an earlier one stored exactly this tree: the
 * root node is computed from metadata and the stat cache (no file is
 * read), its NAR summary comes from the cache, and the store is asked once
 * whether it holds that PathInfo with that root. `undefined` otherwise.
 */
async function findUnchanged(
  path: string,
  name: string,
  getPathInfo: (digest: Uint8Array) => Promise<PathInfo | undefined>,
  cache: StatCache,
): Promise<ImportResult | undefined> {
  // Directories assembled from file records are recorded whole for next time.
  const assembled: DirectoryRecord[] = [];
  const node = cache.use(() =>
    nodeFromStats(hostPath(path), {
      fileDigests: (files) => cache.fileDigests(files),
      directory: (key) => cache.directory(key),
      onDirectory: (record) => assembled.push(record),
    })
  );
  if (assembled.length > 0) {
    cache.use(() => cache.batch(() => assembled.forEach((d) => cache.rememberDirectory(d))));
  }
  const summary = node && cache.use(() => cache.narSummary(narCacheKey(node)));
  if (!node || !summary) return undefined;
  const storePath = caNarSha256StorePath(summary.narSha256, name);
  const pathInfo = await getPathInfo(storePath.digest);
  const stored = pathInfo?.node?.node;
  if (!stored || narCacheKey(stored) !== narCacheKey(node)) return undefined;
  return { storePath, pathInfo };
}

/**
 * The result of importing `path` if an earlier import stored exactly this
 * tree (see `findUnchanged`), found with the stat cache and one call of
 * `getPathInfo`; `undefined` if it cannot be shown so (then `importPath`
 * imports it). Lets the CLI ask before it opens any service.
 */
export async function importUnchanged(
  path: string,
  cache: StatCache,
  getPathInfo: (digest: Uint8Array) => Promise<PathInfo | undefined>,
): Promise<ImportResult | undefined> {
  const name = nameFromPath(path);
  try {
    validateName(name);
  } catch {
    return undefined;
  }
  return await findUnchanged(path, name, getPathInfo, cache);
}

/**
 * Imports one local path as `nix-store --add` would (NAR-hashed, SHA-256,
 * no references): ingests it, stores a PathInfo and returns the store
 * path. The PathInfo's `ca.digest` is the raw 32-byte NAR hash, not
 * upstream's text (docs/compatibility.md#q1-import-stores-the-ca-digest-as-text).
 */
export async function importPath(
  path: string,
  services: ImportServices,
  options: ImportOptions = {},
): Promise<ImportResult> {
  const name = nameFromPath(path);
  try {
    validateName(name);
  } catch {
    throw new InvalidRequestError(`${path}: invalid name: ${name}`);
  }
  const unchanged = options.statCache && !options.checkedUnchanged &&
    await findUnchanged(path, name, (d) => services.pathInfo.get(d), options.statCache);
  if (unchanged) return unchanged;
  const tree = await ingestPathWithNar(path, services.blob, services.directory, options);
  const storePath = caNarSha256StorePath(tree.narSha256, name);
  const pathInfo: PathInfo = {
    node: toNode(renameNode(tree.node, te.encode(storePath.basename()))),
    references: [],
    narinfo: {
      narSize: tree.narSize,
      narSha256: tree.narSha256,
      signatures: [],
      referenceNames: [],
      deriver: undefined,
      ca: { type: NARInfo_CA_Hash.NAR_SHA256, digest: tree.narSha256 },
      upload: undefined,
    },
  };
  await services.pathInfo.put(pathInfo);
  return { storePath, pathInfo };
}
