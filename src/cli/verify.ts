/**
 * `tvix-store verify`: renders every store path from the stored chunks and
 * directories, each verified as it is read, and compares it with the NAR
 * the path records; reports damage and orphans, and exits non-zero on
 * damage. `--repair` removes the damaged paths (docs/gc.md). Against a
 * daemon (the default) the daemon verifies, through its AdminService; a
 * daemon without it (upstream's) is verified from here, over the upstream
 * services, as long as nothing is to be repaired.
 *
 * @module
 */
import type { Command } from "commander";
import {
  addClientServiceOptions,
  addQuietOption,
  checkDaemonsReachable,
  withServices,
} from "./common.ts";
import type { ServiceAddrs } from "../store/services.ts";
import type { VerifyReport } from "../store/gc.ts";
import { adminError, adminUrlOf, ManageProgress } from "./manage.ts";
import { exitOnInterrupt } from "./shutdown.ts";
import { log } from "../log.ts";

interface VerifyFlags extends ServiceAddrs {
  repair?: boolean;
  quiet?: boolean;
}

/** Has the daemon at `url` verify; resolves with its report. Failed calls throw as they came. */
async function verifyInDaemon(
  url: string,
  repair: boolean,
  progress: ManageProgress,
): Promise<VerifyReport> {
  const { AdminClient } = await import("../store/admin_client.ts");
  const client = await AdminClient.fromUrl(url);
  try {
    for await (const e of client.verify(repair)) {
      if (e.event?.$case === "progress") {
        const p = e.event.value;
        progress.update({
          phase: "verify",
          pathsDone: Number(p.pathsDone),
          pathsTotal: Number(p.pathsTotal),
          bytesDone: Number(p.bytesDone),
          bytesTotal: Number(p.bytesTotal),
        });
      } else if (e.event?.$case === "report") {
        const r = e.event.value;
        return {
          paths: Number(r.paths),
          damaged: r.damaged,
          repaired: Number(r.repaired),
          orphans: r.orphans && {
            directories: Number(r.orphans.directories),
            blobs: Number(r.orphans.blobs),
            bytes: Number(r.orphans.bytes),
          },
        };
      }
    }
    throw new Error(`the daemon at ${url} ended verify without a report`);
  } finally {
    client.close();
  }
}

async function runVerify(flags: VerifyFlags, cmd: Command): Promise<void> {
  const url = adminUrlOf(flags, "verify");
  const progress = new ManageProgress(flags.quiet);
  const stopListening = exitOnInterrupt(() => progress.finish());
  let r: VerifyReport;
  try {
    const here = async () => {
      const { verifyStore } = await import("../store/gc.ts");
      return await withServices(
        flags,
        (services) => verifyStore(services, { repair: flags.repair, onProgress: progress.update }),
        cmd,
      );
    };
    if (url) {
      await checkDaemonsReachable(flags, cmd);
      try {
        r = await verifyInDaemon(url, flags.repair ?? false, progress);
      } catch (err) {
        // grpc-js's status 12 is UNIMPLEMENTED: a daemon without our
        // AdminService can still be read through the upstream services.
        if ((err as { code?: number }).code !== 12 || flags.repair) throw adminError(url, err);
        log.debug("the daemon has no AdminService; verifying from here", { url });
        r = await here();
      }
    } else {
      r = await here();
    }
  } finally {
    progress.finish();
    stopListening();
  }
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
  addQuietOption(cmd);
  addClientServiceOptions(cmd);
  cmd.action((opts: VerifyFlags, self: Command) => runVerify(opts, self));
}
