/**
 * nar-bridge: a Nix HTTP binary cache served straight from the store.
 *
 * Endpoints (paths relative to the cache root):
 * - `GET /nix-cache-info`;
 * - `GET`/`HEAD /<digest>.narinfo`, rendered from the PathInfo (signed when a
 *   key is configured);
 * - `GET`/`HEAD /nar/<digest>-<narhash>.nar[.zst]`, rendered on the fly from
 *   castore. The URL names the store path (so the PathInfo, and with it the
 *   root node, is found with one `get`) and the NAR hash (so a URL from an
 *   older narinfo of a replaced path stops resolving). Uncompressed NARs
 *   carry a Content-Length and honour single `Range`s;
 * - `PUT /nar/<anything>` then `PUT /<digest>.narinfo`, what `nix copy --to`
 *   sends: the NAR is decompressed and ingested into castore at once, and the
 *   PathInfo is written only when its narinfo arrives and agrees with it;
 *   `GET`/`HEAD` of that upload URL keep answering (`upload_urls.ts`);
 * - `GET`/`HEAD /<digest>.ls`, the NAR listing (`listing.ts`).
 *
 * Tokens (`auth.ts`) guard uploads and optionally reads; a store out of
 * reach answers 503.
 *
 * The HTTP side (connections, timeouts, streaming with backpressure and
 * cancellation) is `http.ts`; this module only maps requests to the store.
 * Uploads that never become a path (no narinfo, a refused narinfo, an
 * interrupted or stalled body) leave blobs and directories that no PathInfo
 * refers to; the bridge forgets them when their lease ends (`staging.ts`)
 * and `tvix-store gc` reclaims the space.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { bytesEqual, concatBytes } from "../castore/digest.ts";
import { errorMessage, InvalidRequestError, UnavailableError, UpstreamError } from "../errors.ts";
import { type NodeVariant, renameNode } from "../castore/node.ts";
import type { BlobService } from "../castore/blob/service.ts";
import type { DirectoryService } from "../castore/directory/service.ts";
import type { PathInfo, PathInfoService } from "../store/pathinfo/service.ts";
import type { NarCalculationService } from "../nar/calculation.ts";
import type { NARInfo } from "../proto/tvix/store/protos/pathinfo.ts";
import * as nixbase32 from "../store/nixbase32.ts";
import { STORE_DIR } from "../store/store_path.ts";
import { renderNar } from "../nar/render.ts";
import { ingestNar } from "../nar/ingest.ts";
import { log } from "../log.ts";
import { parseListenAddress } from "../listen_address.ts";
import {
  NarInfoError,
  narInfoFingerprint,
  narInfoToPathInfo,
  parseNarInfo,
  pathInfoToNarInfo,
  renderNarInfo,
} from "./narinfo.ts";
import { type PublicKey, type SecretKey, verifyAny } from "./signing.ts";
import {
  compressAs,
  compressZstd,
  DecompressError,
  decompressUpload,
  isCodec,
} from "./compression.ts";
import { type UploadedNar, UploadUrlIndex } from "./upload_urls.ts";
import { Semaphore } from "../concurrency.ts";
import { narListing } from "./listing.ts";
import { AccessControl, type AccessTokens } from "./auth.ts";
import { validatePathInfo } from "../store/pathinfo/validate.ts";
import { type ReleaseReason, type StagedNar, Staging } from "./staging.ts";
import { PullThroughError, type UpstreamOptions, Upstreams } from "./upstream.ts";
import { instrumentHttp, recordNarInfoLookup, recordPulled } from "./metrics.ts";
import {
  BodyStalled,
  ClientGone,
  type HttpLimits,
  type HttpRequest,
  type HttpResponse,
  resolveLimits,
  serveHttp,
} from "./http.ts";

/** The services the bridge reads from and writes to (a subset of `Services`). */
export interface NarBridgeServices {
  blob: BlobService;
  directory: DirectoryService;
  pathInfo: PathInfoService;
  narCalculation: NarCalculationService;
}

