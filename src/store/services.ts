/**
 * Builds the set of services a subcommand works with from their three URLs
 * (SPEC §5), plus the NAR calculation that goes with them.
 *
 * @module
 */
import { blobServiceFromUrl } from "../castore/blob/from_url.ts";
import type { BlobService } from "../castore/blob/service.ts";
import { directoryServiceFromUrl } from "../castore/directory/from_url.ts";
import type { DirectoryService } from "../castore/directory/service.ts";
import { parseServiceUrl, urlScheme } from "../castore/service_url.ts";
import type { ServiceAddrs } from "../cli/common.ts";
import { LocalNarCalculationService } from "./nar_calculation.ts";
import { pathInfoServiceFromUrl } from "./pathinfo/from_url.ts";
import { GrpcNarCalculationService } from "./pathinfo/grpc.ts";
import type { NarCalculationService, PathInfoService } from "./pathinfo/service.ts";

export type { ServiceAddrs };

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

interface Closable {
  close(): Promise<void>;
}

async function closeAll(items: Closable[]): Promise<void> {
  let first: unknown;
  for (const item of items) {
    try {
      await item.close();
    } catch (err) {
      first ??= err;
    }
  }
  if (first !== undefined) throw first;
}

function isGrpcUrl(url: string): boolean {
  return urlScheme(parseServiceUrl(url)).startsWith("grpc+");
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
    const directory = await directoryServiceFromUrl(addrs.directoryServiceAddr);
    built.push(directory);
    const pathInfo = await pathInfoServiceFromUrl(addrs.pathInfoServiceAddr);
    built.push(pathInfo);
    let narCalculation: NarCalculationService;
    if (isGrpcUrl(addrs.pathInfoServiceAddr)) {
      // The daemon renders from its own storage: no blob traffic back to us.
      const remote = await GrpcNarCalculationService.fromUrl(addrs.pathInfoServiceAddr);
      built.push(remote);
      narCalculation = remote;
    } else {
      narCalculation = new LocalNarCalculationService(blob, directory);
    }
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
