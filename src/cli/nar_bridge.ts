/**
 * `tvix-store nar-bridge`: serves the store as a Nix HTTP binary cache
 * (upstream ships this as a separate program; here it is a subcommand).
 *
 * Nix reads from it with `--store http://HOST:PORT` or as a substituter and
 * uploads with `nix copy --to http://HOST:PORT` (any compression Nix
 * offers; xz, Nix's default, and zstd need the `xz`/`zstd` tools on the
 * server, `?compression=none` needs nothing).
 *
 * @module
 */
import { type Command, Option } from "commander";
import { addServiceOptions, parseDuration } from "./common.ts";
import { DEFAULT_REMOTE_ADDR, type ServiceAddrs } from "../store/services.ts";
import { constructServices } from "../store/services.ts";
import { recordingAccesses } from "../store/pathinfo/access_recording.ts";
import {
  DEFAULT_NARINFO_TTL_SECONDS,
  type NarBridgeOptions,
  startNarBridge,
} from "../narbridge/server.ts";
import { readTokenFile } from "../narbridge/auth.ts";
import { DEFAULT_HTTP_LIMITS } from "../narbridge/http.ts";
import { DEFAULT_UPLOAD_LEASE_MS } from "../narbridge/staging.ts";
import {
  DEFAULT_NEGATIVE_TTL_MS,
  DEFAULT_UPSTREAM_TIMEOUT_MS,
  parseUpstreamUrl,
} from "../narbridge/upstream.ts";
import { serveMetrics } from "../metrics.ts";
import { parsePublicKeys, SecretKey } from "../narbridge/signing.ts";
import { log } from "../log.ts";
import { onStopSignal } from "./shutdown.ts";

/** Where nar-bridge listens unless told otherwise (as upstream: loopback, port 9000). */
export const DEFAULT_NAR_BRIDGE_LISTEN_ADDRESS = "[::1]:9000";

/** The bridge's flags (keys, compression, limits), as commander parses them. */
export interface NarBridgeFlags {
  signingKeyFile?: string;
  trustedPublicKeys?: string;
  narCompression?: "none" | "zstd";
  /** Milliseconds (parsed from a duration). */
  headerTimeout?: number;
  /** Milliseconds (parsed from a duration). */
  bodyTimeout?: number;
  maxConnections?: number;
  /** Milliseconds (parsed from a duration). */
  uploadLease?: number;
  /** Upstream cache URLs, in the order given. */
  upstream?: string[];
  upstreamTrustedPublicKeys?: string;
  /** Milliseconds (parsed from a duration; 0 allowed). */
  upstreamNegativeTtl?: number;
  /** Milliseconds (parsed from a duration). */
  upstreamTimeout?: number;
  /** Milliseconds (parsed from a duration); may be 0. */
  narinfoTtl?: number;
  priority?: number;
  uploadTokenFile?: string;
  readTokenFile?: string;
}

function parsePriority(text: string): number {
  const n = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n)) {
    throw new Error(`invalid --priority ${JSON.stringify(text)} (a whole number, 0 or more)`);
  }
  return n;
}

/** A duration flag's parser: positive, in milliseconds. */
export function durationFlag(flag: string): (text: string) => number {
  return (text) => {
    const ms = parseDuration(text, flag);
    if (ms <= 0) throw new Error(`invalid ${flag} ${JSON.stringify(text)} (must be more than 0)`);
    return ms;
  };
}

function parseConnectionCount(text: string): number {
  const n = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new Error(
      `invalid --max-connections ${JSON.stringify(text)} (a whole number, at least 1)`,
    );
  }
  return n;
}

/** Collects a repeatable `--upstream` into a list of normalised URLs. */
function collectUpstream(text: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), parseUpstreamUrl(text)];
}

/** A default duration as the help shows it (`30s`, `15m`). */
const duration = (ms: number) => ms % 60_000 === 0 ? `${ms / 60_000}m` : `${ms / 1000}s`;

/**
 * Adds the bridge's flags to `cmd` (shared by `nar-bridge` and `daemon`):
 * `--signing-key-file`, `--trusted-public-keys`, `--nar-compression`, and
 * the limits `--header-timeout`, `--body-timeout`, `--max-connections`,
 * `--upload-lease`, and how the cache is deployed: `--priority`,
 * `--narinfo-ttl`, `--upload-token-file`, `--read-token-file`.
 */
