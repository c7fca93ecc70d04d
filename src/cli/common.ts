/**
 * Options shared by the subcommands: the flags that say where the three
 * services live (checked as they are parsed, so a bad URL is reported
 * against its flag or env var), byte sizes and durations, `--quiet`, and
 * opening the services with a clear message when a daemon is unreachable.
 *
 * Subcommand modules load at start-up only to register their flags, so
 * this module loads no backend: the services are imported when opened.
 *
 * @module
 */
import { type Command, InvalidArgumentError, Option } from "commander";
import type { ServiceAddrs, Services } from "../store/services.ts";
import { checkServiceUrl, type ServiceKind } from "../castore/service_url.ts";
import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";

/**
 * Where clients find a daemon unless told otherwise: `DEFAULT_REMOTE_ADDR`
 * of `store/services.ts`, repeated here because that module loads every
 * backend (tests/cli/first_day_test.ts checks the two agree).
 */
export const DEFAULT_DAEMON_ADDR = "grpc+http://[::1]:8000";

/** One of the three service flags. */
interface ServiceFlag {
  key: keyof ServiceAddrs;
  flag: string;
  env: string;
  kind: ServiceKind;
}

const SERVICE_FLAGS: readonly ServiceFlag[] = [
  {
    key: "blobServiceAddr",
    flag: "--blob-service-addr",
    env: "BLOB_SERVICE_ADDR",
    kind: "blob",
  },
  {
    key: "directoryServiceAddr",
    flag: "--directory-service-addr",
    env: "DIRECTORY_SERVICE_ADDR",
    kind: "directory",
  },
  {
    key: "pathInfoServiceAddr",
    flag: "--path-info-service-addr",
    env: "PATH_INFO_SERVICE_ADDR",
    kind: "path info",
  },
];

/**
 * The command-line flags selecting `addrs` (those {@linkcode addServiceOptions}
 * adds), for running a subcommand against them.
 */
export function serviceAddrArgs(addrs: ServiceAddrs): string[] {
  return [
    "--blob-service-addr",
    addrs.blobServiceAddr,
    "--directory-service-addr",
    addrs.directoryServiceAddr,
    "--path-info-service-addr",
    addrs.pathInfoServiceAddr,
  ];
}

/**
 * A flag's parser that checks the URL's scheme and shape as far as that is
 * possible without loading a backend; commander then names the flag (or
 * env var) in the error.
 */
function serviceUrlParser(kind: ServiceKind): (text: string) => string {
  return (text) => {
    try {
      checkServiceUrl(kind, text);
    } catch (err) {
      throw new InvalidArgumentError(errorMessage(err));
    }
    return text;
  };
}

/**
 * Adds `--blob-service-addr`, `--directory-service-addr` and
 * `--path-info-service-addr` (with their env vars) to `cmd`. Without
 * defaults, the option values are left undefined so the caller can fill
 * them lazily (the embedded store creates directories on first use).
 */
export function addServiceOptions(cmd: Command, defaults?: Partial<ServiceAddrs>): Command {
  for (const f of SERVICE_FLAGS) {
    const opt = new Option(`${f.flag} <url>`, `${f.kind} service URL`)
      .env(f.env)
      .argParser(serviceUrlParser(f.kind));
    const def = defaults?.[f.key];
    cmd.addOption(def ? opt.default(def) : opt);
  }
  return cmd;
}

/** How one byte-size flag reads its value (see {@linkcode parseByteSize}). */
export interface ByteSizeRule {
  /** What the flag sets, for the error message ("size", "cache size"). */
  what: string;
  /** Valid examples, for the error message. */
  examples: string;
  /** Smallest accepted value (default 1). */
  min?: number;
  /** Whether a decimal number such as `1.5G` is accepted. */
  fractions?: boolean;
}

const BYTE_UNITS: Record<string, number> = {
  "": 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
};

/**
 * Parses a byte count for a command-line flag: a number with an optional
 * binary suffix `K`, `M`, `G` or `T` (optionally spelled `KiB` …; any case).
 * Throws one clear line naming the flag's rule.
 */
