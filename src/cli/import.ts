/**
 * `tvix-store import PATH...` (docs/compatibility.md#import): adds local paths to the store
 * the way `nix-store --add` does and prints their store paths.
 *
 * Differences from the reference, on purpose: store paths are printed in
 * argument order (not completion order), and a path that fails is reported
 * on stderr with its cause and makes the command exit non-zero
 * (docs/compatibility.md#q18-import-exit-status-ignores-failures); the other
 * paths are still imported. NAR hashes are computed from the local files,
 * never by reading blobs back from a daemon
 * (docs/compatibility.md#q2-import-hashes-the-nar-by-reading-blobs-back).
 *
 * A stat cache per store (`store/stat_cache.ts`, `--no-stat-cache` turns it
 * off) lets a re-import of an unchanged tree skip reading its files: the
 * store is then only asked whether it holds the resulting path, through
 * `fetch` before any service is opened when it is a plain `grpc+http://`
 * daemon (docs/architecture.md#re-imports-the-stat-cache).
 *
 * On a terminal, a progress line counts the bytes read, of how many, with
 * rate and time left (`--quiet` turns it off). The store and import modules
 * are loaded when the command runs, not when it is registered.
 *
 * @module
 */
import type { Command } from "commander";
import {
  addClientServiceOptions,
  addQuietOption,
  causeFor,
  closingAfter,
  openServices,
} from "./common.ts";
import type { ServiceAddrs } from "../store/services.ts";
import type { StatCache } from "../store/stat_cache.ts";
import { mapLimit } from "../concurrency.ts";
import { log, Progress } from "../log.ts";
import { exitOnInterrupt } from "./shutdown.ts";

/** Paths imported at once; each import is itself concurrent inside. */
const PATH_CONCURRENCY = 4;
const te = new TextEncoder();

interface ImportFlags extends ServiceAddrs {
  /** False with `--no-stat-cache`. */
  statCache: boolean;
  quiet?: boolean;
}

/**
 * Bytes in the regular files under `path` (not following symlinks), to
 * tell how much an import has left; `undefined` if the tree cannot be
 * walked (the import itself then says why) or `stop()` turned true (the
 * import is over, and the walk must not keep the process alive).
 */
async function treeBytes(path: string, stop: () => boolean): Promise<number | undefined> {
  try {
    const info = await Deno.lstat(path);
    if (info.isFile) return info.size;
    if (!info.isDirectory) return 0;
    let total = 0;
    for await (const entry of Deno.readDir(path)) {
      if (stop()) return undefined;
      const sub = await treeBytes(`${path}/${entry.name}`, stop);
      if (sub === undefined) return undefined;
      total += sub;
    }
    return total;
  } catch {
    return undefined;
  }
}

async function runImport(paths: string[], flags: ImportFlags, cmd: Command): Promise<void> {
  const progress = new Progress({
    label: "importing",
    totalItems: paths.length > 1 ? paths.length : undefined,
    quiet: flags.quiet,
  });
  const stopListening = exitOnInterrupt(() => progress.finish());
  try {
    await importAll(paths, flags, cmd, progress);
  } finally {
    progress.finish();
    stopListening();
  }
}

/**
 * Which of `paths` are unchanged imports, asking the path info service at
 * `addr` through `fetch` when it is a plain `grpc+http://` daemon: `known`
 * holds their store paths, and `checked` marks the paths whose check ran
 * to the end (found or not), which the regular import need not repeat.
 * Nothing is known for other addresses, or where asking failed.
 */
async function unchangedOverFetch(
  paths: string[],
  addr: string,
  cache: StatCache,
): Promise<{ known: (string | undefined)[]; checked: boolean[] }> {
  const known: (string | undefined)[] = [];
  const checked: boolean[] = [];
  if (!addr.startsWith("grpc+http://")) return { known, checked };
  const [{ importUnchanged }, { fetchOrigin, getPathInfoOverFetch }] = await Promise.all([
    import("../store/import.ts"),
    import("../store/pathinfo/fetch_get.ts"),
  ]);
  const origin = fetchOrigin(addr);
  if (origin === undefined) return { known, checked };
  await mapLimit(paths, PATH_CONCURRENCY, async (path, i) => {
    try {
      const r = await importUnchanged(path, cache, (d) => getPathInfoOverFetch(origin, d));
      known[i] = r?.storePath.absolute();
      checked[i] = true;
    } catch (err) {
      log.debug("asking through fetch failed", { path, error: String(err) });
    }
  });
  return { known, checked };
}

