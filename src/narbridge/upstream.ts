/**
 * Pull-through: a narinfo the store lacks is looked up in upstream binary
 * caches (HTTP(S), tried in order), and a path one of them has, signed by
 * a trusted key, is copied into the store before the bridge answers
 * (docs/architecture.md#pull-through).
 *
 * The copy is eager: the NAR is fetched, decompressed, verified against
 * the narinfo (NarHash, NarSize, and FileHash/FileSize when given),
 * ingested into castore and its PathInfo written (with the upstream's
 * signatures, references, deriver and CA) before the first narinfo is
 * served. So every narinfo the bridge serves describes a path it holds,
 * whose NAR URL is its own; the path stays when the upstream goes away.
 * The price is that the first request for a path waits for its NAR.
 *
 * Concurrent requests for one path share one pull; a path no upstream has
 * is remembered as absent for a while (negative cache); an upstream that
 * fails (unreachable, 5xx, bad narinfo or NAR) is skipped, and only when
 * none answered does the pull fail ({@linkcode PullThroughError}, 502).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { bytesEqual, concatBytes } from "../castore/digest.ts";
import { renameNode } from "../castore/node.ts";
import type { BlobService } from "../castore/blob/service.ts";
import type { DirectoryService } from "../castore/directory/service.ts";
import type { PathInfoService } from "../store/pathinfo/service.ts";
import * as nixbase32 from "../store/nixbase32.ts";
import { ingestNar } from "../nar/ingest.ts";
import { LoadingCache } from "../loading_cache.ts";
import { errorMessage, InvalidRequestError } from "../errors.ts";
import { log } from "../log.ts";
import { type NarInfo, narInfoFingerprint, narInfoToPathInfo, parseNarInfo } from "./narinfo.ts";
import { type PublicKey, verifyAny } from "./signing.ts";
import { type Codec, decompressUpload } from "./compression.ts";

/** How long "no upstream has this path" is remembered unless configured otherwise. */
export const DEFAULT_NEGATIVE_TTL_MS = 60_000;

/**
 * How long an upstream may take to answer a request, or to send the next
 * bytes of a NAR, unless configured otherwise.
 */
export const DEFAULT_UPSTREAM_TIMEOUT_MS = 30_000;

/** Paths remembered as absent at most (each entry is a few dozen bytes). */
const NEGATIVE_ENTRIES = 100_000;

/** The largest narinfo accepted from an upstream. */
const MAX_NARINFO_BYTES = 1 << 20;

/** `Compression:` values whose NARs we can decode (absent means bzip2). */
const CODECS: Record<string, Codec> = {
  none: "none",
  xz: "xz",
  zstd: "zstd",
  bzip2: "bzip2",
  gzip: "gzip",
  br: "br",
};

/** Where pulled paths are stored. */
export interface UpstreamServices {
  blob: BlobService;
  directory: DirectoryService;
  pathInfo: PathInfoService;
}

/** Configuration of pull-through. */
export interface UpstreamOptions {
  /** Binary cache URLs (`http://…`, `https://…`), tried in order. */
  urls: readonly string[];
  /** A narinfo needs a valid signature by one of these keys to be used. */
  trustedKeys: readonly PublicKey[];
  /** How long a miss is remembered (default {@linkcode DEFAULT_NEGATIVE_TTL_MS}; 0: not at all). */
  negativeTtlMs?: number;
  /** See {@linkcode DEFAULT_UPSTREAM_TIMEOUT_MS}. */
  timeoutMs?: number;
  /** Called once per path pulled (metrics). */
  onPulled?: (narSize: bigint) => void;
}

/** No upstream answered (each one failed); the bridge answers 502. */
export class PullThroughError extends Error {
  override name = "PullThroughError";
}

/** One upstream's failure for one path: skipped, remembered for the error message. */
class UpstreamFailure extends Error {}

/** Checks and normalises upstream URLs (no trailing slash). */
export function parseUpstreamUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`invalid --upstream ${JSON.stringify(text)}: not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error(`invalid --upstream ${JSON.stringify(text)}: only http:// and https://`);
  }
  if (url.search || url.hash) {
    throw new Error(`invalid --upstream ${JSON.stringify(text)}: no ?query or #fragment`);
  }
  return url.href.replace(/\/+$/, "");
}

/** Reads a response body of at most `limit` bytes as text, stopping as soon as it is more. */
async function readText(res: Response, limit: number, what: string): Promise<string> {
  const tooLarge = () => new UpstreamFailure(`${what} larger than ${limit} bytes`);
  if (Number(res.headers.get("content-length") ?? "0") > limit) {
    await res.body?.cancel();
    throw tooLarge();
  }
  const parts: Uint8Array[] = [];
  let size = 0;
  try {
    for await (const part of res.body ?? []) {
      size += part.length;
      if (size > limit) throw tooLarge();
      parts.push(part);
    }
    return new TextDecoder("utf-8", { fatal: true }).decode(concatBytes(parts));
  } catch (err) {
    await res.body?.cancel().catch(() => {});
    if (err instanceof UpstreamFailure) throw err;
    throw new UpstreamFailure(`${what}: ${errorMessage(err)}`);
  }
}

