/**
 * Workaround for denoland/deno#36788 (Deno 2.9.4–2.9.6).
 *
 * When an HTTP/2 session receives GOAWAY, Deno's node:http2 runs
 * `session.close()` synchronously inside nghttp2's frame callback; once the
 * session has carried a few hundred streams this aborts the whole process
 * (`find_stream_on_goaway_func: Assertion stream->closed_next == NULL`).
 * Deferring the real `close()` to a later macrotask avoids it, for servers
 * and clients alike (measured: 0 crashes in 290 runs against 9–10 in 10).
 *
 * Import this module before anything creates an HTTP/2 server or channel.
 * It does nothing outside Deno, and nothing on Deno versions that are known
 * to be unaffected. Once Deno ships the fix, bump `FIXED_IN` and the churn
 * tests prove the removal.
 *
 * @module
 */
import http2 from "node:http2";
import { setImmediate } from "node:timers";
import { patchHttp2 } from "./h2_patch.ts";

/** Deno versions (major.minor.patch) affected by the bug. */
const AFFECTED = /^2\.9\.[4-6]$/;

/** Whether the running Deno needs the workaround (`TVIX_H2_GOAWAY_WORKAROUND=off` disables it, for tests). */
export const workaroundActive: boolean = typeof Deno !== "undefined" &&
  AFFECTED.test(Deno.version.deno) && Deno.env.get("TVIX_H2_GOAWAY_WORKAROUND") !== "off";

function deferClose(session: http2.Http2Session): void {
  const close = session.close;
  session.close = function (this: http2.Http2Session, callback?: () => void) {
    // Register the callback now, as the real close() would: by the time the
    // deferred close() runs the session may already be closed, and close()
    // on a closed session drops its callback (grpc-js's tryShutdown would
    // then never finish).
    if (typeof callback === "function" && !this.closed && !this.destroyed) {
      this.once("close", callback);
    }
    setImmediate(() => close.call(this));
  } as typeof session.close;
}

if (workaroundActive) {
  patchHttp2("tvix-store.h2-goaway-workaround", {
    server: (server) => server.on("session", deferClose),
    session: deferClose,
  });
}