export function parseByteSize(text: string, rule: ByteSizeRule): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:ib)?)?\s*$/i.exec(text);
  const fractional = m?.[1].includes(".") ?? false;
  const value = m && (rule.fractions || !fractional)
    ? Math.floor(Number(m[1]) * BYTE_UNITS[(m[2] ?? "").toLowerCase()])
    : NaN;
  if (!Number.isSafeInteger(value) || value < (rule.min ?? 1)) {
    throw new Error(`invalid ${rule.what} ${JSON.stringify(text)} (use e.g. ${rule.examples})`);
  }
  return value;
}

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/**
 * Parses a duration for a command-line flag: a number with an optional unit
 * `ms`, `s` (the default), `m`, `h` or `d`, e.g. `90s`, `30m`, `1.5h`;
 * returns milliseconds. Throws one clear line naming `what`.
 */
export function parseDuration(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/i.exec(text);
  const value = m ? Number(m[1]) * DURATION_UNITS[(m[2] ?? "s").toLowerCase()] : NaN;
  if (!Number.isFinite(value)) {
    throw new Error(`invalid ${what} ${JSON.stringify(text)} (use e.g. 90s, 30m, 1h, 2d)`);
  }
  return Math.round(value);
}

/** The service flags pointing at a daemon by default, as the client subcommands take them. */
export function addClientServiceOptions(cmd: Command): Command {
  return addServiceOptions(cmd, {
    blobServiceAddr: DEFAULT_DAEMON_ADDR,
    directoryServiceAddr: DEFAULT_DAEMON_ADDR,
    pathInfoServiceAddr: DEFAULT_DAEMON_ADDR,
  });
}

/** Adds `-q, --quiet`: no progress line and no summary on stderr (errors still are). */
export function addQuietOption(cmd: Command): Command {
  return cmd.option("-q, --quiet", "print no progress or summary on stderr (errors still)");
}

/** The three addresses out of a subcommand's parsed flags. */
function addrsOf(flags: ServiceAddrs): ServiceAddrs {
  return {
    blobServiceAddr: flags.blobServiceAddr,
    directoryServiceAddr: flags.directoryServiceAddr,
    pathInfoServiceAddr: flags.pathInfoServiceAddr,
  };
}

/** A daemon address as `daemon -l` takes it, or `undefined` if `url` names no daemon. */
function listenAddressOf(url: URL): string | undefined {
  if (url.protocol === "grpc+unix:") return decodeURIComponent(url.pathname);
  if (url.protocol === "grpc+http:" || url.protocol === "grpc+https:") {
    return `${url.hostname}:${url.port || (url.protocol === "grpc+https:" ? "443" : "80")}`;
  }
  return undefined;
}

/** How long a daemon may take to accept a connection before it counts as unreachable. */
const CONNECT_TIMEOUT_MS = 5000;

/** Connects to `url`'s daemon and hangs up; resolves with why that failed, if it did. */
async function probe(url: URL): Promise<string | undefined> {
  const connecting = url.protocol === "grpc+unix:"
    ? Deno.connect({ transport: "unix", path: decodeURIComponent(url.pathname) })
    : Deno.connect({
      // URL keeps the brackets of an IPv6 literal.
      hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: Number(url.port || (url.protocol === "grpc+https:" ? 443 : 80)),
    });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), CONNECT_TIMEOUT_MS);
  });
  try {
    const conn = await Promise.race([connecting, timeout]);
    if (conn === "timeout") {
      connecting.then((c) => c.close(), () => {});
      return `no answer within ${CONNECT_TIMEOUT_MS / 1000} s`;
    }
    conn.close();
    return undefined;
  } catch (err) {
    if (err instanceof Deno.errors.ConnectionRefused) return "connection refused";
    if (err instanceof Deno.errors.NotFound) return "no such socket";
    return errorMessage(err).replace(/ \(os error \d+\)$/, "");
  } finally {
    clearTimeout(timer);
  }
}

/** Where a service address came from, for messages: `--flag`, `env VAR`, or undefined (the default). */
function sourceOf(cmd: Command | undefined, f: ServiceFlag): string | undefined {
  const source = cmd?.getOptionValueSource(f.key);
  if (source === "cli") return f.flag;
  if (source === "env") return `env ${f.env}`;
  return undefined;
}

/**
 * Checks that every daemon among `flags`' addresses (`grpc+…`) accepts a
 * connection, so that a missing daemon is one clear error before anything
 * starts, instead of a gRPC status (or EIO under a mount) later. The error
 * names the address, where it was set (flag or env var of `cmd`) and how to
 * start a daemon there.
 */
