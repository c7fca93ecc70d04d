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
 *   PathInfo is written only when its narinfo arrives and agrees with it.
 *
 * Built on `Deno.serve` rather than node:http: request and response bodies
 * are web streams, so a response is pulled from the NAR renderer only as
 * fast as the client reads (one piece in flight per response; a slow client
 * holds only its own renderer), cancellation reaches the renderer when a
 * client goes away, and `Expect: 100-continue` (which Nix sends with every
 * upload) is answered by the runtime.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { bytesEqual, concatBytes } from "../castore/digest.ts";
import { InvalidRequestError, StorageError } from "../errors.ts";
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
import { errorMessage } from "../errors.ts";
import {
  NarInfoError,
  narInfoFingerprint,
  narInfoToPathInfo,
  parseNarInfo,
  pathInfoToNarInfo,
  renderNarInfo,
} from "./narinfo.ts";
import { type PublicKey, type SecretKey, verifyAny } from "./signing.ts";
import { compressZstd, DecompressError, decompressUpload } from "./compression.ts";
import { Staging } from "./staging.ts";

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
  /** Where uploaded NARs wait for their narinfo (a fresh one by default). */
  staging?: Staging;
}

/** A request that fails with a specific HTTP status. */
class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** Cuts a response body short for a reason already logged (or expected: shutdown). */
class ResponseCut extends Error {}

const NB32 = "[0-9a-df-np-sv-z]";
const NARINFO_RE = new RegExp(`^/(${NB32}{32})\\.narinfo$`);
const NAR_RE = new RegExp(`^/nar/(${NB32}{32})-(${NB32}{52})\\.nar(\\.zst)?$`);
const UPLOAD_RE = /^\/nar\/[A-Za-z0-9._-]+$/;
const MAX_NARINFO_BYTES = 1 << 20;
/**
 * Bytes a response body may hold ready beyond what the connection took:
 * enough for the renderer to work while the socket writes (pull-only, with
 * nothing queued, halves throughput), small enough that a slow client
 * costs little memory.
 */
const STREAM_BUFFER_BYTES = 1 << 20;

function text(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(body, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
  });
}

