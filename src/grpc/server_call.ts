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
 * `check` runs on each message as it arrives; if it throws, the stream is
 * paused, what was queued is dropped and the error is thrown at once, so
 * a client cannot have more refused messages queued behind a slow body.
 *
 * Events, not the stream's async iterator: the iterator destroys the
 * stream when it finishes, and in Deno that destruction (an AbortError,
 * then grpc-js ending a destroyed stream, each a Node error with its stack)
 * cost ~120 µs per call, more than a small blob's whole upload.
 */
export async function* receiveAll<Req>(
  call: ServerReadableStream<Req, unknown>,
  check?: (message: Req) => void,
): AsyncGenerator<Req> {
  const queue: Req[] = [];
  let ended = false;
  let broken = false;
  let failure: unknown;
  let refused: { error: unknown } | undefined;
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const onData = (message: Req) => {
    if (refused) return;
    try {
      check?.(message);
    } catch (error) {
      refused = { error };
      queue.length = 0;
      call.pause();
      notify();
      return;
    }
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
      if (refused) throw refused.error;
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
 * Sends one response message. Resolves true once HTTP/2 has taken it
 * (grpc-js has serialized it; the client's window had room for it), false
 * as soon as the call is gone (cancelled, failed), in which case the body
 * should stop producing.
 */
export type Send<Res> = (message: Res) => Promise<boolean>;

/**
 * A server-streaming handler. `body` produces messages through `send`,
 * which honours the client's HTTP/2 flow control: the next message is
 * produced only once HTTP/2 has taken the previous one, so a slow reader
 * slows the producer down and a reader that stops pins just the one
 * message its window holds back. (grpc-js alone queues 16 messages per
 * stream before it asks a producer to wait; 100 stalled reads of a large
 * blob held ~7 MiB each that way, with the blob reader's read-ahead.)
 * Waiting costs a fast reader nothing measurable: the producer has its
 * next message ready when the previous one is taken. Returning ends the
 * stream with OK; throwing ends it with the mapped status after the
 * messages already sent.
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
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const markGone = () => {
    gone = true;
    notify();
  };
  call.once("cancelled", markGone);
  call.once("close", markGone);
  call.once("error", markGone);
  const isGone = () => gone || call.cancelled || call.destroyed || call.writableEnded;
  return async (message) => {
    if (isGone()) return false;
    let taken = false;
    // grpc-js calls back once HTTP/2 took the message, which it does only
    // as far as the client's window allows; if the call goes first, the
    // callback never comes.
    call.write(message, () => {
      taken = true;
      notify();
    });
    while (!taken && !isGone()) await new Promise<void>((resolve) => (wake = resolve));
    return taken && !isGone();
  };
}