/** How the bridge serves and accepts paths. */
export interface NarBridgeOptions {
  /** Adds this key's `Sig:` to every narinfo served. */
  signingKey?: SecretKey;
  /** When set, uploads need a narinfo signature by one of these keys. */
  trustedKeys?: readonly PublicKey[];
  /** What served narinfos point at: plain NARs (default) or zstd-compressed ones. */
  compression?: "none" | "zstd";
  /** `Priority` in `/nix-cache-info` (lower is preferred by Nix); default 39. */
  priority?: number;
  /** How long an uploaded NAR waits for its narinfo (default `DEFAULT_UPLOAD_LEASE_MS`). */
  uploadLeaseMs?: number;
  /** Header and body timeouts and the connection limit (unset: `DEFAULT_HTTP_LIMITS`). */
  limits?: Partial<HttpLimits>;
  /** `max-age` of served narinfos, in seconds (default `DEFAULT_NARINFO_TTL_SECONDS`). */
  narinfoTtlSeconds?: number;
  /** Tokens needed to upload and (when read tokens are set) to read; unset: open. */
  tokens?: AccessTokens;
  /** Pull-through: narinfo misses are looked up in these caches (`upstream.ts`). */
  upstream?: UpstreamOptions;
}

/**
 * How long clients and proxies may reuse a narinfo by default: short, so a
 * path removed by `tvix-store delete` or gc stops being handed out soon.
 */
export const DEFAULT_NARINFO_TTL_SECONDS = 60;

/** Cache-Control of NARs and listings: their URLs name their contents. */
const IMMUTABLE = "public, max-age=31536000, immutable";

/**
 * Uploaded NARs served in a compression the store does not keep (xz,
 * bzip2, gzip, br) at once: each runs a compressor over the whole NAR, so
 * more than a few would only share the cores; the rest get 503.
 */
const MAX_RECOMPRESSIONS = 4;

/** A request that fails with a specific HTTP status. */
class HttpError extends Error {
  /**
   * @param clientGone the client hung up or stalled: normal, logged at debug
   */
  constructor(readonly status: number, message: string, readonly clientGone = false) {
    super(message);
  }
}

const NB32 = "[0-9a-df-np-sv-z]";
const NARINFO_RE = new RegExp(`^/(${NB32}{32})\\.narinfo$`);
const LISTING_RE = new RegExp(`^/(${NB32}{32})\\.ls$`);
const NAR_RE = new RegExp(`^/nar/(${NB32}{32})-(${NB32}{52})\\.nar(\\.zst)?$`);
/** How `nix copy --to` names an uploaded NAR: `nar/<nixbase32 file hash>.nar[.<compression>]`. */
const NIX_NAR_NAME = new RegExp(`^/nar/(${NB32}{52})\\.nar(?:\\.[a-z0-9]+)?$`);
const UPLOAD_RE = /^\/nar\/[A-Za-z0-9._-]+$/;
const MAX_NARINFO_BYTES = 1 << 20;
/** Largest listing upload read (and dropped): a path of about a million files. */
const MAX_LISTING_UPLOAD_BYTES = 256 << 20;
const encoder = new TextEncoder();

function text(status: number, body: string, headers: Record<string, string> = {}): HttpResponse {
  const bytes = encoder.encode(body);
  return {
    status,
    headers: {
      "content-type": "text/plain; charset=utf-8",
      "content-length": String(bytes.length),
      ...headers,
    },
    body: bytes,
  };
}

/** Parses a single-range `Range` header against a body of `size` bytes. */
function parseRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | "unsatisfiable" | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  // Multiple ranges or other units: serving the whole body is allowed (RFC 9110 §14.2).
  if (!m || (m[1] === "" && m[2] === "")) return undefined;
  let start: number, end: number;
  if (m[1] === "") {
    const suffix = Number(m[2]);
    if (suffix === 0) return "unsatisfiable";
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== "" && Number(m[2]) < start) return undefined; // invalid: ignore
  }
  if (start >= size) return "unsatisfiable";
  return { start, end };
}

/** The request's body, failing with the right status when the client stalls or goes away. */
async function* uploadBody(req: HttpRequest): AsyncGenerator<Uint8Array> {
  try {
    yield* req.body;
  } catch (err) {
    if (err instanceof BodyStalled) throw new HttpError(408, err.message, true);
    if (err instanceof ClientGone) throw new HttpError(400, err.message, true);
    throw err;
  }
}

/**
 * Reads a request body of at most `limit` bytes; a larger Content-Length
 * is refused before anything is read.
 */
