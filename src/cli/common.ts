/**
 * Options shared by the subcommands: where the three services live, and
 * where the embedded store keeps its files.
 *
 * @module
 */
import { type Command, Option } from "commander";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

/** The three service addresses a subcommand talks to. */
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

/** The embedded store's addresses under `dir`: object-store blobs, SQLite metadata. */
export function embeddedAddrs(dir: string): ServiceAddrs {
  // URLs need an absolute, percent-encoded path: a relative one would parse
  // as a host, and `#` or `?` in a directory name would end the path.
  const urlPath = (name: string) => pathToFileURL(join(resolve(dir), name)).pathname;
  const db = `sqlite://${urlPath("store.sqlite")}`;
  return {
    blobServiceAddr: `objectstore+file://${urlPath("blobs")}`,
    directoryServiceAddr: db,
    pathInfoServiceAddr: db,
  };
}

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
 * Adds `--blob-service-addr`, `--directory-service-addr` and
 * `--path-info-service-addr` (with their env vars) to `cmd`. Without
 * defaults, the option values are left undefined so the caller can fill
 * them lazily (the embedded store creates directories on first use).
 */
export function addServiceOptions(cmd: Command, defaults?: Partial<ServiceAddrs>): Command {
  const add = (flag: string, env: string, desc: string, def?: string) => {
    const opt = new Option(`${flag} <url>`, desc).env(env);
    cmd.addOption(def ? opt.default(def) : opt);
  };
  add("--blob-service-addr", "BLOB_SERVICE_ADDR", "blob service URL", defaults?.blobServiceAddr);
  add(
    "--directory-service-addr",
    "DIRECTORY_SERVICE_ADDR",
    "directory service URL",
    defaults?.directoryServiceAddr,
  );
  add(
    "--path-info-service-addr",
    "PATH_INFO_SERVICE_ADDR",
    "path info service URL",
    defaults?.pathInfoServiceAddr,
  );
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
