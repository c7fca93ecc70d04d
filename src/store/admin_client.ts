/**
 * A client of our `tvix_ts.admin.v1.AdminService` (docs/gc.md#the-admin-service),
 * with which `delete`, `gc` and `verify` have a daemon do the work on its
 * own backends. Failed calls throw `RpcError` with the daemon's status, so
 * callers can tell NOT_FOUND and FAILED_PRECONDITION apart.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import {
  AdminServiceClient,
  type CollectGarbageEvent,
  type CollectGarbageRequest,
  type DeleteResponse,
  type VerifyEvent,
} from "../proto/tvix_ts/admin/v1/admin.ts";
import { channelFor, type ChannelLease, clientOn, serverStream } from "../grpc/channel.ts";
import { RpcError } from "../grpc/status.ts";

/** A failed call as an `RpcError` carrying its status; anything else as it is. */
function asRpcError(err: unknown): unknown {
  const e = err as Partial<grpc.ServiceError> | undefined;
  return typeof e?.code === "number" ? new RpcError(e.code, e.details ?? e.message ?? "") : err;
}

/** The AdminService of one daemon. */
export class AdminClient {
  readonly #lease: ChannelLease;
  readonly #client: AdminServiceClient;

  private constructor(lease: ChannelLease) {
    this.#lease = lease;
    this.#client = clientOn(lease, AdminServiceClient);
  }

  /** Connects to the daemon a `grpc+…` URL names. */
  static async fromUrl(url: string): Promise<AdminClient> {
    return new AdminClient(await channelFor(url));
  }

  /** Deletes store paths (absolute); resolves with those deleted. */
  delete(paths: string[], recursive: boolean): Promise<string[]> {
    return new Promise((resolve, reject) => {
      // Delete reads every PathInfo first: no unary deadline.
      this.#client.delete(
        { paths, recursive },
        new grpc.Metadata(),
        { deadline: Infinity },
        (err: grpc.ServiceError | null, res: DeleteResponse) =>
          err ? reject(asRpcError(err)) : resolve(res.deleted),
      );
    });
  }

  /** Runs a garbage collection: progress events, then the report. */
  collectGarbage(request: CollectGarbageRequest): AsyncGenerator<CollectGarbageEvent> {
    return serverStream(this.#client.collectGarbage(request), false, asRpcError);
  }

  /** Verifies every path: progress events, then the report. */
  verify(repair: boolean): AsyncGenerator<VerifyEvent> {
    return serverStream(this.#client.verify({ repair }), false, asRpcError);
  }

  /** Drops the connection. */
  close(): void {
    this.#lease.release();
  }
}
