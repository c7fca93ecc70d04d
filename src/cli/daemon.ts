/**
 * `tvix-store daemon`: serves the three services over gRPC (docs/compatibility.md#daemon).
 *
 * Defaults differ from the reference on purpose: the daemon listens on
 * loopback only (`[::1]:8000`), and the backends default to the embedded
 * store under the data directory, which is created on first start.
 *
 * @module
 */
import { type Command, Option } from "commander";
import { addServiceOptions, parseByteSize } from "./common.ts";
import { dataDir, embeddedAddrs, type ServiceAddrs } from "../store/services.ts";
import type * as grpc from "@grpc/grpc-js";
import { constructServices, type Services } from "../store/services.ts";
import { LocalNarCalculationService } from "../nar/calculation.ts";
import {
  createGrpcServer,
  DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
  listen,
  shutdown,
} from "../grpc_server/server.ts";
import { log } from "../log.ts";
import { formatListenAddress } from "../listen_address.ts";
import {
  addNarBridgeOptions,
  durationFlag,
  loadNarBridgeOptions,
  type NarBridgeFlags,
} from "./nar_bridge.ts";
import { startNarBridge } from "../narbridge/server.ts";
import { DEFAULT_MAX_CLOSURE_BYTES } from "../grpc_server/directory_handler.ts";
import { onStopSignal } from "./shutdown.ts";
import { type DaemonAdmin, startDaemonAdmin } from "./daemon_admin.ts";
import { serveMetrics } from "../metrics.ts";

/** Where the daemon listens unless told otherwise. */
export const DEFAULT_LISTEN_ADDRESS = "[::1]:8000";

/** How long calls in flight may run on after SIGINT/SIGTERM before they are cancelled. */
const SHUTDOWN_GRACE_MS = 2000;

/** If closing the backends hangs, exit anyway after this long. */
const SHUTDOWN_DEADLINE_MS = 10_000;

/** Parses `--max-request-size`: whole bytes with an optional K/M/G/T(iB) suffix. */
export function parseRequestSize(text: string): number {
  return parseByteSize(text, { what: "size", examples: "16777216 or 16MiB" });
}

interface DaemonOptions extends Partial<ServiceAddrs>, NarBridgeFlags {
  listenAddress: string;
  maxRequestSize: number;
  maxDirectoryClosureSize: number;
  narBridgeListenAddress?: string;
  gcInterval?: number;
  metricsListenAddress?: string;
}

/** Fills unset service addresses with the embedded store, creating its directory if used. */
async function resolveAddrs(opts: Partial<ServiceAddrs>): Promise<ServiceAddrs> {
  if (opts.blobServiceAddr && opts.directoryServiceAddr && opts.pathInfoServiceAddr) {
    return opts as ServiceAddrs;
  }
  const dir = dataDir();
  await Deno.mkdir(dir, { recursive: true });
  const embedded = embeddedAddrs(dir);
  return {
    blobServiceAddr: opts.blobServiceAddr ?? embedded.blobServiceAddr,
    directoryServiceAddr: opts.directoryServiceAddr ?? embedded.directoryServiceAddr,
    pathInfoServiceAddr: opts.pathInfoServiceAddr ?? embedded.pathInfoServiceAddr,
  };
}

