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
 * store is then only asked whether it holds the resulting path.
 *
 * @module
 */
import type { Command } from "commander";
import { addServiceOptions } from "./common.ts";
import { DEFAULT_REMOTE_ADDR, type ServiceAddrs } from "../store/services.ts";
import { errorMessage } from "../errors.ts";
import { mapLimit } from "../concurrency.ts";
import { constructServices } from "../store/services.ts";
import { importPath } from "../store/import.ts";
import { StatCache, statCacheDir, statCachePath } from "../store/stat_cache.ts";
import { log } from "../log.ts";

/** Paths imported at once; each import is itself concurrent inside. */
const PATH_CONCURRENCY = 4;
const te = new TextEncoder();

function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

/**
 * One progress line on stderr: items done of total, bytes done, throughput.
 * Draws only when stderr is a terminal, at most ten times a second; stdout
 * is never touched.
 */
export class ProgressBar {
  readonly #enabled = Deno.stderr.isTerminal();
  readonly #start = performance.now();
  #done = 0;
  #bytes = 0;
  #lastDraw = 0;
  #drawn = false;

  constructor(private readonly label: string, private readonly total: number) {}

  /** Adds uploaded bytes. */
  addBytes(n: number): void {
    this.#bytes += n;
    this.#draw(false);
  }

  /** Counts one finished item. */
  itemDone(): void {
    this.#done++;
    this.#draw(true);
  }

  /** Erases the line (call before printing anything else to stderr, and at the end). */
  clear(): void {
    if (this.#enabled && this.#drawn) Deno.stderr.writeSync(te.encode("\r\x1b[2K"));
    this.#drawn = false;
  }

  #draw(force: boolean): void {
    if (!this.#enabled) return;
    const now = performance.now();
    if (!force && now - this.#lastDraw < 100) return;
    this.#lastDraw = now;
    const secs = Math.max((now - this.#start) / 1000, 0.001);
    const width = 30;
    const filled = this.total > 0 ? Math.round((this.#done / this.total) * width) : width;
    const bar = "#".repeat(filled) + "-".repeat(width - filled);
    const line = `${this.label} [${bar}] ${this.#done}/${this.total} paths, ` +
      `${formatBytes(this.#bytes)} (${formatBytes(this.#bytes / secs)}/s)`;
    Deno.stderr.writeSync(te.encode(`\r\x1b[2K${line}`));
    this.#drawn = true;
  }
}

interface ImportFlags extends ServiceAddrs {
  /** False with `--no-stat-cache`. */
  statCache: boolean;
}

/** The stat cache for the store at `addrs`, unless turned off or unusable. */
function openStatCache(flags: ImportFlags): StatCache | undefined {
  if (!flags.statCache) return undefined;
  const dir = statCacheDir();
  return dir ? StatCache.open(statCachePath(dir, flags)) : undefined;
}

async function runImport(paths: string[], flags: ImportFlags): Promise<void> {
  if (paths.length === 0) return;
  const addrs: ServiceAddrs = {
    blobServiceAddr: flags.blobServiceAddr,
    directoryServiceAddr: flags.directoryServiceAddr,
    pathInfoServiceAddr: flags.pathInfoServiceAddr,
  };
  const services = await constructServices(addrs);
  const statCache = openStatCache(flags);
  const bar = new ProgressBar("importing", paths.length);
  // Store paths are printed in argument order, each as soon as all before it are settled.
  const outcomes: (string | null | undefined)[] = new Array(paths.length);
  let printed = 0;
  const flush = () => {
    while (printed < paths.length && outcomes[printed] !== undefined) {
      const line = outcomes[printed++];
      if (line === null) continue;
      bar.clear(); // stdout and stderr may share the terminal
      Deno.stdout.writeSync(te.encode(line + "\n"));
    }
  };
  let failed = 0;
  try {
    await mapLimit(paths, PATH_CONCURRENCY, async (path, i) => {
      try {
        const { storePath } = await importPath(path, services, {
          progress: { bytes: (n) => bar.addBytes(n) },
          statCache,
        });
        outcomes[i] = storePath.absolute();
        log.debug("imported", { path, store_path: storePath.absolute() });
      } catch (err) {
        failed++;
        outcomes[i] = null;
        bar.clear();
        log.error(`failed to import ${path}: ${errorMessage(err)}`);
      }
      bar.itemDone();
      flush();
    });
  } finally {
    bar.clear();
    statCache?.close();
    await services.close();
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
    .argument("[paths...]", "local files, directories or symlinks to import")
    .option(
      "--no-stat-cache",
      "read every file, without the cache of what earlier imports into this store read",
    );
  addServiceOptions(cmd, {
    blobServiceAddr: DEFAULT_REMOTE_ADDR,
    directoryServiceAddr: DEFAULT_REMOTE_ADDR,
    pathInfoServiceAddr: DEFAULT_REMOTE_ADDR,
  });
  cmd.action((paths: string[], opts: ImportFlags) => runImport(paths, opts));
}
