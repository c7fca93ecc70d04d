/**
 * `tvix-store verify`: renders every store path from the stored chunks and
 * directories, each verified as it is read, and compares it with the NAR
 * the path records; reports damage and orphans, and exits non-zero on
 * damage. `--repair` removes the damaged paths (docs/gc.md).
 *
 * @module
 */
import type { Command } from "commander";
import { addClientServiceOptions, withServices } from "./common.ts";
import type { ServiceAddrs } from "../store/services.ts";

async function runVerify(flags: ServiceAddrs & { repair?: boolean }, cmd: Command): Promise<void> {
  const { verifyStore } = await import("../store/gc.ts");
  const r = await withServices(flags, (services) => verifyStore(services, flags), cmd);
  for (const d of r.damaged) console.log(`damaged: ${d.storePath}: ${d.error}`);
  if (flags.repair && r.repaired > 0) console.log(`removed ${r.repaired} damaged store paths`);
  if (r.orphans) {
    console.log(
      `orphans: ${r.orphans.directories} directories, ${r.orphans.blobs} blobs and chunks ` +
        `(${r.orphans.bytes} bytes; gc reclaims them)`,
    );
  }
  console.log(`${r.paths} store paths checked, ${r.damaged.length} damaged`);
  if (r.damaged.length > 0) {
    throw new Error(`${r.damaged.length} damaged store paths${flags.repair ? " (removed)" : ""}`);
  }
}

/** Adds the `verify` subcommand to `program`. */
export function register(program: Command): void {
  const cmd = program
    .command("verify")
    .description("check every store path against its stored data; exit non-zero on damage")
    .option("--repair", "remove the store paths whose data is damaged or missing");
  addClientServiceOptions(cmd);
  cmd.action((opts: ServiceAddrs & { repair?: boolean }, self: Command) => runVerify(opts, self));
}
