/**
 * URL helpers for building services from their addresses
 * (docs/architecture.md#service-urls), and the URL forms each service
 * accepts, so that errors can list them. Nothing here loads a backend: the
 * command line checks flags with it before any backend module is loaded.
 *
 * @module
 */
import { errorMessage, StorageError } from "../errors.ts";

/** Parses a service URL. Throws `StorageError` "unable to parse url: …". */
export function parseServiceUrl(url: string): URL {
  try {
    return new URL(url);
  } catch (err) {
    throw new StorageError(`unable to parse url: ${url}: ${errorMessage(err)}`);
  }
}

/** The scheme without the trailing colon, e.g. `memory`, `grpc+http`. */
export function urlScheme(url: URL): string {
  return url.protocol.slice(0, -1);
}

/**
 * `memory:` and `memory://` take neither host nor path. Throws
 * `StorageError` "invalid url" otherwise.
 */
export function checkMemoryUrl(url: URL): void {
  if (url.host !== "" || url.pathname !== "") {
    throw new StorageError(`invalid url: ${url.href} (memory:// takes no host or path)`);
  }
}

/** The three services, as error messages name them. */
export type ServiceKind = "blob" | "directory" | "path info";

const GRPC_FORMS = ["grpc+http://HOST:PORT", "grpc+https://HOST:PORT", "grpc+unix:///SOCKET"];
const OBJECT_STORE_FORMS = [
  "objectstore+file:///DIR",
  "objectstore+memory://",
  "objectstore+s3://BUCKET/PREFIX",
];

/** The near/far composition (docs/storage.md#near-cache); both inner URLs percent-encoded. */
const CACHE_FORM = "cache://?near=URL&far=URL";

/**
 * The URL forms each service accepts, in the order the docs list them
 * (docs/architecture.md#service-urls). Keep in step with the `from_url.ts`
 * of each service; `tests/cli/first_day_test.ts` checks that every form
 * listed here is accepted there.
 */
export const SERVICE_URL_FORMS: Readonly<Record<ServiceKind, readonly string[]>> = {
  blob: ["memory://", "pack:///DIR", ...OBJECT_STORE_FORMS, ...GRPC_FORMS, CACHE_FORM],
  directory: [
    "memory://",
    "sqlite:///FILE",
    "postgres://HOST/DB",
    ...OBJECT_STORE_FORMS,
    ...GRPC_FORMS,
    CACHE_FORM,
  ],
  "path info": ["memory://", "sqlite:///FILE", "postgres://HOST/DB", ...GRPC_FORMS],
};

/** Schemes accepted under another name than the one {@linkcode SERVICE_URL_FORMS} shows. */
const SCHEME_ALIASES: Readonly<Record<string, string>> = { postgresql: "postgres" };

/** The error for a scheme no backend of `kind` handles; it lists the forms that are. */
export function unknownScheme(url: URL, kind?: ServiceKind): StorageError {
  const text = `unknown scheme: ${urlScheme(url)}`;
  if (!kind) return new StorageError(text);
  return new StorageError(
    `${text} (a ${kind} service URL is one of ${SERVICE_URL_FORMS[kind].join(", ")})`,
  );
}

/**
 * Checks what can be checked of a `kind` service URL without building the
 * service: that it parses, that its scheme is one `kind` accepts, and that
 * `memory:` has no host or path. Throws `StorageError` naming the valid
 * forms; the backend checks the rest when the service is built.
 */
export function checkServiceUrl(kind: ServiceKind, text: string): void {
  const url = parseServiceUrl(text);
  const scheme = SCHEME_ALIASES[urlScheme(url)] ?? urlScheme(url);
  const accepted = SERVICE_URL_FORMS[kind].some((form) => form.startsWith(`${scheme}:`));
  if (!accepted) throw unknownScheme(url, kind);
  if (scheme === "memory") checkMemoryUrl(url);
  if (scheme === "cache") {
    const { near, far } = parseCacheUrl(url);
    checkServiceUrl(kind, near);
    checkServiceUrl(kind, far);
  }
}

