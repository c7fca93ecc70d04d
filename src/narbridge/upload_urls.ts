/**
 * The NAR URLs `nix copy --to` chose, kept resolvable.
 *
 * Nix names an uploaded NAR file after the hash of the file as sent
 * (`nar/<file hash>.nar.xz`), and after the upload it keeps the narinfo it
 * sent in its own narinfo cache for a month: later downloads through that
 * cache ask for exactly that URL, whatever narinfo the bridge serves. The
 * bridge therefore records each upload's URL, compression and file
 * hash/size in the PathInfo (`NARInfo.upload`, stored by every backend and
 * carried over gRPC), and answers the URL by rendering the NAR again in
 * that compression (see docs/compatibility.md, "Uploaded NAR URLs").
 *
 * Finding the path from the URL needs an index, URL → store path digest.
 * It lives in memory: filled by every upload through this bridge, and
 * otherwise by a scan of all PathInfos, run when a well-formed NAR URL is
 * not in it and no scan started within the last {@linkcode RESCAN_INTERVAL_MS}
 * (after a restart, or when another bridge took the upload). Only
 * uploaded paths get an entry.
 *
 * @module
 */
import type { PathInfo, PathInfoService } from "../store/pathinfo/service.ts";
import type { NARInfo_Upload } from "../proto/tvix/store/protos/pathinfo.ts";
import { validatePathInfo } from "../store/pathinfo/validate.ts";
import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";

/** Shortest time between two scans of the PathInfo service for unknown URLs. */
export const RESCAN_INTERVAL_MS = 60_000;

/** What {@linkcode UploadUrlIndex.lookup} found: the path and how it was uploaded. */
export interface UploadedNar {
  info: PathInfo;
  upload: NARInfo_Upload;
}

/** Upload URL (`nar/…`, no leading slash) → store path digest, with scans on misses. */
export class UploadUrlIndex {
  readonly #pathInfo: PathInfoService;
  readonly #rescanIntervalMs: number;
  readonly #byUrl = new Map<string, Uint8Array>();
  #scan: Promise<void> | undefined;
  #lastScanStart = -Infinity;

  constructor(pathInfo: PathInfoService, rescanIntervalMs = RESCAN_INTERVAL_MS) {
    this.#pathInfo = pathInfo;
    this.#rescanIntervalMs = rescanIntervalMs;
  }

  /** Records that the path with `digest` was uploaded at `url`. */
  remember(url: string, digest: Uint8Array): void {
    this.#byUrl.set(url, digest);
  }

  /**
   * The path uploaded at `url` (relative, `nar/…`), if it is still stored
   * and still names that URL (a path uploaded again may have moved). A URL
   * not in the index starts (or joins) a scan of the store unless
   * `rescan` is false.
   */
  async lookup(url: string, rescan = true): Promise<UploadedNar | undefined> {
    let digest = this.#byUrl.get(url);
    if (!digest && rescan) {
      await this.#rescan();
      digest = this.#byUrl.get(url);
    }
    if (!digest) return undefined;
    const info = await this.#pathInfo.get(digest);
    const upload = info?.narinfo?.upload;
    if (!info || upload?.url !== url) {
      this.#byUrl.delete(url);
      return undefined;
    }
    return { info, upload };
  }

  /** Joins the scan in progress, or starts one unless one started recently. */
  #rescan(): Promise<void> {
    if (this.#scan) return this.#scan;
    const now = performance.now();
    if (now - this.#lastScanStart < this.#rescanIntervalMs) return Promise.resolve();
    this.#lastScanStart = now;
    this.#scan = this.#scanAll().finally(() => (this.#scan = undefined));
    return this.#scan;
  }

  async #scanAll(): Promise<void> {
    const started = performance.now();
    let found = 0;
    try {
      for await (const info of this.#pathInfo.list()) {
        const url = info.narinfo?.upload?.url;
        if (!url) continue;
        const digest = digestOf(info);
        if (digest) {
          this.#byUrl.set(url, digest);
          found++;
        }
      }
    } catch (err) {
      // The lookup fails; a scan after the usual interval may succeed (not
      // at once: any client could otherwise have the store listed on every
      // request while it is failing).
      log.warn("nar-bridge: scanning path infos for upload URLs failed", {
        error: errorMessage(err),
      });
      throw err;
    }
    log.debug("nar-bridge: scanned path infos for upload URLs", {
      uploads: found,
      ms: Math.round(performance.now() - started),
    });
  }
}

/** The store path digest of a listed PathInfo (`undefined` if it does not validate). */
function digestOf(info: PathInfo): Uint8Array | undefined {
  try {
    return validatePathInfo(info).digest;
  } catch {
    return undefined;
  }
}
