/**
 * What `delete`, `gc` and `verify` share (docs/gc.md): whether the work
 * runs in a daemon, through its AdminService, or here on the store's own
 * backends; and the progress line of a gc or verify, drawn as `import`
 * and `copy` draw theirs.
 *
 * @module
 */
import type { ServiceAddrs } from "../store/services.ts";
import type { GcProgress } from "../store/gc.ts";
import { errorMessage } from "../errors.ts";
import { Progress } from "../log.ts";

const DAEMON_URL = /^grpc\+(http|https|unix):/;

/**
 * The daemon URL to send `command` to when all three services are at the
 * same daemon; `undefined` when none is at a daemon (the work runs here).
 * Throws one line for a mix, which neither side could collect correctly.
 */
export function adminUrlOf(flags: ServiceAddrs, command: string): string | undefined {
  const addrs = [flags.blobServiceAddr, flags.directoryServiceAddr, flags.pathInfoServiceAddr];
  const atDaemon = addrs.filter((a) => DAEMON_URL.test(a));
  if (atDaemon.length === 0) return undefined;
  if (atDaemon.length === 3 && new Set(addrs).size === 1) return addrs[0];
  throw new Error(
    `${command} runs either in a daemon (all three service addresses the same grpc+… URL) or ` +
      `on the store's own backends (none at a daemon), not on a mix: ${addrs.join(", ")}`,
  );
}

/**
 * A failed admin call as one line: an older daemon without the service is
 * named as such; other failures are prefixed with the daemon's address,
 * except an unknown or referenced path, whose message names the path.
 */
export function adminError(url: string, err: unknown): Error {
  // grpc-js's status codes: 5 NOT_FOUND, 9 FAILED_PRECONDITION, 12 UNIMPLEMENTED.
  const code = (err as { code?: number }).code;
  if (code === 12) {
    return new Error(
      `the daemon at ${url} has no AdminService (a tvix-store without store management, ` +
        `or upstream's): point --blob-service-addr, --directory-service-addr and ` +
        `--path-info-service-addr at the store's own backends instead`,
    );
  }
  if (code === undefined || code === 5 || code === 9) {
    return err instanceof Error ? err : new Error(errorMessage(err));
  }
  return new Error(`the daemon at ${url}: ${errorMessage(err)}`);
}

const LABELS: Partial<Record<GcProgress["phase"], string>> = {
  select: "gc (choosing paths)",
  mark: "gc (marking)",
  verify: "verifying",
};

/**
 * The progress line of a gc or verify from its progress reports (absolute
 * counts per phase): one {@linkcode Progress} per phase, in bytes of NAR
 * and paths. The sweep has no counts and draws nothing.
 */
export class ManageProgress {
  readonly #quiet: boolean;
  #phase?: string;
  #line?: Progress;
  #bytes = 0;
  #paths = 0;

  /** Draws nothing with `quiet` (or when stderr is no terminal). */
  constructor(quiet: boolean | undefined) {
    this.#quiet = quiet ?? false;
  }

  /** Takes one report. */
  update = (p: GcProgress): void => {
    if (p.phase !== this.#phase) {
      this.#line?.finish();
      this.#line = undefined;
      this.#phase = p.phase;
      this.#bytes = 0;
      this.#paths = 0;
      const label = LABELS[p.phase];
      if (label) {
        this.#line = new Progress({
          label,
          totalBytes: p.bytesTotal,
          totalItems: p.pathsTotal,
          quiet: this.#quiet,
        });
      }
    }
    const line = this.#line;
    if (!line) return;
    line.addBytes(p.bytesDone - this.#bytes);
    this.#bytes = p.bytesDone;
    for (; this.#paths < p.pathsDone; this.#paths++) line.itemDone();
  };

  /** Erases the line. */
  finish(): void {
    this.#line?.finish();
  }
}
