/**
 * Builds the set of services a subcommand works with from their three URLs
 * (docs/architecture.md#service-urls), plus the NAR calculation that goes with them.
 *
 * @module
 */
import { blobServiceFromUrl } from "../castore/blob/from_url.ts";
import type { BlobService } from "../castore/blob/service.ts";
import { directoryServiceFromUrl } from "../castore/directory/from_url.ts";
import type { DirectoryService } from "../castore/directory/service.ts";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { LocalNarCalculationService, type NarCalculationService } from "../nar/calculation.ts";
import { pathInfoServiceFromUrl } from "./pathinfo/from_url.ts";
import { ReferencesFirstPathInfoService } from "./pathinfo/references_first.ts";
import { BlobsFirstDirectoryService } from "../castore/directory/blobs_first.ts";
import { type Closable, closeAll } from "../concurrency.ts";
import type { PathInfoService } from "./pathinfo/service.ts";

/** The URLs of the three services (see docs/architecture.md#service-urls). */
export interface ServiceAddrs {
  blobServiceAddr: string;
  directoryServiceAddr: string;
  pathInfoServiceAddr: string;
}

/** Where clients find a daemon unless told otherwise (as upstream). */
export const DEFAULT_REMOTE_ADDR = "grpc+http://[::1]:8000";

/**
 * Data directory of the embedded store: `$TVIX_STORE_HOME`, else
 * `$XDG_DATA_HOME/tvix-store`, else `~/.local/share/tvix-store`.
 */
export function dataDir(): string {
  const home = Deno.env.get("TVIX_STORE_HOME");
  if (home) return home;
  const xdg = Deno.env.get("XDG_DATA_HOME");
  if (xdg) return join(xdg, "tvix-store");
  const user = Deno.env.get("HOME");
  if (!user) throw new Error("cannot find a data directory: set TVIX_STORE_HOME or HOME");
  return join(user, ".local", "share", "tvix-store");
}

/**
 * The embedded store's addresses under `dir`: blobs in packs under
 * `packs/` (docs/storage.md#pack-store), directories and path infos in
 * `store.sqlite`. A store created by a release before packs keeps its
 * object-store blobs under `blobs/`, and goes on using them.
 */
export function embeddedAddrs(dir: string): ServiceAddrs {
  // URLs need an absolute, percent-encoded path: a relative one would parse
  // as a host, and `#` or `?` in a directory name would end the path.
  const urlPath = (name: string) => pathToFileURL(join(resolve(dir), name)).pathname;
  const db = `sqlite://${urlPath("store.sqlite")}`;
  return {
    blobServiceAddr: hasObjectStoreBlobs(dir)
      ? `objectstore+file://${urlPath("blobs")}`
      : `pack://${urlPath("packs")}`,
    directoryServiceAddr: db,
    pathInfoServiceAddr: db,
  };
}

/** Whether `dir` holds an embedded store of the object-store layout. */
function hasObjectStoreBlobs(dir: string): boolean {
  try {
    return Deno.statSync(join(dir, "blobs")).isDirectory;
  } catch {
    return false;
  }
}

/** The three services plus NAR calculation; `close` releases them all. */
export interface Services {
  blob: BlobService;
  directory: DirectoryService;
  pathInfo: PathInfoService;
  /**
   * Done by the remote daemon when path infos live there (`grpc+…`), else
   * locally over `blob` and `directory`.
   */
  narCalculation: NarCalculationService;
  /** Closes every service (once); rejects with the first failure after trying all. */
  close(): Promise<void>;
}

/**
 * Constructs the services `addrs` names. If one cannot be built, those
 * already built are closed and the error is thrown.
 */
export async function constructServices(addrs: ServiceAddrs): Promise<Services> {
  const built: Closable[] = [];
  try {
    const blob = await blobServiceFromUrl(addrs.blobServiceAddr);
    built.push(blob);
    const storedDirectory = await directoryServiceFromUrl(addrs.directoryServiceAddr);
    built.push(storedDirectory);
    const storedPathInfo = await pathInfoServiceFromUrl(addrs.pathInfoServiceAddr);
    built.push(storedPathInfo);
    // Backends that commit in groups are made durable at the commit points:
    // blobs before the directories that refer to them, both before a PathInfo.
    const directory = blob.sync
      ? new BlobsFirstDirectoryService(storedDirectory, blob)
      : storedDirectory;
    const pathInfo = blob.sync || directory.sync
      ? new ReferencesFirstPathInfoService(storedPathInfo, [blob, directory])
      : storedPathInfo;
    // The path-info service says whether its backend calculates NARs itself.
    const narCalculation: NarCalculationService = pathInfo.narCalculation ??
      new LocalNarCalculationService(blob, directory);
    let closing: Promise<void> | undefined;
    // Close in reverse order of construction: users before what they use.
    const toClose = [...built].reverse();
    return {
      blob,
      directory,
      pathInfo,
      narCalculation,
      close: () => closing ??= closeAll(toClose),
    };
  } catch (err) {
    await closeAll([...built].reverse()).catch(() => {});
    throw err;
  }
}
