/**
 * Options shared by the subcommands: the flags that say where the three
 * services live, and byte sizes.
 *
 * @module
 */
import { type Command, Option } from "commander";
import {
  constructServices,
  DEFAULT_REMOTE_ADDR,
  type ServiceAddrs,
  type Services,
} from "../store/services.ts";

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
    blobServiceAddr: DEFAULT_REMOTE_ADDR,
    directoryServiceAddr: DEFAULT_REMOTE_ADDR,
    pathInfoServiceAddr: DEFAULT_REMOTE_ADDR,
  });
}

/** Builds the services `flags` name, runs `fn` on them and closes them. */
export async function withServices<T>(
  flags: ServiceAddrs,
  fn: (services: Services) => Promise<T>,
): Promise<T> {
  const services = await constructServices({
    blobServiceAddr: flags.blobServiceAddr,
    directoryServiceAddr: flags.directoryServiceAddr,
    pathInfoServiceAddr: flags.pathInfoServiceAddr,
  });
  try {
    return await fn(services);
  } finally {
    await services.close();
  }
}
