/**
 * The conformance suites run against the `grpc+…` client backends, each
 * talking to a real gRPC server (`createGrpcServer`) over memory, SQLite
 * and object-store backends: memory over a Unix socket, the others over
 * loopback TCP. One fresh server and store per test case.
 */
import { join } from "node:path";
import { constructServices } from "../../src/store/services.ts";
import type { ServiceAddrs } from "../../src/store/services.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { pathInfoServiceFromUrl } from "../../src/store/pathinfo/from_url.ts";
import { blobServiceConformance } from "../conformance/blob_suite.ts";
import { directoryServiceConformance } from "../conformance/directory_suite.ts";
import { pathInfoServiceConformance } from "../conformance/pathinfo_suite.ts";
import type { ServiceFactory } from "../conformance/harness.ts";
import { startServer } from "./client_harness.ts";

interface Backend {
  /** The server's backend addresses, inside a fresh temp dir. */
  addrs(dir: string): ServiceAddrs;
  /** Listen on a Unix socket in the temp dir instead of loopback TCP. */
  unix?: boolean;
}

const BACKENDS = {
  memory: {
    addrs: () => ({
      blobServiceAddr: "memory://",
      directoryServiceAddr: "memory://",
      pathInfoServiceAddr: "memory://",
    }),
    unix: true,
  },
  sqlite: {
    addrs: (dir: string) => ({
      blobServiceAddr: "memory://",
      directoryServiceAddr: `sqlite://${join(dir, "store.sqlite")}`,
      pathInfoServiceAddr: `sqlite://${join(dir, "store.sqlite")}`,
    }),
  },
  objectstore: {
    addrs: (dir: string) => ({
      blobServiceAddr: `objectstore+file://${join(dir, "blobs")}`,
      directoryServiceAddr: `objectstore+file://${join(dir, "directories")}`,
      pathInfoServiceAddr: "memory://",
    }),
  },
} satisfies Record<string, Backend>;

/**
 * A factory of gRPC client services (built from their `grpc+…` URL, as
 * users do) in front of a fresh server over `backend`.
 */
function overGrpc<S extends { close(): Promise<void> }>(
  backend: Backend,
  connect: (url: string) => Promise<S>,
): ServiceFactory<S> {
  return async () => {
    const dir = await Deno.makeTempDir({ prefix: "grpc-client-" });
    const services = await constructServices(backend.addrs(dir));
    const running = await startServer(
      services,
      backend.unix ? join(dir, "tvix.sock") : "127.0.0.1:0",
    );
    const service = await connect(`${running.url}?wait-connect=1`);
    return {
      service,
      cleanup: async () => {
        await service.close();
        // The client is closed: nothing is in flight.
        await running.stop(50);
        await services.close();
        await Deno.remove(dir, { recursive: true });
      },
    };
  };
}

blobServiceConformance("grpc(memory, unix)", overGrpc(BACKENDS.memory, blobServiceFromUrl));
blobServiceConformance(
  "grpc(objectstore, tcp)",
  overGrpc(BACKENDS.objectstore, blobServiceFromUrl),
);

directoryServiceConformance(
  "grpc(memory, unix)",
  overGrpc(BACKENDS.memory, directoryServiceFromUrl),
);
directoryServiceConformance(
  "grpc(sqlite, tcp)",
  overGrpc(BACKENDS.sqlite, directoryServiceFromUrl),
);
directoryServiceConformance(
  "grpc(objectstore, tcp)",
  overGrpc(BACKENDS.objectstore, directoryServiceFromUrl),
  { onlyRootsRetrievable: true },
);

pathInfoServiceConformance(
  "grpc(memory, unix)",
  overGrpc(BACKENDS.memory, pathInfoServiceFromUrl),
);
pathInfoServiceConformance(
  "grpc(sqlite, tcp)",
  overGrpc(BACKENDS.sqlite, pathInfoServiceFromUrl),
);
