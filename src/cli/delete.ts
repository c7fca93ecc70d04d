/**
 * `tvix-store delete STORE_PATH...`: removes store paths, refusing one
 * that a remaining path refers to unless `--recursive` (docs/gc.md). The
 * data goes at the next `gc`. Against a daemon (the default) the daemon
 * deletes, through its AdminService.
 *
 * @module
 */
import type { Command } from "commander";
import { addClientServiceOptions, checkDaemonsReachable, withServices } from "./common.ts";
import type { ServiceAddrs } from "../store/services.ts";
import { adminError, adminUrlOf } from "./manage.ts";

async function runDelete(
  paths: string[],
  flags: ServiceAddrs & { recursive?: boolean },
  cmd: Command,
): Promise<void> {
  const { StorePath } = await import("../store/store_path.ts");
  const targets = paths.map((p) => StorePath.parseAbsolute(p));
  const url = adminUrlOf(flags, "delete");
  let deleted: string[];
  if (url) {
    await checkDaemonsReachable(flags, cmd);
    const { AdminClient } = await import("../store/admin_client.ts");
    const client = await AdminClient.fromUrl(url);
    try {
      deleted = await client.delete(targets.map((t) => t.absolute()), flags.recursive ?? false);
    } catch (err) {
      throw adminError(url, err);
    } finally {
      client.close();
    }
  } else {
    const { deletePaths } = await import("../store/gc.ts");
    deleted = await withServices(
      flags,
      async ({ pathInfo }) =>
        (await deletePaths(pathInfo, targets, flags)).map((d) => d.absolute()),
      cmd,
    );
  }
  for (const p of deleted.sort()) console.log(`deleted ${p}`);
}

/** Adds the `delete` subcommand to `program`. */
export function register(program: Command): void {
  const cmd = program
    .command("delete")
    .description("remove store paths (their data goes at the next gc)")
    .argument("<paths...>", "absolute store paths")
    .option("--recursive", "also delete every path that refers to them");
  addClientServiceOptions(cmd);
  cmd.action((paths: string[], opts: ServiceAddrs & { recursive?: boolean }, self: Command) =>
    runDelete(paths, opts, self)
  );
}
