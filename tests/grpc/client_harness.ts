/**
 * Test plumbing for the gRPC client backends: a real grpc-js server (H4's
 * `createGrpcServer`) on loopback TCP or a Unix socket, over the backends a
 * test picks, and the `grpc+…` URL that reaches it.
 *
 * @module
 */
import type * as grpc from "@grpc/grpc-js";
import {
  createGrpcServer,
  type GrpcServerOptions,
  listen,
  type ServedServices,
  shutdown,
} from "../../src/grpc_server/server.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import { MemoryPathInfoService } from "../../src/store/pathinfo/memory.ts";
import { LocalNarCalculationService } from "../../src/nar/calculation.ts";

/** A listening server and how to reach it. */
export interface RunningServer {
  /** The grpc-js server. */
  server: grpc.Server;
  /** `grpc+http://127.0.0.1:<port>` or `grpc+unix://<path>`. */
  url: string;
  /** The listen address as bound (for restarting on the same port). */
  address: string;
  /** Stops the server: GOAWAY, then cancels what is left after `graceMs` (default 1 s). */
  stop(graceMs?: number): Promise<void>;
}

/** Fresh in-memory backends for all three services. */
export function memoryServices(): ServedServices {
  const blob = new MemoryBlobService();
  const directory = new MemoryDirectoryService();
  return {
    blob,
    directory,
    pathInfo: new MemoryPathInfoService(),
    narCalculation: new LocalNarCalculationService(blob, directory),
  };
}

/**
 * Starts a server over `services` on `address`: a Unix socket path, or a
 * TCP `host:port` (port 0 picks a free one), with the server `options`.
 */
export async function startServer(
  services: ServedServices,
  address = "127.0.0.1:0",
  options?: GrpcServerOptions,
): Promise<RunningServer> {
  const server = createGrpcServer(services, options);
  const bound = await listen(server, address);
  const url = bound.kind === "unix"
    ? `grpc+unix://${bound.path}`
    : `grpc+http://${bound.host}:${bound.port}`;
  const boundAddress = bound.kind === "unix" ? bound.path : `${bound.host}:${bound.port}`;
  return {
    server,
    url,
    address: boundAddress,
    stop: (graceMs = 1000) => shutdown(server, graceMs),
  };
}
