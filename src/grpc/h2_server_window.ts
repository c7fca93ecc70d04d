/**
 * A larger HTTP/2 receive window for the daemon's gRPC server.
 *
 * grpc-js lets a client choose the window it grants a server
 * (`grpc-node.flow_control_window`, set in `channel.ts`) but has no such
 * option for its server (grpc/grpc-node#3058 is still open), so an upload
 * could only have 64 KiB in flight per stream and the client waited for a
 * WINDOW_UPDATE from the busy daemon every 64 KiB. This module makes every
 * HTTP/2 server created afterwards advertise {@linkcode SERVER_WINDOW} per
 * stream and grant it to each connection. Measured with
 * `deno task bench grpc` (512 MiB): Put through the daemon 124 -> 152 MB/s;
 * the daemon's peak RSS stayed below its 400 MiB budget. Import it before
 * grpc-js creates a server (`server.ts` does).
 *
 * @module
 */
import type http2 from "node:http2";
import { patchHttp2 } from "./h2_patch.ts";

/** Bytes a client may send on one stream (and, per connection, in all) before we acknowledge. */
export const SERVER_WINDOW = 1024 * 1024;

type ServerOptions = { settings?: http2.Settings };

function widen(session: http2.ServerHttp2Session): void {
  try {
    session.setLocalWindowSize(SERVER_WINDOW);
  } catch {
    // A session closed at once: nothing to widen.
  }
}

patchHttp2("tvix-store.h2-server-window", {
  // createServer([options][, onRequest]): grpc-js always passes options.
  serverArgs: (args) => {
    if (typeof args[0] === "object" && args[0] !== null) {
      const opts = args[0] as ServerOptions;
      args[0] = { ...opts, settings: { ...opts.settings, initialWindowSize: SERVER_WINDOW } };
    }
  },
  server: (server) => server.on("session", widen),
});
