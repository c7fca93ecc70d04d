/**
 * Garbage collection inside a long-running process (the daemon): one
 * collection at a time, whether asked for through the admin service or
 * run by the schedule (`daemon --gc-interval`), and one log line per run
 * (docs/gc.md#the-daemon).
 *
 * @module
 */
import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";
import { collectGarbage, type GcOptions, type GcReport, type ManagedServices } from "./gc.ts";

/** A collection was asked for while another one runs. */
export class GcBusyError extends Error {
  override name = "GcBusyError";
}

/** Runs collections on `services`, never two at once. */
export class GcRunner {
  readonly #services: ManagedServices;
  #running: Promise<unknown> | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  /** Stops a running collection when the daemon shuts down. */
  readonly #stopping = new AbortController();

  /** A runner over `services`. */
  constructor(services: ManagedServices) {
    this.#services = services;
  }

  /** Whether a collection is running. */
  get busy(): boolean {
    return this.#running !== undefined;
  }

  /**
   * Runs one collection; throws {@linkcode GcBusyError} at once if one is
   * running. `source` names who asked, for the log line.
   */
  async run(options: GcOptions, source = "request"): Promise<GcReport> {
    if (this.#running) throw new GcBusyError("a garbage collection is already running");
    if (this.#closed) throw new GcBusyError("the daemon is shutting down");
    const t0 = performance.now();
    const running = collectGarbage(this.#services, { ...options, signal: this.#stopping.signal });
    this.#running = running;
    try {
      const r = await running;
      // Numbers as text: the log quotes other values, and these are grepped for.
      log.info(options.dryRun ? "gc dry run done" : "gc done", {
        source,
        paths: String(r.paths),
        deleted_paths: String(r.deletedPaths.length),
        removed_directories: String(r.directories.removed),
        removed_blobs: String(r.blobs.removed),
        reclaimed_bytes: String(r.blobs.reclaimedBytes + r.directories.reclaimedBytes),
        ms: String(Math.round(performance.now() - t0)),
      });
      return r;
    } catch (err) {
      log.warn("gc failed", { source, error: errorMessage(err) });
      throw err;
    } finally {
      this.#running = undefined;
    }
  }

  /**
   * Collects every `intervalMs` (counted from the end of the previous run)
   * with the default grace period, until {@linkcode close}. A run that
   * finds another collection going is skipped.
   */
  schedule(intervalMs: number): void {
    const next = () => {
      if (this.#closed) return;
      this.#timer = setTimeout(async () => {
        try {
          await this.run({}, "schedule");
        } catch (err) {
          if (err instanceof GcBusyError) log.info("scheduled gc skipped", { why: err.message });
        }
        next();
      }, intervalMs);
    };
    next();
  }

  /**
   * Stops the schedule, asks a running collection to stop (at its next
   * path, or after its sweep) and waits for it.
   */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#stopping.abort(new GcBusyError("the daemon is shutting down"));
    await this.#running?.catch(() => {});
  }
}
