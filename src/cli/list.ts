/**
 * `tvix-store list`: every store path, one per line, sorted
 * (docs/gc.md#commands); `--json` adds NAR size and hash, references and
 * content address.
 *
 * @module
 */
import type { Command } from "commander";
import { addClientServiceOptions, withServices } from "./common.ts";
import type { ServiceAddrs } from "../store/services.ts";
import type { PathInfo } from "../store/pathinfo/service.ts";

/** What `--json` prints for one path. */
export interface PathSummary {
  path: string;
  narSize: number;
  narHash: string;
  references: string[];
  ca?: string;
}

/**
 * Loads what summaries need and returns the summarizer: the JSON summary
 * of a PathInfo, as its narinfo states it. (Loaded on use, so that
 * registering `list` and `info` loads no store module.)
 */
export async function loadSummarize(): Promise<(info: PathInfo) => PathSummary> {
  const [{ formatContentAddress, pathInfoToNarInfo }, nixbase32] = await Promise.all([
    import("../narbridge/narinfo.ts"),
    import("../store/nixbase32.ts"),
  ]);
  return (info) => {
    const ni = pathInfoToNarInfo(info);
    return {
      path: ni.storePath.absolute(),
      narSize: Number(ni.narSize),
      narHash: `sha256:${nixbase32.encode(ni.narHash)}`,
      references: ni.references.map((r) => r.absolute()).sort(),
      ...(ni.ca ? { ca: formatContentAddress(ni.ca) } : {}),
    };
  };
}

async function runList(flags: ServiceAddrs & { json?: boolean }, cmd: Command): Promise<void> {
  const [{ everyPathInfo, storePathOf }, summarize] = await Promise.all([
    import("../store/gc.ts"),
    loadSummarize(),
  ]);
  await withServices(flags, async ({ pathInfo }) => {
    const infos: PathInfo[] = [];
    for await (const info of everyPathInfo(pathInfo)) infos.push(info);
    const lines = flags.json
      ? [JSON.stringify(infos.map(summarize).sort((a, b) => a.path < b.path ? -1 : 1))]
      : infos.map((i) => storePathOf(i).absolute()).sort();
    if (lines.length > 0) console.log(lines.join("\n"));
  }, cmd);
}

/** Adds the `list` subcommand to `program`. */
export function register(program: Command): void {
  const cmd = program
    .command("list")
    .description("list every store path in the store")
    .option("--json", "print path, NAR size and hash, references and content address as JSON");
  addClientServiceOptions(cmd);
  cmd.action((opts: ServiceAddrs & { json?: boolean }, self: Command) => runList(opts, self));
}
