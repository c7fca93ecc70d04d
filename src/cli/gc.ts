/**
 * `tvix-store gc`: removes every directory, blob and chunk no store path
 * reaches and nobody wrote or reused within the grace period, and gives
 * the space back (docs/gc.md).
 *
 * @module
 */
import type { Command } from "commander";
import { addClientServiceOptions, parseDuration, withServices } from "./common.ts";
import type { ServiceAddrs } from "../store/services.ts";

/**
 * `DEFAULT_GRACE_MS` of `store/gc.ts` (one hour), repeated for the help
 * text so that registering `gc` loads no store module.
 */
const DEFAULT_GRACE_MINUTES = 60;

interface GcFlags extends ServiceAddrs {
  dryRun?: boolean;
  grace: string;
}

async function runGc(flags: GcFlags, cmd: Command): Promise<void> {
  const graceMs = parseDuration(flags.grace, "grace period");
  const { collectGarbage } = await import("../store/gc.ts");
  await withServices(flags, async (services) => {
    const r = await collectGarbage(services, { graceMs, dryRun: flags.dryRun });
    const verb = flags.dryRun ? "would remove" : "removed";
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
  }, cmd);
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
    );
  addClientServiceOptions(cmd);
  cmd.action((opts: GcFlags, self: Command) => runGc(opts, self));
}
