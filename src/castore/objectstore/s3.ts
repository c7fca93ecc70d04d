/**
 * An {@linkcode ObjectStore} in an S3 bucket (`objectstore+s3://BUCKET/PREFIX`):
 * object `a/b/c` is the key `PREFIX/a/b/c`, so the bucket holds the same
 * layout as `objectstore+file` writes below its directory
 * (docs/compatibility.md#object-store-layout).
 *
 * A PUT is atomic and durable once S3 answers it, so there is no `sync`.
 * Puts are conditional (`If-None-Match: *`): two writers of the same
 * content-addressed object never rewrite it, and the loser's 412 counts as
 * success (docs/storage.md#s3).
 *
 * Endpoint, region and credentials come from the standard AWS environment
 * and a few URL query options (docs/architecture.md#service-urls).
 *
 * @module
 */
import { StorageError } from "../../errors.ts";
import { S3Client, type S3Config } from "./s3_client.ts";
import { mapLimit } from "../../concurrency.ts";
import { checkObjectPath, type CollectableObjectStore, type ObjectInfo } from "./store.ts";
import type { ObjectStoreTuning } from "./tuning.ts";

/**
 * Chunk uploads and read-ahead for a store whose every request costs a
 * network round trip: at 20–50 ms per 256 KiB PUT, 64 in flight keep one
 * upload above 300 MB/s (32 MiB, the most 64 chunks can hold), and 16
 * chunks read ahead one reader above 80 MB/s.
 */
const S3_TUNING: ObjectStoreTuning = {
  maxInflightChunks: 64,
  maxInflightBytes: 32 * 1024 * 1024,
  readAhead: 16,
  remote: true,
};

/** Objects in one bucket, below an optional key prefix. */
export class S3ObjectStore implements CollectableObjectStore {
  readonly #client: S3Client;
  /** `""`, or the key prefix with a trailing `/`. */
  readonly #prefix: string;
  readonly description: string;
  /** What the blob service on top should use (see `tuning.ts`). */
  readonly tuning: ObjectStoreTuning = S3_TUNING;

  /** Objects below `prefix` (slash-separated segments, may be empty) in `client`'s bucket. */
  constructor(client: S3Client, prefix = "") {
    if (prefix !== "") checkObjectPath(prefix);
    this.#client = client;
    this.#prefix = prefix === "" ? "" : `${prefix}/`;
    this.description = `s3://${client.bucket}/${this.#prefix} at ${client.endpoint.origin}`;
  }

  /** The client (for tools and tests). */
  get client(): S3Client {
    return this.#client;
  }