/** Parses a single-range `Range` header against a body of `size` bytes. */
function parseRange(
  header: string | null,
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

/**
 * Yields bytes `[start, start + length)` of `src`, then stops reading it;
 * fails if `src` ends early (the PathInfo's NarSize disagrees with the tree).
 */
async function* sliceStream(
  src: AsyncIterable<Uint8Array>,
  start: number,
  length: number,
): AsyncGenerator<Uint8Array> {
  let skip = start;
  let left = length;
  if (left === 0) return;
  for await (let piece of src) {
    if (skip >= piece.length) {
      skip -= piece.length;
      continue;
    }
    if (skip > 0) {
      piece = piece.subarray(skip);
      skip = 0;
    }
    if (piece.length >= left) {
      yield piece.subarray(0, left);
      return;
    }
    yield piece;
    left -= piece.length;
  }
  throw new StorageError(`NAR ended ${left} bytes before its recorded size`);
}

/** Reads a request body of at most `limit` bytes. */
async function readLimited(req: Request, limit: number): Promise<Uint8Array> {
  if (!req.body) return new Uint8Array(0);
  const parts: Uint8Array[] = [];
  let total = 0;
  for await (const part of req.body) {
    total += part.length;
    if (total > limit) throw new HttpError(413, `body larger than ${limit} bytes`);
    parts.push(part);
  }
  return concatBytes(parts);
}

/** Serves one store as a Nix binary cache; `handle` is the HTTP handler. */
export class NarBridge {
  readonly #services: NarBridgeServices;
  readonly #opts: NarBridgeOptions;
  readonly #staging: Staging;
  // Controllers of response bodies still streaming, so close() can end them.
  readonly #streams = new Set<ReadableStreamDefaultController<Uint8Array>>();

  constructor(services: NarBridgeServices, opts: NarBridgeOptions = {}) {
    this.#services = services;
    this.#opts = opts;
    this.#staging = opts.staging ?? new Staging();
  }

  /** Answers one request; never throws (failures become 4xx/5xx responses). */
  async handle(req: Request): Promise<Response> {
    const path = new URL(req.url).pathname;
    try {
      return await this.#route(req, path);
    } catch (err) {
      if (err instanceof HttpError) {
        const fields = { method: req.method, path, status: err.status, error: err.message };
        // Nix asks for absent paths all the time; refused uploads are worth a line.
        if (err.status >= 500) log.error("nar-bridge request failed", fields);
        else if (err.status === 404) log.debug("nar-bridge: not found", fields);
        else log.info("nar-bridge request refused", fields);
        return text(err.status, err.message + "\n");
      }
      log.error("nar-bridge request failed", {
        method: req.method,
        path,
        error: errorMessage(err),
      });
      return text(500, `internal error: ${errorMessage(err)}\n`);
    }
  }

  /** Ends every response still streaming (used on shutdown). */
  abortStreams(): void {
    for (const ctrl of this.#streams) {
      try {
        ctrl.error(new ResponseCut("server shutting down"));
      } catch { /* already closed */ }
    }
    this.#streams.clear();
  }

  #route(req: Request, path: string): Promise<Response> {
    const method = req.method;
    const read = method === "GET" || method === "HEAD";
    if (path === "/nix-cache-info" && read) return Promise.resolve(this.#cacheInfo(method));
    let m = NARINFO_RE.exec(path);
    if (m && read) return this.#getNarInfo(method, m[1]);
    if (m && method === "PUT") return this.#putNarInfo(req, m[1]);
    m = NAR_RE.exec(path);
    if (m && read) return this.#getNar(req, m[1], m[2], m[3] !== undefined);
    if (UPLOAD_RE.test(path) && method === "PUT") return this.#putNar(req, path);
    if (read || method === "PUT") throw new HttpError(404, `not found: ${path}`);
    throw new HttpError(405, `method ${method} not allowed`);
  }

  #cacheInfo(method: string): Response {
    const body = `StoreDir: ${STORE_DIR}\nWantMassQuery: 1\nPriority: ${
      this.#opts.priority ?? 39
    }\n`;
    return new Response(method === "HEAD" ? null : body, {
      headers: { "content-type": "text/x-nix-cache-info", "content-length": String(body.length) },
    });
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

  async #getNarInfo(method: string, digestText: string): Promise<Response> {
    const found = await this.#lookup(digestText);
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
    const body = new TextEncoder().encode(renderNarInfo(ni));
    return new Response(method === "HEAD" ? null : body, {
      headers: {
        "content-type": "text/x-nix-narinfo",
        "content-length": String(body.length),
      },
    });
  }

  async #getNar(
    req: Request,
    digestText: string,
    narHashText: string,
    zstd: boolean,
  ): Promise<Response> {
    const found = await this.#lookup(digestText);
    if (!found || nixbase32.encode(found.meta.narSha256) !== narHashText) {
      throw new HttpError(404, `NAR ${digestText}-${narHashText} not found`);
    }
    const { blob, directory } = this.#services;
    const headers: Record<string, string> = { "content-type": "application/x-nix-nar" };
    if (zstd) {
      // Compressed size is unknown up front: no length, no ranges.
      const body = req.method === "HEAD" ? null : this.#stream(
        compressZstd(renderNar(found.node, blob, directory)),
        digestText,
      );
      return new Response(body, { headers });
    }
    const size = Number(found.meta.narSize);
    headers["accept-ranges"] = "bytes";
    const range = parseRange(req.headers.get("range"), size);
    if (range === "unsatisfiable") {
      return new Response(null, { status: 416, headers: { "content-range": `bytes */${size}` } });
    }
    const start = range?.start ?? 0;
    const length = range ? range.end - range.start + 1 : size;
    headers["content-length"] = String(length);
    if (range) headers["content-range"] = `bytes ${range.start}-${range.end}/${size}`;
    const status = range ? 206 : 200;
    if (req.method === "HEAD") return new Response(null, { status, headers });
    // Ranges are served by rendering from the start and skipping: the
    // renderer is sequential, and memory stays constant either way.
    const body = this.#stream(
      sliceStream(renderNar(found.node, blob, directory), start, length),
      digestText,
    );
    return new Response(body, { status, headers });
  }

  /**
   * A response body pulled from `gen` one piece at a time, at most
   * {@linkcode STREAM_BUFFER_BYTES} (plus one piece) ahead of the client.
   */
  #stream(gen: AsyncGenerator<Uint8Array>, what: string): ReadableStream<Uint8Array> {
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    const streams = this.#streams;
    return new ReadableStream<Uint8Array>({
      start(ctrl) {
        controller = ctrl;
        streams.add(ctrl);
      },
      async pull(ctrl) {
        try {
          const r = await gen.next();
          if (r.done) {
            streams.delete(controller);
            ctrl.close();
          } else {
            ctrl.enqueue(r.value);
          }
        } catch (err) {
          // Headers are out already: all we can do is cut the connection short.
          log.error("nar-bridge: rendering NAR failed", { path: what, error: errorMessage(err) });
          streams.delete(controller);
          ctrl.error(new ResponseCut(errorMessage(err)));
        }
      },
      async cancel() {
        streams.delete(controller);
        await gen.return(undefined);
      },
    }, new ByteLengthQueuingStrategy({ highWaterMark: STREAM_BUFFER_BYTES }));
  }

  async #putNar(req: Request, path: string): Promise<Response> {
    if (!req.body) throw new HttpError(400, "empty NAR upload");
    const fileHash = createHash("sha256");
    let fileSize = 0;
    const body = req.body;
    const counted = async function* () {
      const reader = body.getReader();
      try {
        while (true) {
          let r;
          try {
            r = await reader.read();
          } catch (err) {
            // The client went away mid-upload: its fault, not the store's.
            throw new HttpError(400, `upload interrupted: ${errorMessage(err)}`);
          }
          if (r.done) return;
          fileHash.update(r.value);
          fileSize += r.value.length;
          yield r.value;
        }
      } finally {
        reader.releaseLock();
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
    this.#staging.put(path, {
      node: ingested.node,
      narSize: ingested.narSize,
      narSha256: ingested.narSha256,
      fileSize: BigInt(fileSize),
      fileSha256: new Uint8Array(fileHash.digest()),
    });
    log.info("nar-bridge: NAR uploaded, waiting for its narinfo", {
      path,
      narSize: ingested.narSize,
    });
    return new Response(null, { status: 200 });
  }

  async #putNarInfo(req: Request, digestText: string): Promise<Response> {
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
    const trusted = this.#opts.trustedKeys;
    if (trusted && !verifyAny(narInfoFingerprint(ni), ni.signatures, trusted)) {
      throw new HttpError(403, `no valid signature by a trusted key on ${ni.storePath}`);
    }
    let narPath: string;
    try {
      narPath = new URL(ni.url, "http://cache/").pathname;
    } catch {
      throw new HttpError(400, `invalid URL ${ni.url}`);
    }
    const staged = this.#staging.get(narPath);
    if (!staged) {
      throw new HttpError(
        400,
        `the NAR at ${ni.url} was not uploaded (upload it before the narinfo)`,
      );
    }
    // The staged NAR stays (until it expires) whatever happens here: paths
    // with identical contents share one NAR URL, and nix copies in parallel.
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
    info.node = {
      node: renameNode(staged.node, new TextEncoder().encode(ni.storePath.basename())),
    };
    try {
      await this.#services.pathInfo.put(info);
    } catch (err) {
      if (err instanceof InvalidRequestError) throw new HttpError(400, err.message);
      throw err;
    }
    log.info("nar-bridge: path uploaded", { path: ni.storePath.absolute(), narSize: ni.narSize });
    return new Response(null, { status: 200 });
  }
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
export function startNarBridge(
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
  // Deno.serve wants an IPv6 host without its brackets.
  const hostname = addr.host.replace(/^\[(.*)\]$/, "$1");
  const port = addr.port;
  const bridge = new NarBridge(services, opts);
  return new Promise((resolve, reject) => {
    let server: Deno.HttpServer<Deno.NetAddr>;
    try {
      server = Deno.serve({
        hostname,
        port,
        onListen: (addr) => {
          log.info("nar-bridge listening", { address: `${addr.hostname}:${addr.port}` });
          resolve({
            port: addr.port,
            close: async () => {
              bridge.abortStreams();
              await server.shutdown();
            },
          });
        },
        onError: (err) => {
          if (err instanceof ResponseCut) {
            log.debug("nar-bridge: response cut", { reason: err.message });
          } else log.error("nar-bridge: unhandled error", { error: errorMessage(err) });
          return text(500, "internal error\n");
        },
      }, (req) => bridge.handle(req));
    } catch (err) {
      reject(err);
    }
  });
}
