/**
 * The daemon's store management (docs/gc.md#the-daemon): access times
 * recorded as paths are served, the AdminService handlers, and gc on a
 * schedule (`--gc-interval`), all over the daemon's own services.
 *
 * @module
 */
import type { Services } from "../store/services.ts";
import type { PathInfoService } from "../store/pathinfo/service.ts";
import { recordingAccesses } from "../store/pathinfo/access_recording.ts";
import { GcRunner } from "../store/gc_runner.ts";
import { adminHandler } from "../grpc_server/admin_handler.ts";
import type { AdminServiceServer } from "../proto/tvix_ts/admin/v1/admin.ts";
import { log } from "../log.ts";

/** What {@linkcode startDaemonAdmin} sets up. */
export interface DaemonAdmin {
  /** The path infos to serve: accesses are recorded where the backend keeps them. */
  pathInfo: PathInfoService;
  /** The AdminService handlers. */
  handler: AdminServiceServer;
  /** Stops the schedule, waits for a running gc and writes the noted accesses. */
  close(): Promise<void>;
}

/** Sets up access recording, the admin handlers and, with `gcIntervalMs`, the gc schedule. */
export function startDaemonAdmin(
  services: Services,
  opts: { gcIntervalMs?: number },
): DaemonAdmin {
  const recording = recordingAccesses(services);
  const pathInfo = recording.services.pathInfo;
  const managed = { blob: services.blob, directory: services.directory, pathInfo };
  const gc = new GcRunner(managed);
  if (opts.gcIntervalMs !== undefined) {
    log.info("gc scheduled", { every_ms: String(opts.gcIntervalMs) });
    gc.schedule(opts.gcIntervalMs);
  }
  return {
    pathInfo,
    handler: adminHandler(managed, gc),
    async close() {
      await gc.close();
      await recording.stop();
    },
  };
}