export function addNarBridgeOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option(
        "--signing-key-file <path>",
        "Nix secret key (name:base64, from nix-store --generate-binary-cache-key); " +
          "signs every narinfo served",
      ).env("NAR_BRIDGE_SIGNING_KEY_FILE"),
    )
    .addOption(
      new Option(
        "--trusted-public-keys <keys>",
        "whitespace-separated name:base64 keys; uploads must carry a signature by one of them",
      ).env("NAR_BRIDGE_TRUSTED_PUBLIC_KEYS"),
    )
    .addOption(
      new Option("--nar-compression <codec>", "compression of the NARs narinfos point at")
        .choices(["none", "zstd"])
        .default("none"),
    )
    .addOption(
      new Option(
        "--header-timeout <duration>",
        "binary cache: close a connection that takes longer to send a request's headers " +
          "(or stays idle that long between requests)",
      )
        .env("NAR_BRIDGE_HEADER_TIMEOUT")
        .argParser(durationFlag("--header-timeout"))
        .default(
          DEFAULT_HTTP_LIMITS.headerTimeoutMs,
          duration(DEFAULT_HTTP_LIMITS.headerTimeoutMs),
        ),
    )
    .addOption(
      new Option(
        "--body-timeout <duration>",
        "binary cache: answer 408 to an upload that sends nothing for this long; " +
          "cut a download whose client reads nothing for this long",
      )
        .env("NAR_BRIDGE_BODY_TIMEOUT")
        .argParser(durationFlag("--body-timeout"))
        .default(DEFAULT_HTTP_LIMITS.bodyTimeoutMs, duration(DEFAULT_HTTP_LIMITS.bodyTimeoutMs)),
    )
    .addOption(
      new Option(
        "--max-connections <n>",
        "binary cache: open connections at most; further ones are closed at once",
      )
        .env("NAR_BRIDGE_MAX_CONNECTIONS")
        .argParser(parseConnectionCount)
        .default(DEFAULT_HTTP_LIMITS.maxConnections),
    )
    .addOption(
      new Option(
        "--upload-lease <duration>",
        "binary cache: how long an uploaded NAR waits for its narinfo; keep it, plus the " +
          "longest upload, below the grace period of tvix-store gc",
      )
        .env("NAR_BRIDGE_UPLOAD_LEASE")
        .argParser(durationFlag("--upload-lease"))
        .default(DEFAULT_UPLOAD_LEASE_MS, duration(DEFAULT_UPLOAD_LEASE_MS)),
    )
    .addOption(
      new Option(
        "--priority <n>",
        "binary cache: Priority in nix-cache-info (Nix prefers lower numbers)",
      )
        .env("NAR_BRIDGE_PRIORITY")
        .argParser(parsePriority)
        .default(39),
    )
    .addOption(
      new Option(
        "--narinfo-ttl <duration>",
        "binary cache: Cache-Control max-age of narinfos (how long a deleted path may " +
          "still be handed out by HTTP caches)",
      )
        .env("NAR_BRIDGE_NARINFO_TTL")
        .argParser((text: string) => parseDuration(text, "--narinfo-ttl"))
        .default(DEFAULT_NARINFO_TTL_SECONDS * 1000, `${DEFAULT_NARINFO_TTL_SECONDS}s`),
    )
    .addOption(
      new Option(
        "--upload-token-file <path>",
        "binary cache: uploads need one of these tokens (one per line), as Bearer token " +
          "or Basic-auth password (nix: netrc-file)",
      ).env("NAR_BRIDGE_UPLOAD_TOKEN_FILE"),
    )
    .addOption(
      new Option(
        "--read-token-file <path>",
        "binary cache: reads need one of these tokens or an upload token",
      ).env("NAR_BRIDGE_READ_TOKEN_FILE"),
    )
    .addOption(
      new Option(
        "--upstream <url>",
        "binary cache: on a narinfo miss, copy the path from this http(s) cache " +
          "(repeatable, tried in order; needs --upstream-trusted-public-keys)",
      ).argParser(collectUpstream),
    )
    .addOption(
      new Option(
        "--upstream-trusted-public-keys <keys>",
        "space- or comma-separated name:base64 keys; only upstream paths signed by one are copied",
      ).env("NAR_BRIDGE_UPSTREAM_TRUSTED_PUBLIC_KEYS"),
    )
    .addOption(
      new Option(
        "--upstream-negative-ttl <duration>",
        "binary cache: how long a path no upstream has is remembered as absent (0: not at all)",
      )
        .argParser((text) => parseDuration(text, "--upstream-negative-ttl"))
        .default(DEFAULT_NEGATIVE_TTL_MS, duration(DEFAULT_NEGATIVE_TTL_MS)),
    )
    .addOption(
      new Option(
        "--upstream-timeout <duration>",
        "binary cache: an upstream that takes longer to answer, or to send more of a NAR, " +
          "counts as failed",
      )
        .argParser(durationFlag("--upstream-timeout"))
        .default(DEFAULT_UPSTREAM_TIMEOUT_MS, duration(DEFAULT_UPSTREAM_TIMEOUT_MS)),
    );
}

