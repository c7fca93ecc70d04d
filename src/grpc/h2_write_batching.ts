/**
 * One socket write per event-loop tick for HTTP/2 connections, instead of
 * one per frame.
 *
 * Deno's node:http2 (nghttp2 underneath, Deno 2.9.6) hands every frame to
 * its socket with a write of its own, and sends DATA in frames of 16 KiB
 * whatever frame size the peer allows: a gRPC `Read` of 1 GiB was 65,573
 * `sendto` calls, which took ~0.9 s of the daemon's main thread (`strace`,
 * `--cpu-prof`), more than reading, verifying and framing the data. Corking
 * the socket when the first frame of a tick is written and uncorking it on
 * the next tick turns a tick's frames into one `writev` (1,437 for the same
 * GiB). Nothing waits longer than that tick, and write callbacks and
 * backpressure work as before: corked bytes count as buffered.
 *
 * Import this module before anything creates an HTTP/2 server or client
 * session: it patches `http2.createServer`, `http2.createSecureServer`
 * and `http2.connect` (the sockets grpc-js passes through
 * `createConnection`). `TVIX_H2_WRITE_BATCHING=off` leaves them as they
 * are (for the test that shows the difference).
 *
 * @module
 */
import { patchHttp2 } from "./h2_patch.ts";
import type { Duplex } from "node:stream";
import process from "node:process";

const BATCHED = Symbol.for("tvix-store.h2-write-batching.socket");

type Patchable = Record<string | symbol, unknown>;

/**
 * Makes `socket` gather the writes of one tick into one: the first write
 * of a tick corks it, and the next tick uncorks it. Idempotent.
 */
export function batchWrites(socket: Duplex): void {
  const s = socket as unknown as Patchable & Duplex;
  if (s[BATCHED]) return;
  s[BATCHED] = true;
  const write = socket.write;
  let corked = false;
  const uncork = () => {
    corked = false;
    socket.uncork();
  };
  socket.write = function (this: Duplex, ...args: unknown[]) {
    if (!corked && !this.destroyed) {
      corked = true;
      this.cork();
      process.nextTick(uncork);
    }
    return (write as (...a: unknown[]) => boolean).apply(this, args);
  } as Duplex["write"];
}

/** Whether writes are batched (`TVIX_H2_WRITE_BATCHING=off` turns it off). */
export const writeBatchingActive: boolean = (() => {
  try {
    return Deno.env.get("TVIX_H2_WRITE_BATCHING") !== "off";
  } catch {
    return true; // no permission to read the environment: the default
  }
})();

if (writeBatchingActive) {
  patchHttp2("tvix-store.h2-write-batching", {
    server: (server, secure) => server.on(secure ? "secureConnection" : "connection", batchWrites),
    // connect(authority[, options][, listener]): grpc-js always passes
    // options with createConnection, which returns the socket to use.
    connectArgs: (args) => {
      const opts = args[1] as { createConnection?: (...a: unknown[]) => Duplex } | undefined;
      if (typeof opts !== "object" || opts === null) return;
      const create = opts.createConnection;
      if (typeof create !== "function") return;
      args[1] = {
        ...opts,
        createConnection: (...a: unknown[]) => {
          const socket = create(...a);
          batchWrites(socket);
          return socket;
        },
      };
    },
  });
}