async function readLimited(req: HttpRequest, limit: number, keep = true): Promise<Uint8Array> {
  const declared = req.header("content-length");
  if (declared !== undefined && Number(declared) > limit) {
    throw new HttpError(413, `body larger than ${limit} bytes`);
  }
  const parts: Uint8Array[] = [];
  let total = 0;
  for await (const part of uploadBody(req)) {
    total += part.length;
    if (total > limit) throw new HttpError(413, `body larger than ${limit} bytes`);
    if (keep) parts.push(part);
  }
  return concatBytes(parts);
}

/** Serves one store as a Nix binary cache; `handle` is the HTTP handler. */
export class NarBridge {
  readonly #services: NarBridgeServices;
  readonly #opts: NarBridgeOptions;
  readonly #staging: Staging;
  readonly #uploads: UploadUrlIndex;
  /** Uploaded NARs being compressed again (xz, bzip2, gzip, br) at once. */
  readonly #recompressions = new Semaphore(MAX_RECOMPRESSIONS);
  readonly #access: AccessControl;
  readonly #upstreams?: Upstreams;

  constructor(services: NarBridgeServices, opts: NarBridgeOptions = {}) {
    this.#services = services;
    this.#opts = opts;
    this.#uploads = new UploadUrlIndex(services.pathInfo);
    this.#access = new AccessControl(opts.tokens ?? {});
    if (opts.upstream) {
      this.#upstreams = new Upstreams(services, { onPulled: recordPulled, ...opts.upstream });
    }
    this.#staging = new Staging({
      leaseMs: opts.uploadLeaseMs,
      onRelease: (path: string, reason: ReleaseReason) => {
        // Its blobs stay until `tvix-store gc`: nothing refers to them.
        if (reason !== "closed") log.info("nar-bridge: staged NAR released", { path, reason });
      },
    });
  }

  /** Answers one request; never throws (failures become 4xx/5xx responses). */
  async handle(req: HttpRequest): Promise<HttpResponse> {
    const { method, path } = req;
    if (this.#access.check(method, req.header("authorization")) === "unauthorized") {
      log.info("nar-bridge request refused", { method, path, status: 401 });
      return text(401, "a valid token is needed (Bearer, or the password of Basic auth)\n", {
        "www-authenticate": 'Basic realm="nar-bridge"',
      });
    }
    try {
      return await this.#route(req);
    } catch (err) {
      if (err instanceof HttpError) {
        const fields = { method, path, status: err.status, error: err.message };
        // Nix asks for absent paths all the time, and clients hang up;
        // refused uploads are worth a line.
        if (err.status >= 500) log.error("nar-bridge request failed", fields);
        else if (err.status === 404 || err.clientGone) {
          log.debug("nar-bridge: " + err.message, fields);
        } else log.info("nar-bridge request refused", fields);
        const allow: Record<string, string> = err.status === 405 ? { allow: "GET, HEAD, PUT" } : {};
        return text(err.status, err.message + "\n", allow);
      }
      // A store out of reach (503) or one that answered with a failure (502)
      // is not the bridge's fault; clients may retry later.
      if (err instanceof UnavailableError) {
        log.warn("nar-bridge: store unavailable", { method, path, error: errorMessage(err) });
        return text(503, `store unavailable: ${errorMessage(err)}\n`, { "retry-after": "5" });
      }
      if (err instanceof UpstreamError) {
        log.error("nar-bridge: store failed", { method, path, error: errorMessage(err) });
        return text(502, `store failed: ${errorMessage(err)}\n`);
      }
      log.error("nar-bridge request failed", { method, path, error: errorMessage(err) });
      return text(500, `internal error: ${errorMessage(err)}\n`);
    }
  }

  /** Fails pulls from upstreams in progress, so that closing does not wait for them. */
  stopPulling(): void {
    this.#upstreams?.stop();
  }

  /** Releases what the bridge holds (staged uploads and their timer). */
  close(): void {
    this.#upstreams?.stop();
    this.#staging.close();
  }

  async #route(req: HttpRequest): Promise<HttpResponse> {
    const res = await this.#routeRequest(req);
    if (res.status === 200 || res.status === 206) {
      // NAR URLs name their contents: whatever they answer stays true. A
      // listing is named by its store path, which a delete and a new upload
      // may give other contents: it gets the narinfo's lifetime.
      if (req.path.startsWith("/nar/")) res.headers["cache-control"] = IMMUTABLE;
      else if (LISTING_RE.test(req.path)) {
        res.headers["cache-control"] = this.#narinfoCacheControl();
      }
    }
    return res;
  }

  /** `Cache-Control` of what describes a store path (its narinfo, its listing). */
  #narinfoCacheControl(): string {
    return `public, max-age=${this.#opts.narinfoTtlSeconds ?? DEFAULT_NARINFO_TTL_SECONDS}`;
  }

  #routeRequest(req: HttpRequest): Promise<HttpResponse> {
    const { method, path } = req;
    const read = method === "GET" || method === "HEAD";
    if (path === "/nix-cache-info" && read) return Promise.resolve(this.#cacheInfo(method));
    let m = NARINFO_RE.exec(path);
    if (m && read) return this.#getNarInfo(method, m[1]);
    if (m && method === "PUT") return this.#putNarInfo(req, m[1]);
    m = LISTING_RE.exec(path);
    if (m && read) return this.#getListing(method, m[1]);
    if (m && method === "PUT") return this.#putListing(req);
    m = NAR_RE.exec(path);
    if (m && read) return this.#getNar(req, m[1], m[2], m[3] !== undefined);
    if (UPLOAD_RE.test(path) && read) return this.#getUploadedNar(req, path);
    if (UPLOAD_RE.test(path) && method === "PUT") return this.#putNar(req, path);
    if (read || method === "PUT") throw new HttpError(404, `not found: ${path}`);
    throw new HttpError(405, `method ${method} not allowed`);
  }

  #cacheInfo(method: string): HttpResponse {
    const body = encoder.encode(
      `StoreDir: ${STORE_DIR}\nWantMassQuery: 1\nPriority: ${this.#opts.priority ?? 39}\n`,
    );
    return {
      status: 200,
      headers: { "content-type": "text/x-nix-cache-info", "content-length": String(body.length) },
      body: method === "HEAD" ? undefined : body,
    };
  }

  /** NAR metadata of a PathInfo, computing size/hash if it was stored without. */
  async #narMeta(info: PathInfo, node: NodeVariant): Promise<NARInfo> {
    if (info.narinfo) return info.narinfo;
    if (info.references.length > 0) {
      // Reference names are only known from a narinfo; a narinfo cannot be rendered.
      throw new HttpError(500, "PathInfo has references but no NAR metadata");
    }
    const { narSize, narSha256 } = await this.#services.narCalculation.calculateNar(node);
    return {
      narSize,
      narSha256,
      signatures: [],
      referenceNames: [],
      deriver: undefined,
      ca: undefined,
      upload: undefined,
    };
  }

  async #lookup(
    digestText: string,
  ): Promise<{ info: PathInfo; node: NodeVariant; meta: NARInfo } | undefined> {
    const info = await this.#services.pathInfo.get(nixbase32.decode(digestText));
    const node = info?.node?.node;
    if (!info || !node) return undefined;
    return { info, node, meta: await this.#narMeta(info, node) };
  }

  async #getNarInfo(method: string, digestText: string): Promise<HttpResponse> {
    let found = await this.#lookup(digestText);
    let pulled = false;
    if (!found && this.#upstreams) {
      try {
        pulled = await this.#upstreams.pull(digestText);
      } catch (err) {
        if (err instanceof PullThroughError) throw new HttpError(502, err.message);
        throw err;
      }
      if (pulled) found = await this.#lookup(digestText);
    }
    recordNarInfoLookup(found ? (pulled ? "pulled" : "hit") : "miss");
    if (!found) throw new HttpError(404, `${digestText}.narinfo not found`);
    const compression = this.#opts.compression ?? "none";
    const url = `nar/${digestText}-${nixbase32.encode(found.meta.narSha256)}.nar${
      compression === "zstd" ? ".zst" : ""
    }`;
    const ni = pathInfoToNarInfo({ ...found.info, narinfo: found.meta }, url);
    ni.compression = compression;
    const key = this.#opts.signingKey;
    if (key) {
      // Replace a stored signature by the same key name rather than listing two.
      ni.signatures = [
        ...ni.signatures.filter((s) => s.name !== key.name),
        key.sign(narInfoFingerprint(ni)),
      ];
    }
    const body = encoder.encode(renderNarInfo(ni));
    return {
      status: 200,
      headers: {
        "content-type": "text/x-nix-narinfo",
        "content-length": String(body.length),
        "cache-control": this.#narinfoCacheControl(),
      },
      body: method === "HEAD" ? undefined : body,
    };
  }

  async #getNar(
    req: HttpRequest,
    digestText: string,
    narHashText: string,
    zstd: boolean,
  ): Promise<HttpResponse> {
    const found = await this.#lookup(digestText);
    if (!found || nixbase32.encode(found.meta.narSha256) !== narHashText) {
      throw new HttpError(404, `NAR ${digestText}-${narHashText} not found`);
    }
    const { blob, directory } = this.#services;
    const headers: Record<string, string> = { "content-type": "application/x-nix-nar" };
    const head = req.method === "HEAD";
    if (zstd) {
      // Compressed size is unknown up front: no length, no ranges.
      const body = head ? undefined : compressZstd(renderNar(found.node, blob, directory));
      return { status: 200, headers, body, piecesOwned: true };
    }
    const size = Number(found.meta.narSize);
    headers["accept-ranges"] = "bytes";
    // The NAR hash names these bytes. A resumed download sends it back in
    // If-Range to get the rest only if the URL still serves the same NAR
    // (an upload URL can be given to another path); any other validator,
    // or a date (no Last-Modified is sent), gets the whole NAR (RFC 9110).
    const etag = `"${narHashText}"`;
    headers["etag"] = etag;
    const ifRange = req.header("if-range");
    const range = ifRange !== undefined && ifRange.trim() !== etag
      ? undefined
      : parseRange(req.header("range"), size);
    if (range === "unsatisfiable") {
      return {
        status: 416,
        headers: { "content-range": `bytes */${size}`, "content-length": "0" },
      };
    }
    const start = range?.start ?? 0;
    const length = range ? range.end - range.start + 1 : size;
    headers["content-length"] = String(length);
    if (range) headers["content-range"] = `bytes ${range.start}-${range.end}/${size}`;
    const status = range ? 206 : 200;
    if (head) return { status, headers };
    // A range starts at the file and chunk holding its first byte (layout
    // arithmetic in renderNar); exactly `length` bytes or an error.
    const body = renderNar(found.node, blob, directory, { start, length });
    return { status, headers, body, piecesOwned: true };
  }

  /** The path's NAR listing (`listing.ts`). */
  async #getListing(method: string, digestText: string): Promise<HttpResponse> {
    const info = await this.#services.pathInfo.get(nixbase32.decode(digestText));
    const node = info?.node?.node;
    if (!node) throw new HttpError(404, `${digestText}.ls not found`);
    const body = await narListing(node, this.#services.directory);
    return {
      status: 200,
      headers: { "content-type": "application/json", "content-length": String(body.length) },
      body: method === "HEAD" ? undefined : body,
    };
  }

  /**
   * A NAR at the URL `nix copy --to` uploaded it to (`upload_urls.ts`),
   * rendered again in the compression its narinfo named.
   */
  async #getUploadedNar(req: HttpRequest, path: string): Promise<HttpResponse> {
    const found = await this.#uploads.lookup(path.slice(1));
    const node = found?.info.node?.node;
    const narSha256 = found?.info.narinfo?.narSha256;
    if (!found || !node || !narSha256 || !isCodec(found.upload.compression)) {
      throw new HttpError(404, `not found: ${path}`);
    }
    const codec = found.upload.compression;
    if (codec === "none" || codec === "zstd") {
      // The same bytes as the bridge's own URL for this path (ranges included).
      const digestText = nixbase32.encode(validatePathInfo(found.info).digest);
      return this.#getNar(req, digestText, nixbase32.encode(narSha256), codec === "zstd");
    }
    const { blob, directory } = this.#services;
    const headers = { "content-type": "application/x-nix-nar" };
    if (req.method === "HEAD") return { status: 200, headers };
    // Each of these runs a compressor for the whole NAR (a process for xz
    // and bzip2): a few at once, and beyond that Nix is told to come back.
    if (this.#recompressions.free === 0) {
      throw new HttpError(503, "too many NARs being compressed at once; retry later");
    }
    const recompressions = this.#recompressions;
    // The permit is taken when the body starts, so a response never sent
    // holds none.
    const body = async function* () {
      const done = await recompressions.acquire();
      try {
        yield* compressAs(codec, renderNar(node, blob, directory));
      } finally {
        done();
      }
    };
    return { status: 200, headers, body: body() };
  }

  async #putNar(req: HttpRequest, path: string): Promise<HttpResponse> {
    if (req.header("content-length") === "0") throw new HttpError(400, "empty NAR upload");
    const fileHash = createHash("sha256");
    let fileSize = 0;
    const counted = async function* () {
      for await (const piece of uploadBody(req)) {
        fileHash.update(piece);
        fileSize += piece.length;
        yield piece;
      }
    };
    let ingested;
    try {
      const nar = decompressUpload(counted(), path.endsWith(".br") ? "br" : undefined);
      ingested = await ingestNar(nar, this.#services.blob, this.#services.directory);
    } catch (err) {
      if (err instanceof DecompressError) {
        throw new HttpError(err.unsupported ? 415 : 400, err.message);
      }
      if (err instanceof InvalidRequestError) throw new HttpError(400, err.message);
      throw err;
    }
    const fileSha256 = new Uint8Array(fileHash.digest());
    // Nix names a NAR file after the hash of what it uploads; a file whose
    // name says otherwise would take over the URL of other contents (and
    // break the downloads of clients holding the narinfo that names it).
    const named = NIX_NAR_NAME.exec(path)?.[1];
    if (named !== undefined && named !== nixbase32.encode(fileSha256)) {
      throw new HttpError(400, `${path} is named after another file hash than its contents'`);
    }
    this.#staging.put(path, {
      node: ingested.node,
      narSize: ingested.narSize,
      narSha256: ingested.narSha256,
      fileSize: BigInt(fileSize),
      fileSha256,
    });
    log.debug("nar-bridge: NAR uploaded, waiting for its narinfo", {
      path,
      narSize: ingested.narSize,
    });
    return { status: 200, headers: { "content-length": "0" } };
  }

  /**
   * A listing uploaded by `nix copy --to '…?write-nar-listing=true'`, which
   * sends it before the narinfo and gives up on an error. Listings are
   * served from the store itself, so the upload is read and dropped.
   */
  async #putListing(req: HttpRequest): Promise<HttpResponse> {
    await readLimited(req, MAX_LISTING_UPLOAD_BYTES, false);
    return { status: 200, headers: { "content-length": "0" } };
  }

  async #putNarInfo(req: HttpRequest, digestText: string): Promise<HttpResponse> {
    const raw = await readLimited(req, MAX_NARINFO_BYTES);
    let ni;
    try {
      ni = parseNarInfo(new TextDecoder("utf-8", { fatal: true }).decode(raw));
    } catch (err) {
      throw new HttpError(400, `invalid narinfo: ${errorMessage(err)}`);
    }
    if (nixbase32.encode(ni.storePath.digest) !== digestText) {
      throw new HttpError(400, `narinfo for ${ni.storePath} uploaded as ${digestText}.narinfo`);
    }
    let narPath: string;
    try {
      narPath = new URL(ni.url, "http://cache/").pathname;
    } catch {
      throw new HttpError(400, `invalid URL ${ni.url}`);
    }
    const trusted = this.#opts.trustedKeys;
    if (trusted && !verifyAny(narInfoFingerprint(ni), ni.signatures, trusted)) {
      // The staged NAR stays until its lease ends, as with other refusals:
      // with uploads open to anyone, a narinfo naming someone else's waiting
      // NAR (its hash and size are public for any path a public cache has)
      // would otherwise cancel that upload.
      throw new HttpError(403, `no valid signature by a trusted key on ${ni.storePath}`);
    }
    const uploadUrl = narPath.slice(1);
    const waiting = this.#staging.get(narPath);
    // The path already uploaded at this URL. A URL the index does not know
    // is looked up in the store only when no NAR waits for this narinfo: a
    // fresh upload must not wait for a scan.
    const holder = await this.#uploads.lookup(uploadUrl, waiting === undefined);
    const staged = waiting ?? (holder && storedAsStaged(holder));
    if (!staged) {
      throw new HttpError(
        400,
        `the NAR at ${ni.url} was not uploaded or its lease ended (upload it before the narinfo)`,
      );
    }
    // Otherwise the staged NAR stays (until its lease ends) whatever happens
    // here: paths with identical contents share one NAR URL, and nix copies
    // in parallel.
    const mismatch = (what: string) =>
      new HttpError(400, `${what} mismatch between narinfo and uploaded NAR ${ni.url}`);
    if (staged.narSize !== ni.narSize) throw mismatch("NarSize");
    if (!bytesEqual(staged.narSha256, ni.narHash)) throw mismatch("NarHash");
    if (ni.fileSize !== undefined && ni.fileSize !== staged.fileSize) throw mismatch("FileSize");
    if (ni.fileHash && !bytesEqual(ni.fileHash, staged.fileSha256)) throw mismatch("FileHash");

    let info: PathInfo;
    try {
      info = narInfoToPathInfo(ni);
    } catch (err) {
      if (err instanceof NarInfoError) throw new HttpError(400, err.message);
      throw err;
    }
    info.node = { node: renameNode(staged.node, encoder.encode(ni.storePath.basename())) };
    // A narinfo without Compression means bzip2 to Nix.
    const compression = ni.compression ?? "bzip2";
    // A URL serves one NAR: another path's, of other contents or in
    // another compression, keeps it.
    if (
      holder && (!bytesEqual(holder.info.narinfo?.narSha256 ?? new Uint8Array(), ni.narHash) ||
        holder.upload.compression !== compression)
    ) {
      throw new HttpError(409, `${ni.url} already serves the NAR of another path`);
    }
    if (info.narinfo) {
      info.narinfo.upload = {
        url: uploadUrl,
        compression,
        fileSha256: staged.fileSha256,
        fileSize: staged.fileSize,
      };
    }
    try {
      await this.#services.pathInfo.put(info);
    } catch (err) {
      if (err instanceof InvalidRequestError) throw new HttpError(400, err.message);
      throw err;
    }
    this.#uploads.remember(uploadUrl, ni.storePath.digest);
    log.info("nar-bridge: path uploaded", { path: ni.storePath.absolute(), narSize: ni.narSize });
    return { status: 200, headers: { "content-length": "0" } };
  }
}

