/**
 * The `tvix_ts.admin.v1.AdminService` server (docs/gc.md#the-admin-service):
 * delete, gc and verify run by the daemon on its own backends, so clients
 * need no access to the store's files. Our own service, next to the
 * upstream ones, which it leaves untouched.
 *
 * @module
 */
import type {
  AdminServiceServer,
  CollectGarbageEvent,
  CollectGarbageRequest,
  DeleteRequest,
  DeleteResponse,
  Progress,
  VerifyEvent,
  VerifyRequest,
} from "../proto/tvix_ts/admin/v1/admin.ts";
import {
  deletePaths,
  type GcProgress,
  type GcReport,
  type ManagedServices,
  PathNotFoundError,
  PathReferencedError,
  type VerifyReport,
  verifyStore,
} from "../store/gc.ts";
import { GcBusyError, type GcRunner } from "../store/gc_runner.ts";
import { StorePath } from "../store/store_path.ts";
import { errorMessage, InvalidRequestError } from "../errors.ts";
import { type Send, serverStreamHandler, unaryHandler } from "../grpc/server_call.ts";
import { Code, type RpcStatus, statusFromError } from "../grpc/status.ts";

/**
 * Admin statuses: an unknown path is NOT_FOUND, a referenced one
 * FAILED_PRECONDITION (naming the referrers), a collection while another
 * runs ABORTED; the rest as every service maps them.
 */
export function adminStatus(err: unknown): RpcStatus {
  if (err instanceof PathNotFoundError) return { code: Code.NOT_FOUND, details: err.message };
  if (err instanceof PathReferencedError) {
    return { code: Code.FAILED_PRECONDITION, details: err.message };
  }
  if (err instanceof GcBusyError) return { code: Code.ABORTED, details: err.message };
  return statusFromError(err);
}

/** A {@linkcode GcProgress} as its message. */
function progressMessage(p: GcProgress): Progress {
  return {
    phase: p.phase,
    pathsDone: BigInt(p.pathsDone),
    pathsTotal: BigInt(p.pathsTotal),
    bytesDone: BigInt(p.bytesDone),
    bytesTotal: BigInt(p.bytesTotal),
  };
}

/**
 * Sends progress as it comes without ever queueing more than one message:
 * while one is on its way, only the latest is kept. `settle` waits for the
 * last one, before the report goes.
 */
function progressSender<M>(
  send: Send<M>,
  wrap: (p: Progress) => M,
): { onProgress(p: GcProgress): void; settle(): Promise<void> } {
  let sending: Promise<void> | undefined;
  let latest: GcProgress | undefined;
  const pump = async () => {
    while (latest) {
      const p = latest;
      latest = undefined;
      if (!await send(wrap(progressMessage(p)))) latest = undefined;
    }
    sending = undefined;
  };
  return {
    onProgress(p) {
      latest = p;
      sending ??= pump();
    },
    settle: async () => {
      await sending;
    },
  };
}

function sweepMessage(s: GcReport["blobs"]) {
  return {
    removed: BigInt(s.removed),
    removedBytes: BigInt(s.removedBytes),
    kept: BigInt(s.kept),
    reclaimedBytes: BigInt(s.reclaimedBytes),
  };
}

/** A {@linkcode GcReport} as its message. */
function garbageReportMessage(r: GcReport): CollectGarbageEvent {
  return {
    event: {
      $case: "report",
      value: {
        paths: BigInt(r.paths),
        liveDirectories: BigInt(r.liveDirectories),
        liveBlobs: BigInt(r.liveBlobs),
        directories: sweepMessage(r.directories),
        blobs: sweepMessage(r.blobs),
        deletedPaths: r.deletedPaths,
        sizeBefore: BigInt(r.sizeBefore ?? 0),
        sizeAfter: BigInt(r.sizeAfter ?? 0),
      },
    },
  };
}

function verifyReportMessage(r: VerifyReport): VerifyEvent {
  return {
    event: {
      $case: "report",
      value: {
        paths: BigInt(r.paths),
        damaged: r.damaged,
        repaired: BigInt(r.repaired),
        orphans: r.orphans && {
          directories: BigInt(r.orphans.directories),
          blobs: BigInt(r.orphans.blobs),
          bytes: BigInt(r.orphans.bytes),
        },
      },
    },
  };
}

/** A millisecond count of a request, checked. */
function millis(value: bigint, what: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new InvalidRequestError(`${what} ${value} is too large`);
  }
  return Number(value);
}

/** Builds the AdminService handlers over the daemon's services and its gc runner. */
export function adminHandler(services: ManagedServices, gc: GcRunner): AdminServiceServer {
  return {
    delete: unaryHandler<DeleteRequest, DeleteResponse>("AdminService/Delete", async (req) => {
      if (req.paths.length === 0) throw new InvalidRequestError("no store paths given");
      const targets = req.paths.map((p) => {
        try {
          return StorePath.parseAbsolute(p);
        } catch (err) {
          throw new InvalidRequestError(
            `invalid store path ${JSON.stringify(p)}: ${errorMessage(err)}`,
          );
        }
      });
      const deleted = await deletePaths(services.pathInfo, targets, { recursive: req.recursive });
      return { deleted: deleted.map((p) => p.absolute()).sort() };
    }, adminStatus),

    collectGarbage: serverStreamHandler<CollectGarbageRequest, CollectGarbageEvent>(
      "AdminService/CollectGarbage",
      async (req, send) => {
        const progress = progressSender(
          send,
          (p): CollectGarbageEvent => ({ event: { $case: "progress", value: p } }),
        );
        const report = await gc.run({
          dryRun: req.dryRun,
          graceMs: req.graceMs === undefined ? undefined : millis(req.graceMs, "grace period"),
          olderThanMs: req.olderThanMs > 0n ? millis(req.olderThanMs, "--older-than") : undefined,
          maxSizeBytes: req.maxSizeBytes > 0n ? millis(req.maxSizeBytes, "--max-size") : undefined,
          onProgress: progress.onProgress,
        });
        await progress.settle();
        await send(garbageReportMessage(report));
      },
      adminStatus,
    ),

    verify: serverStreamHandler<VerifyRequest, VerifyEvent>(
      "AdminService/Verify",
      async (req, send) => {
        const progress = progressSender(
          send,
          (p): VerifyEvent => ({ event: { $case: "progress", value: p } }),
        );
        const report = await verifyStore(services, {
          repair: req.repair,
          onProgress: progress.onProgress,
        });
        await progress.settle();
        await send(verifyReportMessage(report));
      },
      adminStatus,
    ),
  };
}