/** The two services a `cache://` URL composes. */
export interface CacheUrlParts {
  /** The store tried first and filled with what was fetched (a local disk). */
  near: string;
  /** The store of record: writes go here, misses are fetched from here. */
  far: string;
}

/**
 * Builds both stores of a `cache://` URL with `open` and composes them
 * with `compose`; the near one is closed again if the far one fails.
 */
export async function cacheServiceFromUrl<S extends { close(): Promise<void> }>(
  url: URL,
  open: (url: string) => Promise<S>,
  compose: (near: S, far: S) => S,
): Promise<S> {
  const { near, far } = parseCacheUrl(url);
  const nearService = await open(near);
  try {
    return compose(nearService, await open(far));
  } catch (err) {
    await nearService.close().catch(() => {});
    throw err;
  }
}

/**
 * Splits `cache://?near=URL&far=URL`. Each inner URL is decoded with
 * `decodeURIComponent` (a `+` stays a `+`, as in `objectstore+s3`), so an
 * inner URL's own `&` and `?` must be percent-encoded. Throws
 * `StorageError` for a host, a path, an unknown, repeated or missing
 * parameter.
 */
export function parseCacheUrl(url: URL): CacheUrlParts {
  const usage = `(expected ${CACHE_FORM}, each URL percent-encoded)`;
  if (url.host !== "" || (url.pathname !== "" && url.pathname !== "/")) {
    throw new StorageError(`invalid url: ${url.href}: cache:// takes no host or path ${usage}`);
  }
  const parts: Partial<CacheUrlParts> = {};
  for (const pair of url.search.slice(1).split("&")) {
    if (pair === "") continue;
    const eq = pair.indexOf("=");
    const name = eq < 0 ? pair : pair.slice(0, eq);
    if (name !== "near" && name !== "far") {
      throw new StorageError(`invalid url: ${url.href}: unknown cache parameter ${name} ${usage}`);
    }
    if (parts[name] !== undefined) {
      throw new StorageError(`invalid url: ${url.href}: ${name} given twice ${usage}`);
    }
    try {
      parts[name] = decodeURIComponent(pair.slice(eq + 1));
    } catch {
      throw new StorageError(`invalid url: ${url.href}: bad escape in ${name} ${usage}`);
    }
  }
  if (!parts.near || !parts.far) {
    throw new StorageError(`invalid url: ${url.href}: near and far are both required ${usage}`);
  }
  return { near: parts.near, far: parts.far };
}

/**
 * The service `build` makes from the backend module `load` brings in, which
 * is loaded only now: a command talking to a daemon does not pay for
 * loading (and initialising) every embedded backend. A failure to load, or
 * one `build` throws at once (the URL is wrong), is reported in the service
 * URL like one raised before loading ({@linkcode inServiceUrl}); a service
 * that fails later (a server out of reach, a missing bucket) says what
 * failed itself, as it did before backends were loaded lazily.
 */
export function fromBackend<M, T>(
  load: () => Promise<M>,
  build: (backend: M) => T | Promise<T>,
  kind: ServiceKind,
  url: string,
): Promise<T> {
  const inUrl = (err: unknown) => {
    throw inServiceUrl(err, kind, url);
  };
  return load().then((backend) => {
    let built: T | Promise<T>;
    try {
      built = build(backend);
    } catch (err) {
      return inUrl(err);
    }
    return built;
  }, inUrl);
}

/**
 * Prefixes an error raised while building a service from `url` with the
 * service and the URL (unless the message names the URL already), so that
 * whoever set the URL can tell which one is wrong. Keeps the error's class.
 */
export function inServiceUrl(err: unknown, kind: ServiceKind, url: string): unknown {
  if (!(err instanceof Error) || err.message.includes(url)) return err;
  err.message = `${kind} service URL ${url}: ${err.message}`;
  return err;
}