/**
 * The NAR of a path already uploaded, as if staged: Nix names a NAR file
 * after its hash and skips uploading one whose URL answers a HEAD, so a
 * second path with the same contents arrives as a narinfo alone, also long
 * after the first upload's lease ended. The checks against the narinfo
 * then run against what that path stored.
 */
function storedAsStaged(found: UploadedNar): StagedNar | undefined {
  const node = found.info.node?.node;
  const narinfo = found.info.narinfo;
  if (!node || !narinfo) return undefined;
  return {
    node,
    narSize: narinfo.narSize,
    narSha256: narinfo.narSha256,
    fileSize: found.upload.fileSize,
    fileSha256: found.upload.fileSha256,
  };
}

/** A running nar-bridge listener. */
export interface NarBridgeHandle {
  /** The port it listens on (useful with port 0). */
  port: number;
  /** Stops listening, ends streaming responses and waits for the server to finish. */
  close(): Promise<void>;
}

/**
 * Serves `services` as a Nix binary cache on `opts.listenAddress`
 * (`host:port`, `[v6]:port`). Used by the `nar-bridge` subcommand and by
 * the daemon's `--nar-bridge-listen-address`.
 */
export async function startNarBridge(
  services: NarBridgeServices,
  opts: NarBridgeOptions & { listenAddress: string },
): Promise<NarBridgeHandle> {
  const addr = parseListenAddress(opts.listenAddress);
  if (addr.kind !== "tcp") {
    throw new InvalidRequestError(
      `invalid listen address ${
        JSON.stringify(opts.listenAddress)
      }: nar-bridge listens on host:port or [v6]:port`,
    );
  }
  const bridge = new NarBridge(services, opts);
  let server;
  try {
    server = await serveHttp(
      addr,
      instrumentHttp((req) => bridge.handle(req)),
      resolveLimits(opts.limits),
    );
  } catch (err) {
    bridge.close();
    throw err;
  }
  log.info("nar-bridge listening", { address: server.address });
  return {
    port: server.port,
    close: async () => {
      bridge.stopPulling();
      await server.close();
      bridge.close();
    },
  };
}