async function importAll(
  paths: string[],
  flags: ImportFlags,
  cmd: Command,
  progress: Progress,
): Promise<void> {
  const [{ importPath }, { StatCache, statCacheDir, statCachePath }] = await Promise.all([
    import("../store/import.ts"),
    import("../store/stat_cache.ts"),
  ]);
  let statCache: StatCache | undefined;
  if (flags.statCache) {
    const dir = statCacheDir();
    if (dir) statCache = StatCache.open(statCachePath(dir, flags));
  }
  // Unchanged trees first, asking a plain grpc+http daemon through fetch:
  // when every path is one, the gRPC clients are never loaded.
  const { known, checked } = statCache
    ? await unchangedOverFetch(paths, flags.pathInfoServiceAddr, statCache)
    : { known: [], checked: [] };
  if (statCache && paths.every((_, i) => known[i] !== undefined)) {
    statCache.close();
    Deno.stdout.writeSync(te.encode(known.map((p) => p + "\n").join("")));
    return;
  }
  let services: Awaited<ReturnType<typeof openServices>>;
  try {
    services = await openServices(flags, cmd);
  } catch (err) {
    statCache?.close();
    throw err;
  }
  // The total is only for the progress line: it is summed while the import runs.
  let done = false;
  if (!flags.quiet && Deno.stderr.isTerminal()) {
    Promise.all(paths.map((p) => treeBytes(p, () => done))).then((sizes) => {
      if (sizes.every((s) => s !== undefined)) {
        progress.setTotalBytes(sizes.reduce((a, b) => a + b, 0));
      }
    });
  }
  // Store paths are printed in argument order, each as soon as all before it are settled.
  const outcomes: (string | null | undefined)[] = new Array(paths.length);
  let printed = 0;
  const flush = () => {
    while (printed < paths.length && outcomes[printed] !== undefined) {
      const line = outcomes[printed++];
      if (line === null) continue;
      progress.hide(); // stdout and stderr may share the terminal
      Deno.stdout.writeSync(te.encode(line + "\n"));
      progress.redraw();
    }
  };
  let failed = 0;
  try {
    await closingAfter(services, () =>
      mapLimit(paths, PATH_CONCURRENCY, async (path, i) => {
        try {
          if (known[i] !== undefined) {
            outcomes[i] = known[i];
            progress.itemDone();
            flush();
            return;
          }
          const { storePath } = await importPath(path, services, {
            progress: { bytes: (n) => progress.addBytes(n) },
            statCache,
            checkedUnchanged: checked[i] ?? false,
          });
          outcomes[i] = storePath.absolute();
          log.debug("imported", { path, store_path: storePath.absolute() });
        } catch (err) {
          const message = `cannot import ${path}: ${causeFor(path, err)}`;
          // A single path's failure is the command's error: one line.
          if (paths.length === 1) throw new Error(message);
          failed++;
          outcomes[i] = null;
          log.error(message);
        }
        progress.itemDone();
        flush();
      }));
  } finally {
    done = true;
    statCache?.close();
  }
  if (failed > 0) {
    throw new Error(`${failed} of ${paths.length} paths could not be imported`);
  }
}

/** Adds the `import` subcommand to `program`. */
export function register(program: Command): void {
  const cmd = program
    .command("import")
    .description("import local paths as content-addressed store paths (like nix-store --add)")
    .argument("<paths...>", "local files, directories or symlinks to import")
    .option(
      "--no-stat-cache",
      "read every file, without the cache of what earlier imports into this store read",
    );
  addQuietOption(cmd);
  addClientServiceOptions(cmd);
  cmd.action((paths: string[], opts: ImportFlags, self: Command) => runImport(paths, opts, self));
}