  #key(path: string): string {
    checkObjectPath(path);
    return this.#prefix + path;
  }

  /** Checks the bucket and the credentials with one HEAD; throws a clear StorageError. */
  async check(): Promise<void> {
    await this.#client.headBucket();
  }

  get(path: string): Promise<Uint8Array | undefined> {
    return this.#client.getObject(this.#key(path));
  }

  size(path: string): Promise<number | undefined> {
    return this.#client.headObject(this.#key(path));
  }

  /**
   * A conditional PUT. If an object is there already (412) and has this
   * size, it is this object (the usual case: another writer of the same
   * content won the race) and is left alone; one of another size is
   * replaced, as the interface promises.
   */
  async put(path: string, data: Uint8Array): Promise<void> {
    const key = this.#key(path);
    if (await this.#client.putObject(key, data, true)) return;
    if (await this.#client.headObject(key) === data.length) return;
    await this.#client.putObject(key, data);
  }

  delete(path: string): Promise<void> {
    return this.#client.deleteObject(this.#key(path));
  }

  async list(prefix = ""): Promise<string[]> {
    const keys = await this.#client.listKeys(this.#prefix + prefix);
    return keys.map((k) => k.slice(this.#prefix.length)).sort();
  }

  /** One HEAD: size and LastModified. */
  async stat(path: string): Promise<ObjectInfo | undefined> {
    const o = await this.#client.statObject(this.#key(path));
    return o && { path, size: o.size, modified: o.lastModified };
  }

  /** ListObjectsV2 with sizes and LastModified, sorted by path. */
  async listInfo(prefix: string): Promise<ObjectInfo[]> {
    const objects = await this.#client.listObjects(this.#prefix + prefix);
    return objects
      .map((o) => ({
        path: o.key.slice(this.#prefix.length),
        size: o.size,
        modified: o.lastModified,
      }))
      .sort((a, b) => a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
  }

  /** A server-side copy onto itself: LastModified becomes now, no bytes are sent. */
  touch(path: string): Promise<void> {
    return this.#client.touchObject(this.#key(path));
  }

  /** DeleteObjects, 1000 keys per request, a few requests at once. */
  async deleteMany(paths: string[]): Promise<void> {
    const keys = paths.map((p) => this.#key(p));
    const batches: string[][] = [];
    for (let i = 0; i < keys.length; i += 1000) batches.push(keys.slice(i, i + 1000));
    await mapLimit(batches, 4, (batch) => this.#client.deleteObjects(batch));
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Query options accepted in an `objectstore+s3://` URL, with upstream's aliases. */
const OPTIONS: Record<string, string> = {
  endpoint: "endpoint",
  endpoint_url: "endpoint",
  aws_endpoint: "endpoint",
  aws_endpoint_url: "endpoint",
  region: "region",
  aws_region: "region",
  virtual_hosted_style_request: "virtual_hosted",
  aws_virtual_hosted_style_request: "virtual_hosted",
  timeout: "timeout",
  max_requests: "max_requests",
};

/** Options that would put a secret into a URL (and so into logs). */
const SECRET_OPTIONS = /access_key|secret|session_token|token/;

/** The environment variables read; a missing permission reads as unset. */
function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

function parseEndpoint(text: string, url: string): URL {
  let endpoint: URL;
  try {
    endpoint = new URL(text);
  } catch {
    throw new StorageError(`invalid S3 endpoint ${JSON.stringify(text)} in ${url}`);
  }
  if (endpoint.protocol !== "http:" && endpoint.protocol !== "https:") {
    throw new StorageError(`S3 endpoint must be http:// or https://: ${text}`);
  }
  if (endpoint.username || endpoint.password || endpoint.search || endpoint.hash) {
    throw new StorageError(`S3 endpoint may hold only scheme, host, port and path: ${text}`);
  }
  return endpoint;
}

function parseBoolean(name: string, value: string): boolean {
  if (value === "true" || value === "1") return true;
  if (value === "false" || value === "0") return false;
  throw new StorageError(`S3 option ${name} must be true or false, not ${value}`);
}

function parsePositive(name: string, value: string, max: number): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0 || n > max) {
    throw new StorageError(`S3 option ${name} must be a number in (0, ${max}], not ${value}`);
  }
  return n;
}

/**
 * The client configuration and key prefix of `s3://BUCKET/PREFIX?options`
 * (the part after `objectstore+`), with endpoint, region and credentials
 * from `getenv` (the process environment by default) where the URL does not
 * say. Throws {@linkcode StorageError} naming what is wrong.
 */
export function s3ConfigFromUrl(
  inner: URL,
  url: string,
  getenv: (name: string) => string | undefined = env,
): { config: S3Config; prefix: string } {
  const bucket = inner.hostname;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$/.test(bucket) || inner.port || inner.username) {
    throw new StorageError(`invalid S3 bucket in ${url}: expected objectstore+s3://BUCKET/PREFIX`);
  }
  let prefix: string;
  try {
    prefix = decodeURIComponent(inner.pathname).replace(/^\/+|\/+$/g, "");
    if (prefix !== "") checkObjectPath(prefix);
  } catch {
    throw new StorageError(`invalid key prefix in S3 URL ${url}`);
  }
  const opts: Record<string, string> = {};
  for (const [name, value] of inner.searchParams) {
    const canonical = OPTIONS[name];
    if (!canonical) {
      if (SECRET_OPTIONS.test(name)) {
        throw new StorageError(
          `S3 credentials do not belong in the URL (${name}): set AWS_ACCESS_KEY_ID and ` +
            "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the environment",
        );
      }
      throw new StorageError(
        `unknown S3 option ${name} in ${url} (known: endpoint, region, ` +
          "virtual_hosted_style_request, timeout, max_requests)",
      );
    }
    opts[canonical] = value;
  }
  const endpointText = opts.endpoint ?? getenv("AWS_ENDPOINT_URL_S3") ??
    getenv("AWS_ENDPOINT_URL");
  const region = opts.region ?? getenv("AWS_REGION") ?? getenv("AWS_DEFAULT_REGION") ??
    "us-east-1";
  if (!/^[A-Za-z0-9-]+$/.test(region)) throw new StorageError(`invalid S3 region ${region}`);
  const accessKeyId = getenv("AWS_ACCESS_KEY_ID");
  const secretAccessKey = getenv("AWS_SECRET_ACCESS_KEY");
  if (!accessKeyId || !secretAccessKey) {
    throw new StorageError(
      `no S3 credentials for ${url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY`,
    );
  }
  const endpoint = endpointText === undefined
    // AWS itself: virtual-hosted by default, as AWS recommends.
    ? new URL(`https://s3.${region}.amazonaws.com`)
    : parseEndpoint(endpointText, url);
  // Self-hosted servers answer path-style requests without wildcard DNS;
  // bucket names with dots break TLS names in virtual-hosted style.
  const virtualHosted = opts.virtual_hosted !== undefined
    ? parseBoolean("virtual_hosted_style_request", opts.virtual_hosted)
    : endpointText === undefined && !bucket.includes(".");
  return {
    config: {
      endpoint,
      bucket,
      region,
      credentials: { accessKeyId, secretAccessKey, sessionToken: getenv("AWS_SESSION_TOKEN") },
      virtualHosted,
      timeoutMs: opts.timeout === undefined
        ? undefined
        : parsePositive("timeout", opts.timeout, 3600) * 1000,
      maxRequests: opts.max_requests === undefined
        ? undefined
        : Math.floor(parsePositive("max_requests", opts.max_requests, 4096)),
    },
    prefix,
  };
}

/** Builds the store `s3://BUCKET/PREFIX?…` names, without contacting the server. */
export function s3ObjectStoreFromUrl(inner: URL, url: string): S3ObjectStore {
  const { config, prefix } = s3ConfigFromUrl(inner, url);
  return new S3ObjectStore(new S3Client(config), prefix);
}
