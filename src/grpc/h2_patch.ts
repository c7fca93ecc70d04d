/**
 * One way for the `h2_*.ts` modules to hook into node:http2's factories:
 * each adjusts the servers `createServer`/`createSecureServer` make, the
 * arguments they are made with, or the client sessions `connect` makes,
 * and is applied once per process however often its module is loaded.
 *
 * @module
 */
import http2 from "node:http2";

/** What one patch does; every hook is optional. */
export interface Http2Patch {
  /** Rewrites a server factory's arguments (`[options][, onRequest]`) in place. */
  serverArgs?(args: unknown[]): void;
  /** Sees every server made; `secure` for `createSecureServer`. */
  server?(server: http2.Http2Server, secure: boolean): void;
  /** Rewrites `connect`'s arguments (`authority[, options][, listener]`) in place. */
  connectArgs?(args: unknown[]): void;
  /** Sees every client session made. */
  session?(session: http2.ClientHttp2Session): void;
}

type Patchable = Record<string | symbol, unknown>;

/**
 * Wraps node:http2's factories with `patch`, unless a patch named `key`
 * was applied already. Patches wrap each other in the order applied.
 */
export function patchHttp2(key: string, patch: Http2Patch): void {
  const target = http2 as unknown as Patchable;
  const applied = Symbol.for(key);
  if (target[applied]) return;
  target[applied] = true;
  if (patch.serverArgs || patch.server) {
    for (const name of ["createServer", "createSecureServer"] as const) {
      const original = http2[name] as (...args: unknown[]) => http2.Http2Server;
      target[name] = function (...args: unknown[]) {
        patch.serverArgs?.(args);
        const server = original.apply(http2, args);
        patch.server?.(server, name === "createSecureServer");
        return server;
      };
    }
  }
  if (patch.connectArgs || patch.session) {
    const connect = http2.connect as (...args: unknown[]) => http2.ClientHttp2Session;
    target.connect = function (...args: unknown[]) {
      patch.connectArgs?.(args);
      const session = connect.apply(http2, args);
      patch.session?.(session);
      return session;
    };
  }
}
