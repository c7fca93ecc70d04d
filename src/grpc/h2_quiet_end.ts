/**
 * Makes `end()` on an HTTP/2 stream that has already finished writing cheap.
 *
 * grpc-js half-closes every client stream the server has ended by calling
 * `end()` on it, usually after it has finished. Node's `Writable.end` then
 * builds an `ERR_STREAM_ALREADY_FINISHED` error, and only hands it to a
 * callback if one was given; grpc-js gives none, so the error is dropped.
 * In Deno building that error (a Node-style error with its stack) took
 * ~95 µs: 1.9 s of an import of 20,000 small files through a daemon, more
 * than reading them. Skipping the error where nobody can see it changes
 * nothing else: with a callback, `end()` runs as before.
 *
 * Import this module before anything creates an HTTP/2 channel or server.
 *
 * @module
 */
import http2 from "node:http2";

const PATCHED = Symbol.for("tvix-store.h2-quiet-end");

type Patchable = Record<string | symbol, unknown>;

interface Endable {
  writableFinished: boolean;
  end(...args: unknown[]): unknown;
}

/** Patches the prototype of `stream` (once per prototype). */
function patchStream(stream: object): void {
  const proto = Object.getPrototypeOf(stream) as Patchable;
  if (proto[PATCHED]) return;
  proto[PATCHED] = true;
  const end = proto.end as (...args: unknown[]) => unknown;
  proto.end = function (this: Endable, ...args: unknown[]) {
    if (this.writableFinished && !args.some((a) => typeof a === "function")) return this;
    return end.apply(this, args);
  };
}

if (!(http2 as unknown as Patchable)[PATCHED]) {
  (http2 as unknown as Patchable)[PATCHED] = true;
  const connect = http2.connect as (...args: unknown[]) => http2.ClientHttp2Session;
  (http2 as unknown as Patchable).connect = function (...args: unknown[]) {
    const session = connect.apply(http2, args);
    const request = session.request;
    session.request = function (this: http2.ClientHttp2Session, ...a: unknown[]) {
      const stream = (request as (...a: unknown[]) => http2.ClientHttp2Stream).apply(this, a);
      patchStream(stream);
      return stream;
    } as typeof session.request;
    return session;
  };
  for (const name of ["createServer", "createSecureServer"] as const) {
    const original = http2[name] as (...args: unknown[]) => http2.Http2Server;
    (http2 as unknown as Patchable)[name] = function (...args: unknown[]) {
      const server = original.apply(http2, args);
      server.on("stream", patchStream);
      return server;
    };
  }
}