export async function checkDaemonsReachable(flags: ServiceAddrs, cmd?: Command): Promise<void> {
  const byEndpoint = new Map<string, { url: URL; flags: ServiceFlag[] }>();
  for (const f of SERVICE_FLAGS) {
    let url: URL;
    try {
      url = new URL(flags[f.key]);
    } catch {
      continue; // building the service reports it
    }
    const listen = listenAddressOf(url);
    if (listen === undefined) continue;
    const key = `${url.protocol}${listen}`;
    const entry = byEndpoint.get(key) ?? { url, flags: [] };
    entry.flags.push(f);
    byEndpoint.set(key, entry);
  }
  const failures = await Promise.all(
    [...byEndpoint.values()].map(async ({ url, flags: fs }) => ({
      url,
      fs,
      why: await probe(url),
    })),
  );
  const failed = failures.find((f) => f.why !== undefined);
  if (!failed) return;
  const { url, fs, why } = failed;
  const address = `${url.protocol}//${url.host}${url.pathname}`;
  const sources = fs.map((f) => sourceOf(cmd, f)).filter((s) => s !== undefined);
  const listen = listenAddressOf(url)!;
  const start = address === DEFAULT_DAEMON_ADDR
    ? "tvix-store daemon"
    : `tvix-store daemon -l ${/\s/.test(listen) ? JSON.stringify(listen) : listen}`;
  const advice = sources.length > 0
    ? `(${why}; set by ${sources.join(", ")}): start one with \`${start}\` in another terminal`
    : `(${why}): start one with \`${start}\` in another terminal, or point ` +
      `--blob-service-addr, --directory-service-addr and --path-info-service-addr ` +
      `(env BLOB_SERVICE_ADDR, DIRECTORY_SERVICE_ADDR, PATH_INFO_SERVICE_ADDR) at another store`;
  throw new Error(`cannot reach a tvix-store daemon at ${address} ${advice}`);
}

/**
 * Builds the services `flags` name, after checking that the daemons among
 * them are reachable ({@linkcode checkDaemonsReachable}). A URL the backend
 * refuses is reported with the flag or env var it came from.
 */
export async function openServices(flags: ServiceAddrs, cmd?: Command): Promise<Services> {
  const addrs = addrsOf(flags);
  // The probe waits on the network, the import mostly on files: side by side.
  const [, { constructServices }] = await Promise.all([
    checkDaemonsReachable(addrs, cmd),
    import("../store/services.ts"),
  ]);
  try {
    return await constructServices(addrs);
  } catch (err) {
    // The backends prefix their URL errors with "<kind> service URL".
    const f = SERVICE_FLAGS.find((f) => errorMessage(err).startsWith(`${f.kind} service URL`));
    const source = f && sourceOf(cmd, f);
    if (source && err instanceof Error) err.message += ` (set by ${source})`;
    throw err;
  }
}

/**
 * Runs `fn` on `services`, then closes them. When both fail, `fn`'s error
 * is the one thrown: closing often fails because of it (a full disk fails
 * the import, then the final commit), and the first cause is what to tell.
 */
export async function closingAfter<T>(
  services: Services,
  fn: (services: Services) => Promise<T>,
): Promise<T> {
  let result: T;
  try {
    result = await fn(services);
  } catch (err) {
    await services.close().catch((closeErr) =>
      log.debug("closing the services failed too", { error: errorMessage(closeErr) })
    );
    throw err;
  }
  await services.close();
  return result;
}

/** Builds the services `flags` name ({@linkcode openServices}), runs `fn` on them and closes them. */
export async function withServices<T>(
  flags: ServiceAddrs,
  fn: (services: Services) => Promise<T>,
  cmd?: Command,
): Promise<T> {
  return closingAfter(await openServices(flags, cmd), fn);
}

/**
 * Why something failed with `path`, without repeating the path: the
 * ingester prefixes its errors with it, and Deno's file errors name it
 * again after the system call ("No such file or directory (os error 2):
 * lstat '/x'" becomes "No such file or directory").
 */
export function causeFor(path: string, err: unknown): string {
  let text = errorMessage(err);
  for (const p of [path, path.replace(/\/+$/, "")]) {
    if (text.startsWith(`${p}: `)) {
      text = text.slice(p.length + 2);
      break;
    }
  }
  return text.replace(/ \(os error \d+\)(?:: \w+ '[^']*')?/g, "");
}

/** A subcommand's usage line, for errors that need it: `tvix-store import [options] <paths...>`. */
export function usageOf(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return `${names.join(" ")} ${cmd.usage()}`;
}
