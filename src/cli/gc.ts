/**
 * `tvix-store gc`: deletes the paths the policies choose (`--older-than`,
 * `--max-size`), then removes every directory, blob and chunk no store
 * path reaches and nobody wrote or reused within the grace period, and
 * gives the space back (docs/gc.md). Against a daemon (the default) the
 * daemon collects, through its AdminService; against the store's own
 * backends, this process does.
 *
 * @module
 */
import type { Command } from "commander";
import {
  addClientServiceOptions,
  addQuietOption,
  checkDaemonsReachable,
  parseByteSize,
  parseDuration,
  withServices,
} from "./common.ts";
import type { ServiceAddrs } from "../store/services.ts";
import type { GcOptions, GcReport } from "../store/gc.ts";
import type { GarbageReport } from "../proto/tvix_ts/admin/v1/admin.ts";
import { adminError, adminUrlOf, ManageProgress } from "./manage.ts";
import { exitOnInterrupt } from "./shutdown.ts";

/**
 * `DEFAULT_GRACE_MS` of `store/gc.ts` (one hour), repeated for the help
 * text so that registering `gc` loads no store module.
 */
const DEFAULT_GRACE_MINUTES = 60;

interface GcFlags extends ServiceAddrs {
  dryRun?: boolean;
  grace: string;
  olderThan?: string;
  maxSize?: string;
  quiet?: boolean;
}

function printReport(r: GcReport, flags: GcFlags): void {
  const verb = flags.dryRun ? "would remove" : "removed";
  for (const p of r.deletedPaths) console.log(`${flags.dryRun ? "would delete" : "deleted"} ${p}`);
  if (r.sizeBefore !== undefined && r.sizeAfter !== undefined) {
    console.log(`stored size ${r.sizeBefore} bytes before, ${r.sizeAfter} bytes after`);
  }
  console.log(
    `${r.paths} store paths reach ${r.liveDirectories} directories and ${r.liveBlobs} blobs`,
  );
  console.log(
    `${verb} ${r.directories.removed} directories (${r.directories.removedBytes} bytes), ` +
      `${r.blobs.removed} blobs and chunks (${r.blobs.removedBytes} bytes stored)`,
  );
  if (!flags.dryRun) {
    console.log(
      `reclaimed ${r.blobs.reclaimedBytes + r.directories.reclaimedBytes} bytes on disk`,
    );
  }
}

/** The report a daemon sent, as {@linkcode GcReport}. */
function fromMessage(m: GarbageReport, policies: boolean): GcReport {
  const sweep = (s: GarbageReport["blobs"]) => ({
    removed: Number(s?.removed ?? 0n),
    removedBytes: Number(s?.removedBytes ?? 0n),
    kept: Number(s?.kept ?? 0n),
    reclaimedBytes: Number(s?.reclaimedBytes ?? 0n),
  });
  return {
    paths: Number(m.paths),
    liveDirectories: Number(m.liveDirectories),
    liveBlobs: Number(m.liveBlobs),
    directories: sweep(m.directories),
    blobs: sweep(m.blobs),
    deletedPaths: m.deletedPaths,
    sizeBefore: policies ? Number(m.sizeBefore) : undefined,
    sizeAfter: policies ? Number(m.sizeAfter) : undefined,
  };
}

/** Has the daemon at `url` collect; resolves with its report. */
async function collectInDaemon(
  url: string,
  options: GcOptions,
  progress: ManageProgress,
): Promise<GcReport> {
  const { AdminClient } = await import("../store/admin_client.ts");
  const client = await AdminClient.fromUrl(url);
  try {
    for await (
      const e of client.collectGarbage({
        dryRun: options.dryRun ?? false,
        graceMs: options.graceMs === undefined ? undefined : BigInt(options.graceMs),
        olderThanMs: BigInt(options.olderThanMs ?? 0),
        maxSizeBytes: BigInt(options.maxSizeBytes ?? 0),
      })
    ) {
      if (e.event?.$case === "progress") {
        const p = e.event.value;
        progress.update({
          phase: p.phase as "mark",
          pathsDone: Number(p.pathsDone),
          pathsTotal: Number(p.pathsTotal),
          bytesDone: Number(p.bytesDone),
          bytesTotal: Number(p.bytesTotal),
        });
      } else if (e.event?.$case === "report") {
        return fromMessage(e.event.value, options.maxSizeBytes !== undefined);
      }
    }
    throw new Error(`the daemon at ${url} ended the collection without a report`);
  } catch (err) {
    throw adminError(url, err);
  } finally {
    client.close();
  }
}

/** `--older-than`: a duration above 0 (0 would delete every path not being read right now). */
function parseOlderThan(text: string): number {
  const ms = parseDuration(text, "--older-than");
  if (ms <= 0) {
    throw new Error(`invalid --older-than ${JSON.stringify(text)} (must be more than 0)`);
  }
  return ms;
}

async function runGc(flags: GcFlags, cmd: Command): Promise<void> {
  const options: GcOptions = {
    graceMs: parseDuration(flags.grace, "grace period"),
    dryRun: flags.dryRun,
    olderThanMs: flags.olderThan === undefined ? undefined : parseOlderThan(flags.olderThan),
    maxSizeBytes: flags.maxSize === undefined
      ? undefined
      : parseByteSize(flags.maxSize, { what: "--max-size", examples: "10G or 512MiB" }),
  };
  const url = adminUrlOf(flags, "gc");
  const progress = new ManageProgress(flags.quiet);
  const stopListening = exitOnInterrupt(() => progress.finish());
  let report: GcReport;
  try {
    if (url) {
      await checkDaemonsReachable(flags, cmd);
      report = await collectInDaemon(url, options, progress);
    } else {
      const { collectGarbage } = await import("../store/gc.ts");
      report = await withServices(
        flags,
        (services) => collectGarbage(services, { ...options, onProgress: progress.update }),
        cmd,
      );
    }
  } finally {
    progress.finish();
    stopListening();
  }
  printReport(report, flags);
}

/** Adds the `gc` subcommand to `program`. */
export function register(program: Command): void {
  const cmd = program
    .command("gc")
    .description("remove data no store path reaches, and give its space back")
    .option("--dry-run", "print what would be removed, change nothing")
    .option(
      "--grace <duration>",
      "keep whatever was written or reused within this time (uploads in flight rely on it; " +
        "0 only when nothing writes to the store)",
      `${DEFAULT_GRACE_MINUTES}m`,
    )
    .option(
      "--older-than <duration>",
      "first delete the store paths not accessed within this time (e.g. 30d), " +
        "keeping every path a kept path refers to",
    )
    .option(
      "--max-size <size>",
      "first delete least recently used store paths until the stored size is at most this " +
        "(e.g. 10G), keeping every path a kept path refers to",
    );
  addQuietOption(cmd);
  addClientServiceOptions(cmd);
  cmd.action((opts: GcFlags, self: Command) => runGc(opts, self));
}