async function runDaemon(opts: DaemonOptions): Promise<void> {
  // Signals are handled from the start, so one that arrives while the
  // backends open still ends in an orderly stop.
  let server: grpc.Server | undefined;
  const stop = onStopSignal(() => {
    log.warn("second signal: cancelling calls in flight");
    server?.forceShutdown();
  });
  let services: Services | undefined;
  let bridge: { close(): Promise<void> } | undefined;
  let admin: DaemonAdmin | undefined;
  let metricsServer: { close(): Promise<void> } | undefined;
  try {
    // Flags first: a mistake is reported before anything starts.
    const bridgeOpts = await loadNarBridgeOptions(opts);
    if (opts.upstream?.length && !opts.narBridgeListenAddress) {
      throw new Error("--upstream needs --nar-bridge-listen-address");
    }
    const addrs = await resolveAddrs(opts);
    log.info("starting daemon", {
      listen_address: opts.listenAddress,
      blob_service_addr: addrs.blobServiceAddr,
      directory_service_addr: addrs.directoryServiceAddr,
      path_info_service_addr: addrs.pathInfoServiceAddr,
    });
    services = await constructServices(addrs);
    admin = startDaemonAdmin(services, { gcIntervalMs: opts.gcInterval });
    // CalculateNAR renders from the daemon's own blobs and directories
    // (docs/compatibility.md#daemon), even when its path infos live in
    // another daemon.
    const served = {
      ...services,
      pathInfo: admin.pathInfo,
      narCalculation: new LocalNarCalculationService(services.blob, services.directory),
    };
    server = createGrpcServer(served, {
      maxReceiveMessageBytes: opts.maxRequestSize,
      maxDirectoryClosureBytes: opts.maxDirectoryClosureSize,
      admin: admin.handler,
    });
    // Before the gRPC listener, whose log line tells that the daemon is up.
    if (opts.metricsListenAddress) metricsServer = await serveMetrics(opts.metricsListenAddress);
    const bound = await listen(server, opts.listenAddress);
    log.info("listening", { address: formatListenAddress(bound) });
    if (opts.narBridgeListenAddress) {
      // The same store, also as a Nix binary cache over HTTP.
      bridge = await startNarBridge({ ...services, pathInfo: admin.pathInfo }, {
        ...bridgeOpts,
        listenAddress: opts.narBridgeListenAddress,
      });
    }
    const signal = await stop.signal;
    log.info("shutting down", { signal });
    // Whatever happens while closing, the process must not linger.
    const deadline = setTimeout(() => {
      log.error("shutdown did not finish in time, exiting");
      Deno.exit(1);
    }, SHUTDOWN_DEADLINE_MS);
    Deno.unrefTimer(deadline);
    await Promise.all([shutdown(server, SHUTDOWN_GRACE_MS), bridge?.close()]);
    if (bound.kind === "unix") await Deno.remove(bound.path).catch(() => {});
  } catch (err) {
    server?.forceShutdown();
    await bridge?.close().catch(() => {});
    throw err;
  } finally {
    stop.dispose();
    await metricsServer?.close();
    await admin?.close().catch(() => {});
    await services?.close();
  }
  log.info("daemon stopped");
  // grpc-js and backends may keep timers or handles referenced; the daemon is done.
  Deno.exit(0);
}

/** Adds the `daemon` subcommand to `program`. */
export function register(program: Command): void {
  const cmd = program
    .command("daemon")
    .description("run the gRPC server (BlobService, DirectoryService, PathInfoService)")
    .addOption(
      new Option(
        "-l, --listen-address <addr>",
        "host:port, [v6]:port, or a unix socket path starting with / or .",
      ).default(DEFAULT_LISTEN_ADDRESS),
    )
    .addOption(
      new Option(
        "--max-request-size <bytes>",
        "largest BlobChunk or PathInfo request message accepted (directories may take up to 64 MiB either way)",
      )
        .argParser(parseRequestSize)
        .default(DEFAULT_MAX_RECEIVE_MESSAGE_BYTES, "4MiB"),
    )
    .addOption(
      new Option(
        "--max-directory-closure-size <bytes>",
        "largest set of directories one DirectoryService.Put may upload (held in memory until checked)",
      )
        .argParser(parseRequestSize)
        .default(DEFAULT_MAX_CLOSURE_BYTES, "256MiB"),
    );
  addServiceOptions(cmd);
  cmd.addOption(
    new Option(
      "--nar-bridge-listen-address <addr>",
      "also serve the store as a Nix binary cache over HTTP here (host:port)",
    ).env("NAR_BRIDGE_LISTEN_ADDRESS"),
  );
  cmd.addOption(
    new Option(
      "--gc-interval <duration>",
      "collect garbage this often (e.g. 6h), with the default grace period",
    ).argParser(durationFlag("--gc-interval")),
  );
  addNarBridgeOptions(cmd);
  cmd.addOption(
    new Option("--metrics-listen-address <addr>", "serve Prometheus metrics at /metrics here")
      .env("METRICS_LISTEN_ADDRESS"),
  );
  cmd.addHelpText(
    "after",
    "\nUnset service addresses default to the embedded store under $TVIX_STORE_HOME\n" +
      "(else $XDG_DATA_HOME/tvix-store, else ~/.local/share/tvix-store).",
  );
  cmd.action((opts: DaemonOptions) => runDaemon(opts));
}