/** Loads the key file and parses the trusted keys named by the flags. */
export async function loadNarBridgeOptions(flags: NarBridgeFlags): Promise<NarBridgeOptions> {
  const opts: NarBridgeOptions = {
    compression: flags.narCompression ?? "none",
    uploadLeaseMs: flags.uploadLease,
    priority: flags.priority,
    narinfoTtlSeconds: flags.narinfoTtl === undefined
      ? undefined
      : Math.floor(flags.narinfoTtl / 1000),
    limits: {
      headerTimeoutMs: flags.headerTimeout,
      bodyTimeoutMs: flags.bodyTimeout,
      maxConnections: flags.maxConnections,
    },
  };
  if (flags.signingKeyFile) opts.signingKey = await SecretKey.fromFile(flags.signingKeyFile);
  if (flags.uploadTokenFile || flags.readTokenFile) {
    opts.tokens = {
      upload: flags.uploadTokenFile
        ? await readTokenFile(flags.uploadTokenFile, "--upload-token-file")
        : undefined,
      read: flags.readTokenFile
        ? await readTokenFile(flags.readTokenFile, "--read-token-file")
        : undefined,
    };
  }
  if (flags.trustedPublicKeys !== undefined) {
    const keys = parsePublicKeys(flags.trustedPublicKeys);
    if (keys.length === 0) throw new Error("--trusted-public-keys lists no key");
    opts.trustedKeys = keys;
  }
  if (flags.upstream?.length) {
    const keys = parsePublicKeys((flags.upstreamTrustedPublicKeys ?? "").replaceAll(",", " "));
    if (keys.length === 0) {
      throw new Error(
        "--upstream needs --upstream-trusted-public-keys (nothing unsigned is copied)",
      );
    }
    opts.upstream = {
      urls: flags.upstream,
      trustedKeys: keys,
      negativeTtlMs: flags.upstreamNegativeTtl,
      timeoutMs: flags.upstreamTimeout,
    };
  } else if (flags.upstreamTrustedPublicKeys !== undefined) {
    throw new Error("--upstream-trusted-public-keys without --upstream");
  }
  return opts;
}

interface CliOptions extends ServiceAddrs, NarBridgeFlags {
  listenAddress: string;
  metricsListenAddress?: string;
}

async function run(opts: CliOptions): Promise<void> {
  const bridgeOpts = await loadNarBridgeOptions(opts);
  const services = await constructServices(opts);
  // Served narinfos count as accesses (docs/gc.md#access-times).
  const recording = recordingAccesses(services);
  const metricsServer = opts.metricsListenAddress
    ? await serveMetrics(opts.metricsListenAddress)
    : undefined;
  try {
    const bridge = await startNarBridge(recording.services, {
      ...bridgeOpts,
      listenAddress: opts.listenAddress,
    });
    // No handler for a second signal: it ends the process at once.
    const signal = await onStopSignal().signal;
    log.info("nar-bridge shutting down", { signal });
    await bridge.close();
  } finally {
    await metricsServer?.close();
    await recording.stop();
    await services.close();
  }
  // Backends (grpc-js channels) may keep handles referenced; we are done.
  Deno.exit(0);
}

/** Adds the `nar-bridge` subcommand to `program`. */
export function register(program: Command): void {
  const cmd = program
    .command("nar-bridge")
    .description("serve the store as a Nix HTTP binary cache (narinfo, NARs, uploads)")
    .addOption(
      new Option("-l, --listen-address <addr>", "host:port or [v6]:port")
        .env("NAR_BRIDGE_LISTEN_ADDRESS")
        .default(DEFAULT_NAR_BRIDGE_LISTEN_ADDRESS),
    )
    .addOption(
      new Option("--metrics-listen-address <addr>", "serve Prometheus metrics at /metrics here")
        .env("METRICS_LISTEN_ADDRESS"),
    );
  addNarBridgeOptions(cmd);
  addServiceOptions(cmd, {
    blobServiceAddr: DEFAULT_REMOTE_ADDR,
    directoryServiceAddr: DEFAULT_REMOTE_ADDR,
    pathInfoServiceAddr: DEFAULT_REMOTE_ADDR,
  });
  cmd.action((opts: CliOptions) => run(opts));
}
