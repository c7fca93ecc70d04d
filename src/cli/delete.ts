/**
 * `tvix-store delete STORE_PATH...`: removes store paths, refusing one
 * that a remaining path refers to unless `--recursive` (docs/gc.md). The
 * data goes at the next `gc`.
 *
 * @module
 */
import type { Command } from "commander";
import { addClientServiceOptions, withServices } from "./common.ts";
import type { ServiceAddrs } from "../store/services.ts";

async function runDelete(
  paths: string[],
  flags: ServiceAddrs & { recursive?: boolean },
  cmd: Command,
): Promise<void> {
  const [{ deletePaths }, { StorePath }] = await Promise.all([
    import("../store/gc.ts"),
    import("../store/store_path.ts"),
  ]);
  const targets = paths.map((p) => StorePath.parseAbsolute(p));
  await withServices(flags, async ({ pathInfo }) => {
    const deleted = await deletePaths(pathInfo, targets, flags);
    for (const p of deleted.map((d) => d.absolute()).sort()) console.log(`deleted ${p}`);
  }, cmd);
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
