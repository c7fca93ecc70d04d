/**
 * grpc-js's own log lines, sent to our log instead of straight to stderr.
 *
 * grpc-js prints some failures itself, such as `E No address added out of
 * total 1 resolved` when a port is taken, in its own format and next to
 * the one-line error we report for the same cause. Routed here they go to
 * our log at debug level (its errors) or trace level (the rest), so the
 * default output stays one line per event in one format.
 *
 * The routing is set up where grpc-js gets used, by the channel factory
 * and the server factory, so every isolate that makes gRPC calls has it:
 * the CLI's main thread and each FUSE Worker alike, and a command that
 * never needs grpc-js does not load it. Call it after the log level is
 * set: the verbosity asked of grpc-js follows our level at that moment.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import { log, logEnabled } from "../log.ts";

let routed = false;

/**
 * Routes grpc-js's log lines into our log, once per isolate. A user who set
 * `GRPC_VERBOSITY` (or `GRPC_NODE_VERBOSITY`) asked grpc-js for its own
 * output, and keeps it.
 */
export function routeGrpcLogs(): void {
  if (routed) return;
  routed = true;
  if (userAskedForGrpcLogs()) return;
  grpc.setLogger({
    error: (message?: unknown, ...rest: unknown[]) => log.debug(`grpc-js: ${text(message, rest)}`),
    info: (message?: unknown, ...rest: unknown[]) => log.trace(`grpc-js: ${text(message, rest)}`),
    debug: (message?: unknown, ...rest: unknown[]) => log.trace(`grpc-js: ${text(message, rest)}`),
  });
  grpc.setLogVerbosity(logEnabled("trace") ? grpc.logVerbosity.DEBUG : grpc.logVerbosity.ERROR);
}

function userAskedForGrpcLogs(): boolean {
  try {
    return Boolean(Deno.env.get("GRPC_VERBOSITY") ?? Deno.env.get("GRPC_NODE_VERBOSITY"));
  } catch {
    return false; // no --allow-env: nobody can have asked
  }
}

function text(message: unknown, rest: unknown[]): string {
  return [message, ...rest].map(String).join(" ");
}
