/**
 * Glue between async handler bodies and grpc-js's callback/stream API:
 * error → status conversion in one place, HTTP/2 backpressure for server
 * streams, and client streams that fail loudly when the caller cancels.
 *
 * @module
 */
import type {
  handleClientStreamingCall,
  handleServerStreamingCall,
  handleUnaryCall,
  ServerReadableStream,
  ServerUnaryCall,
  ServerWritableStream,
} from "@grpc/grpc-js";
import { Code, logFailure, RpcError, type RpcStatus, statusFromError } from "./status.ts";

/** Maps an error thrown by a handler body to the status to send. */
export type ErrorMapper = (err: unknown) => RpcStatus;

/** A unary handler from an async function of the request. */
export function unaryHandler<Req, Res>(
  method: string,
  body: (request: Req, call: ServerUnaryCall<Req, Res>) => Promise<Res>,
  mapError: ErrorMapper = statusFromError,
): handleUnaryCall<Req, Res> {
  return (call, callback) => {
    body(call.request, call).then(
      (response) => callback(null, response),
      (err) => {
        const status = mapError(err);
        logFailure(method, status, err);
        callback(status);
      },
    );
  };
}

/**
 * A client-streaming handler from an async function that consumes the
 * request stream (see {@linkcode receiveAll}) and returns the response.
 */
export function clientStreamHandler<Req, Res>(
  method: string,
  body: (call: ServerReadableStream<Req, Res>) => Promise<Res>,
  mapError: ErrorMapper = statusFromError,
): handleClientStreamingCall<Req, Res> {
  return (call, callback) => {
    body(call).then(
      (response) => callback(null, response),
      (err) => {
        const status = mapError(err);
        // A cancelled call has no one left to tell; grpc-js drops the status.
        if (!call.cancelled) logFailure(method, status, err);
        callback(status);
      },
    );
  };
}

/** Messages a client stream may queue before it is paused (grpc-js's own buffer size). */
const RECEIVE_QUEUE = 16;

/**
 * The messages of a client stream, one at a time. The stream is paused
 * while {@linkcode RECEIVE_QUEUE} messages wait, and grpc-js then stops
 * reading from HTTP/2, so a slow body holds the client back through flow
 * control instead of buffering the whole upload. Throws CANCELLED if the
 * client cancels or the stream breaks before its half-close, so a body
 * never mistakes a truncated stream for a complete one.
 *
 * Events, not the stream's async iterator: the iterator destroys the
 * stream when it finishes, and in Deno that destruction (an AbortError,
 * then grpc-js ending a destroyed stream, each a Node error with its stack)
 * cost ~120 µs per call, more than a small blob's whole upload.
 */
export async function* receiveAll<Req>(
  call: ServerReadableStream<Req, unknown>,
): AsyncGenerator<Req> {
  const queue: Req[] = [];
  let ended = false;
  let broken = false;
  let failure: unknown;
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const onData = (message: Req) => {
    queue.push(message);
    if (queue.length >= RECEIVE_QUEUE) call.pause();
    notify();
  };
  const onEnd = () => {
    ended = true;
    notify();
  };
  const onBreak = () => {
    broken = true;
    notify();
  };
  const onError = (err: unknown) => {
    failure = err;
    notify();
  };
  call.on("data", onData);
  call.on("end", onEnd);
  call.on("close", onBreak);
  call.on("cancelled", onBreak);
  call.on("error", onError);
  try {
    while (true) {
      const message = queue.shift();
      if (message !== undefined) {
        if (call.isPaused() && queue.length < RECEIVE_QUEUE / 2) call.resume();
        yield message;
        continue;
      }
      if (ended && !call.cancelled) return;
      if (call.cancelled || broken) {
        throw new RpcError(Code.CANCELLED, "call cancelled by the client");
      }
      if (failure !== undefined) throw failure;
      await new Promise<void>((resolve) => (wake = resolve));
    }
  } finally {
    call.off("data", onData);
    call.off("end", onEnd);
    call.off("close", onBreak);
    call.off("cancelled", onBreak);
    call.off("error", onError);
  }
}

/**
 * Sends one response message; resolves once the stream can take more.
 * Returns false if the call is gone (cancelled, failed), in which case the
 * body should stop producing.
 */
export type Send<Res> = (message: Res) => Promise<boolean>;

/**
 * A server-streaming handler. `body` produces messages through `send`,
 * which honours HTTP/2 flow control: it waits for `'drain'` whenever
 * grpc-js's buffer is full, so a slow reader slows the producer instead of
 * growing the heap. Returning ends the stream with OK; throwing ends it with
 * the mapped status after the messages already sent.
 */
export function serverStreamHandler<Req, Res>(
  method: string,
  body: (request: Req, send: Send<Res>, call: ServerWritableStream<Req, Res>) => Promise<void>,
  mapError: ErrorMapper = statusFromError,
): handleServerStreamingCall<Req, Res> {
  return (call) => {
    const send = backpressuredSender(call);
    body(call.request, send, call).then(
      () => {
        if (!call.cancelled) call.end();
      },
      (err) => {
        if (call.cancelled) return;
        const status = mapError(err);
        logFailure(method, status, err);
        call.emit("error", status);
      },
    );
  };
}

function backpressuredSender<Res>(call: ServerWritableStream<unknown, Res>): Send<Res> {
  let gone = false;
  const markGone = () => (gone = true);
  call.once("cancelled", markGone);
  call.once("close", markGone);
  return async (message) => {
    if (gone || call.cancelled || call.destroyed || call.writableEnded) return false;
    if (call.write(message)) return true;
    // Buffer full: wait until grpc-js has handed the queue to HTTP/2, or the
    // call is gone (then 'drain' would never come).
    await new Promise<void>((resolve) => {
      const done = () => {
        call.off("drain", done);
        call.off("cancelled", done);
        call.off("close", done);
        call.off("error", done);
        resolve();
      };
      call.on("drain", done);
      call.on("cancelled", done);
      call.on("close", done);
      call.on("error", done);
    });
    return !(gone || call.cancelled || call.destroyed);
  };
}