/**
 * A response body whose every wait for data is bounded by `stallMs`, so a
 * stalled upstream fails the pull instead of holding it forever.
 */
async function* withStallTimeout(
  body: ReadableStream<Uint8Array>,
  stallMs: number,
  what: string,
): AsyncGenerator<Uint8Array> {
  const reader = body.getReader();
  try {
    while (true) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const stalled = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new UpstreamFailure(`${what} stalled for ${stallMs / 1000} s`)),
          stallMs,
        );
      });
      try {
        const r = await Promise.race([reader.read(), stalled]);
        if (r.done) return;
        yield r.value;
      } finally {
        clearTimeout(timer);
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

/** Pull-through from upstream binary caches into one store. */
export class Upstreams {
  readonly #services: UpstreamServices;
  readonly #opts: UpstreamOptions;
  readonly #timeoutMs: number;
  /** Aborted by {@linkcode Upstreams.stop}: ends every upstream request in progress. */
  readonly #stopping = new AbortController();
  /**
   * Misses (value: when they expire), and the pulls in progress: a pull
   * that copied the path resolves to `undefined`, so only misses are cached.
   */
  readonly #pulls = new LoadingCache<string, { expires: number }>(NEGATIVE_ENTRIES);

  /** Pulls into `services`; needs at least one URL and one trusted key. */
  constructor(services: UpstreamServices, opts: UpstreamOptions) {
    if (opts.urls.length === 0) throw new Error("pull-through needs at least one upstream");
    if (opts.trustedKeys.length === 0) {
      throw new Error("pull-through needs trusted public keys (--upstream-trusted-public-keys)");
    }
    this.#services = services;
    this.#opts = opts;
    this.#timeoutMs = opts.timeoutMs ?? DEFAULT_UPSTREAM_TIMEOUT_MS;
  }

  /**
   * Fails the pulls in progress and any later one (502), so that a bridge
   * shutting down does not wait for upstream downloads. Nothing of them is
   * stored as a path.
   */
  stop(): void {
    this.#stopping.abort();
  }

  /**
   * Copies the path with this digest (nixbase32) from the first upstream
   * that has it signed by a trusted key. Resolves `true` once its PathInfo
   * is stored, `false` when no upstream has it (or it was found absent
   * recently); fails with {@linkcode PullThroughError} when every upstream
   * failed.
   */
  async pull(digestText: string): Promise<boolean> {
    const miss = this.#pulls.get(digestText);
    if (miss) {
      if (miss.expires > Date.now()) return false;
      this.#pulls.delete(digestText);
    }
    return (await this.#pulls.fetch(digestText, () => this.#pullOnce(digestText))) === undefined;
  }

  async #pullOnce(digestText: string): Promise<{ expires: number } | undefined> {
    // Another request may have pulled it between its lookup and this one.
    if (await this.#services.pathInfo.get(nixbase32.decode(digestText))) return undefined;
    const failures: string[] = [];
    const t0 = performance.now();
    for (const base of this.#opts.urls) {
      try {
        const ni = await this.#narInfo(base, digestText);
        if (!ni) continue;
        await this.#copy(base, ni, t0);
        return undefined;
      } catch (err) {
        // Unreachable, 5xx, bad narinfo or NAR: try the next.
        if (!(err instanceof UpstreamFailure)) throw err;
        log.warn("nar-bridge: upstream failed", {
          upstream: base,
          path: digestText,
          error: errorMessage(err),
        });
        failures.push(`${base}: ${errorMessage(err)}`);
      }
    }
    if (failures.length === this.#opts.urls.length) {
      throw new PullThroughError(`no upstream answered for ${digestText}: ${failures.join("; ")}`);
    }
    // Remembered even if some upstream failed: one that is down for long
    // must not turn every miss into a request to all the others.
    const ttl = this.#opts.negativeTtlMs ?? DEFAULT_NEGATIVE_TTL_MS;
    if (ttl <= 0) return undefined;
    return { expires: Date.now() + ttl };
  }

  /** Why a request failed, in words: a timeout says how long was waited. */
  #fetchError(err: unknown): string {
    if (this.#stopping.signal.aborted) return "the bridge is shutting down";
    const name = (err as Error)?.name;
    if (name === "TimeoutError" || name === "AbortError") {
      return `no answer within ${this.#timeoutMs / 1000} s`;
    }
    return errorMessage(err);
  }

  /** The upstream's narinfo for the digest, if it has one signed by a trusted key. */
  async #narInfo(base: string, digestText: string): Promise<NarInfo | undefined> {
    const url = `${base}/${digestText}.narinfo`;
    const signal = AbortSignal.any([AbortSignal.timeout(this.#timeoutMs), this.#stopping.signal]);
    const res = await fetch(url, { signal })
      .catch((err) => {
        throw new UpstreamFailure(`GET ${url}: ${this.#fetchError(err)}`);
      });
    if (res.status === 404 || res.status === 403) {
      // S3-backed caches answer 403 for absent keys.
      await res.body?.cancel();
      return undefined;
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw new UpstreamFailure(`GET ${url}: HTTP ${res.status}`);
    }
    let ni: NarInfo;
    try {
      ni = parseNarInfo(await readText(res, MAX_NARINFO_BYTES, "narinfo"));
    } catch (err) {
      throw new UpstreamFailure(`${url}: ${errorMessage(err)}`);
    }
    if (nixbase32.encode(ni.storePath.digest) !== digestText) {
      throw new UpstreamFailure(`${url} describes ${ni.storePath.absolute()}`);
    }
    if (!verifyAny(narInfoFingerprint(ni), ni.signatures, this.#opts.trustedKeys)) {
      log.debug("nar-bridge: upstream narinfo not signed by a trusted key, ignored", {
        upstream: base,
        path: ni.storePath.absolute(),
      });
      return undefined;
    }
    return ni;
  }

  /** Fetches, verifies and ingests the NAR of `ni`, then writes its PathInfo. */
  async #copy(base: string, ni: NarInfo, t0: number): Promise<void> {
    const compression = ni.compression ?? "bzip2";
    const codec = CODECS[compression];
    if (!codec) throw new UpstreamFailure(`unsupported Compression: ${compression}`);
    const url = new URL(ni.url, base + "/").href;
    // Relative to the cache, as Nix reads it: a narinfo cannot send us elsewhere.
    if (!url.startsWith(base + "/")) throw new UpstreamFailure(`URL ${ni.url} leaves ${base}`);
    // The headers within the timeout; then each wait for body bytes (withStallTimeout).
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.#timeoutMs);
    const signal = AbortSignal.any([abort.signal, this.#stopping.signal]);
    const res = await fetch(url, { signal }).catch((err) => {
      throw new UpstreamFailure(`GET ${url}: ${this.#fetchError(err)}`);
    }).finally(() => clearTimeout(timer));
    if (!res.ok || !res.body) {
      await res.body?.cancel();
      throw new UpstreamFailure(`GET ${url}: HTTP ${res.status}`);
    }
    const fileHash = createHash("sha256");
    let fileSize = 0n;
    const body = withStallTimeout(res.body, this.#timeoutMs, `NAR ${url}`);
    const mismatch = (what: string) =>
      new UpstreamFailure(`${what} of ${url} differs from narinfo`);
    // Stopped as soon as it is longer than the signed narinfo says, before
    // more of it is stored: a NAR file swapped for a larger one (on the
    // upstream, or on the way over http://) would otherwise fill the disk.
    const counted = async function* () {
      for await (const piece of body) {
        fileHash.update(piece);
        fileSize += BigInt(piece.length);
        if (ni.fileSize !== undefined && fileSize > ni.fileSize) throw mismatch("FileSize");
        yield piece;
      }
    };
    const atMostNarSize = async function* (nar: AsyncIterable<Uint8Array>) {
      let narSize = 0n;
      for await (const piece of nar) {
        narSize += BigInt(piece.length);
        if (narSize > ni.narSize) throw mismatch("NarSize");
        yield piece;
      }
    };
    let sniffed: Codec | undefined;
    let ingested;
    try {
      const nar = decompressUpload(counted(), codec === "br" ? "br" : undefined, (c) => {
        sniffed = c;
        if (c !== codec) throw new UpstreamFailure(`NAR is ${c}, narinfo says ${compression}`);
      });
      ingested = await ingestNar(
        atMostNarSize(nar),
        this.#services.blob,
        this.#services.directory,
      );
    } catch (err) {
      if (err instanceof UpstreamFailure) throw err;
      // Corrupt or truncated data, a missing decompressor, a refused NAR:
      // this upstream's copy is unusable. (Blobs stored so far are left to gc.)
      const why = this.#stopping.signal.aborted ? "the bridge is shutting down" : errorMessage(err);
      throw new UpstreamFailure(`NAR ${url} (${sniffed ?? compression}): ${why}`);
    }
    if (ingested.narSize !== ni.narSize) throw mismatch("NarSize");
    if (!bytesEqual(ingested.narSha256, ni.narHash)) throw mismatch("NarHash");
    if (ni.fileSize !== undefined && ni.fileSize !== fileSize) throw mismatch("FileSize");
    if (ni.fileHash && !bytesEqual(ni.fileHash, new Uint8Array(fileHash.digest()))) {
      throw mismatch("FileHash");
    }
    let info;
    try {
      info = narInfoToPathInfo(ni);
    } catch (err) {
      throw new UpstreamFailure(`${ni.storePath.absolute()}: ${errorMessage(err)}`);
    }
    info.node = {
      node: renameNode(ingested.node, new TextEncoder().encode(ni.storePath.basename())),
    };
    try {
      await this.#services.pathInfo.put(info);
    } catch (err) {
      if (err instanceof InvalidRequestError) throw new UpstreamFailure(errorMessage(err));
      throw err;
    }
    this.#opts.onPulled?.(ni.narSize);
    log.info("nar-bridge: pulled from upstream", {
      path: ni.storePath.absolute(),
      narSize: ni.narSize,
      ms: Math.round(performance.now() - t0),
      upstream: base,
    });
  }
}
