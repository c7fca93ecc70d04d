/**
 * gRPC client plumbing shared by the `grpc+…` backends: URL parsing
 * (docs/architecture.md#service-urls), one grpc-js channel per endpoint for
 * all three services, and the mapping of call failures back into the castore
 * error model (docs/compatibility.md#client-side).
 *
 * @module
 */
import "./h2_goaway_workaround.ts";
import "./h2_quiet_end.ts";
import "./h2_write_batching.ts";
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import {
  errorMessage,
  InvalidRequestError,
  StorageError,
  UnavailableError,
  UpstreamError,
} from "../errors.ts";
import { routeGrpcLogs } from "./log_routing.ts";

/** Where a `grpc+…` URL points, in the form grpc-js wants. */
export interface GrpcEndpoint {
  /** grpc-js target: `host:port`, or `unix:<path>` for a Unix socket. */
  readonly target: string;
  /** TLS (`grpc+https`) or plaintext HTTP/2. */
  readonly tls: boolean;
  /** `wait-connect=1`: connect at construction and fail if unreachable. */
  readonly waitConnect: boolean;
  /**
   * `timeout=SECONDS` (default {@linkcode DEFAULT_TIMEOUT_MS}): how long a
   * unary call may take, and how long a connection may leave a ping
   * unanswered while calls are open before every call on it fails.
   */
  readonly timeoutMs: number;
}

/**
 * Default of `timeout=`: long enough for a busy daemon, short enough that
 * a hung one (stopped, deadlocked, a dead network path) surfaces as an
 * error (EIO on the mount) instead of blocking readers indefinitely.
 */
export const DEFAULT_TIMEOUT_MS = 30_000;

/** Scheme of each accepted URL, without the trailing colon. */
const SCHEMES = new Set(["grpc+unix", "grpc+http", "grpc+https"]);

/**
 * Parses a `grpc+unix://`, `grpc+http://` or `grpc+https://` URL. Throws a
 * `StorageError` (as every error building a service from its URL, see
 * docs/architecture.md#service-urls) if the URL is malformed, names a host
 * for a Unix socket, or carries a path for TCP.
 */
export function parseGrpcUrl(url: string): GrpcEndpoint {
  let u: URL;
  try {
    u = new URL(url);
  } catch (err) {
    throw new StorageError(`unable to parse url: ${url}: ${err}`);
  }
  const scheme = u.protocol.slice(0, -1);
  if (!SCHEMES.has(scheme)) throw new StorageError(`unknown scheme: ${scheme}`);
  const waitConnect = u.searchParams.get("wait-connect") === "1";
  const timeoutText = u.searchParams.get("timeout");
  const timeoutMs = timeoutText === null ? DEFAULT_TIMEOUT_MS : Number(timeoutText) * 1000;
  if (!(timeoutMs > 0 && timeoutMs <= 86_400_000)) {
    throw new StorageError(`timeout must be a number of seconds, up to a day: ${timeoutText}`);
  }

  if (scheme === "grpc+unix") {
    if (u.host !== "") throw new StorageError("host may not be set for unix domain sockets");
    let path: string;
    try {
      path = decodeURIComponent(u.pathname);
    } catch {
      throw new StorageError(`unable to parse url: ${url}: bad escape in socket path`);
    }
    if (path === "") throw new StorageError("unix domain socket path may not be empty");
    return { target: `unix:${path}`, tls: false, waitConnect, timeoutMs };
  }

  // Non-special schemes keep an absent path empty, so "/" is a path too.
  if (u.pathname !== "") throw new StorageError("path may not be set");
  if (u.hostname === "") throw new StorageError("host must be set");
  if (u.username !== "" || u.password !== "") {
    throw new StorageError("credentials may not be set");
  }
  const tls = scheme === "grpc+https";
  const port = u.port !== "" ? u.port : tls ? "443" : "80";
  return { target: `${u.hostname}:${port}`, tls, waitConnect, timeoutMs };
}

/**
 * The largest encoded Directory message either end sends or accepts
 * (docs/compatibility.md#message-size-limits). A directory travels as one
 * message, and Nix sets no limit on the number of entries, so the 4 MiB
 * every other message keeps to would refuse directories Nix handles (a
 * file entry with a 40-byte name takes ~80 bytes: 4 MiB is ~50,000 of
 * them). 64 MiB admits ~800,000 such entries, or ~220,000 with names of
 * the longest kind (255 bytes), while keeping what one message can make a
 * server buffer bounded. The server refuses larger directories with
 * RESOURCE_EXHAUSTED; our client refuses to send them.
 */
export const MAX_DIRECTORY_MESSAGE_BYTES = 64 * 1024 * 1024;

/**
 * The largest message our clients accept: a Directory of up to
 * {@linkcode MAX_DIRECTORY_MESSAGE_BYTES}. Every other response stays at or
 * below 4 MiB; a bound still protects us from a runaway peer.
 */
export const MAX_RECEIVE_MESSAGE_LENGTH = MAX_DIRECTORY_MESSAGE_BYTES;

/**
 * The HTTP/2 receive window we grant each stream (the default is 64 KiB).
 * A server answers blob reads in messages of up to 1 MiB; with 64 KiB it
 * had to wait for a WINDOW_UPDATE every 64 KiB. Measured, a mount reading
 * 1 GiB chunk by chunk from a daemon: 118-120 -> 152 MB/s, and a fifth less
 * CPU on both sides (4 MiB gained nothing more). It also bounds what a
 * stream buffers that nobody has read yet.
 */
const FLOW_CONTROL_WINDOW = 1024 * 1024;

/** How long `wait-connect=1` waits for a connection before failing. */
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * Channel options for an endpoint with the given timeout. While calls are
 * open, the connection is pinged every half timeout (at most every 10 s);
 * a ping unanswered for half the timeout drops the connection and fails
 * its calls with UNAVAILABLE. That bounds how long a stream can hang on a
 * stopped peer without cutting off long transfers that make progress.
 */
function channelOptions(timeoutMs: number): grpc.ChannelOptions {
  return {
    "grpc.max_receive_message_length": MAX_RECEIVE_MESSAGE_LENGTH,
    "grpc.max_send_message_length": -1,
    // We share channels ourselves; a channel-local pool lets close() end the
    // connection at once instead of grpc-js keeping it for later reuse.
    "grpc.use_local_subchannel_pool": 1,
    "grpc-node.flow_control_window": FLOW_CONTROL_WINDOW,
    "grpc.keepalive_time_ms": Math.min(10_000, Math.ceil(timeoutMs / 2)),
    "grpc.keepalive_timeout_ms": Math.ceil(timeoutMs / 2),
  };
}

interface Shared {
  channel: grpc.Channel;
  refs: number;
}

const shared = new Map<string, Shared>();

/**
 * A reference to a shared channel. Each backend holds one and calls
 * `release()` from its `close()`; the channel closes with the last one.
 */
export interface ChannelLease {
  /** The channel; pass it to a grpc-js client as `channelOverride`. */
  readonly channel: grpc.Channel;
  /** The parsed URL. */
  readonly endpoint: GrpcEndpoint;
  /** Drops this reference (idempotent). */
  release(): void;
}

/** The constructor of a generated grpc-js service client (as ts-proto emits it). */
export interface GeneratedClient<C> {
  new (
    address: string,
    credentials: grpc.ChannelCredentials,
    options?: Partial<grpc.ClientOptions>,
  ): C;
  service: grpc.ServiceDefinition;
  serviceName: string;
}

type ClientConstructor<C> = new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: Partial<grpc.ClientOptions>,
) => C;

const plainBytesClients = new WeakMap<object, ClientConstructor<unknown>>();

/**
 * Adapts a generated client to how we use it, without copying anything:
 *
 * - grpc-js hands responses over as Node `Buffer`s, and the decoder returns
 *   `bytes` fields as sub-views of its input, so every digest and blob piece
 *   would be a `Buffer`. Decoding from a plain `Uint8Array` view of the same
 *   memory gives the `Uint8Array`s the rest of the code, and deep equality,
 *   expect.
 * - A request may be passed already encoded (a `Uint8Array`; no request
 *   message is one). grpc-js serialises a streamed message only when it
 *   gets to send it, possibly after the caller's buffer was reused;
 *   {@linkcode ClientUpload} therefore encodes eagerly, which is also one
 *   copy instead of three.
 */
function plainBytesClient<C>(generated: GeneratedClient<C>): ClientConstructor<C> {
  let ctor = plainBytesClients.get(generated);
  if (!ctor) {
    const methods: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
    for (const [name, method] of Object.entries(generated.service)) {
      methods[name] = {
        ...method,
        requestSerialize: (value: unknown) =>
          value instanceof Uint8Array
            ? Buffer.from(value.buffer, value.byteOffset, value.byteLength)
            : method.requestSerialize(value),
        responseDeserialize: (buf: Uint8Array) =>
          method.responseDeserialize(
            new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength) as never,
          ),
      };
    }
    ctor = grpc.makeGenericClientConstructor(methods, generated.serviceName) as ClientConstructor<
      unknown
    >;
    plainBytesClients.set(generated, ctor);
  }
  return ctor as ClientConstructor<C>;
}

/**
 * A service client of the generated kind that runs its calls on the leased
 * channel. Unary calls (but CalculateNAR and PathInfo Put) get the
 * endpoint's deadline; streams may run as
 * long as they make progress, and a peer that stops answering ends them
 * through the channel's keepalive pings (see {@linkcode channelOptions}).
 */
export function clientOn<C>(lease: ChannelLease, generated: GeneratedClient<C>): C {
  const Ctor = plainBytesClient(generated);
  const timeoutMs = lease.endpoint.timeoutMs;
  const deadline: grpc.Interceptor = (options, nextCall) => {
    const m = options.method_definition;
    // CalculateNAR renders a whole path on the server and a PathInfo put
    // first flushes the server's filesystem: both may rightly take minutes,
    // and a hung server is still caught by the keepalive pings.
    const unary = !m.requestStream && !m.responseStream &&
      !m.path.endsWith("/CalculateNAR") && m.path !== "/tvix.store.v1.PathInfoService/Put";
    return new grpc.InterceptingCall(
      nextCall(
        unary && !options.deadline ? { ...options, deadline: Date.now() + timeoutMs } : options,
      ),
    );
  };
  // The credentials are those of the shared channel; these are ignored.
  return new Ctor(lease.endpoint.target, grpc.credentials.createInsecure(), {
    channelOverride: lease.channel,
    interceptors: [deadline],
  });
}

/**
 * Leases the channel for `url`'s endpoint, creating it if none is open.
 * Blob, directory and path info backends pointing at one daemon share one
 * connection. With `wait-connect=1`, resolves only once connected and
 * throws a `StorageError` if the endpoint is unreachable.
 */
export async function channelFor(url: string): Promise<ChannelLease> {
  const endpoint = parseGrpcUrl(url);
  const key = `${endpoint.tls ? "tls" : "h2c"} ${endpoint.target} ${endpoint.timeoutMs}`;
  let entry = shared.get(key);
  if (!entry) {
    routeGrpcLogs();
    const creds = endpoint.tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure();
    const options = channelOptions(endpoint.timeoutMs);
    entry = { channel: new grpc.Channel(endpoint.target, creds, options), refs: 0 };
    shared.set(key, entry);
  }
  entry.refs++;
  const held = entry;
  let released = false;
  const lease: ChannelLease = {
    channel: held.channel,
    endpoint,
    release() {
      if (released) return;
      released = true;
      if (--held.refs === 0) {
        if (shared.get(key) === held) shared.delete(key);
        held.channel.close();
      }
    },
  };
  if (endpoint.waitConnect) {
    try {
      await waitReady(held.channel);
    } catch (err) {
      lease.release();
      throw new UnavailableError(`unable to connect to ${url}: ${errorMessage(err)}`);
    }
  }
  return lease;
}

/** Connects `channel` now; rejects on the first failure or after the timeout. */
function waitReady(channel: grpc.Channel): Promise<void> {
  const deadline = Date.now() + CONNECT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const check = () => {
      const state = channel.getConnectivityState(true);
      if (state === grpc.connectivityState.READY) return resolve();
      if (state === grpc.connectivityState.TRANSIENT_FAILURE) {
        return reject(new Error("connection failed"));
      }
      if (state === grpc.connectivityState.SHUTDOWN) return reject(new Error("channel closed"));
      channel.watchConnectivityState(state, deadline, (err) => {
        if (err) reject(new Error("timed out"));
        else check();
      });
    };
    check();
  });
}

/** Whether a call failed with NOT_FOUND, which backends report as absence. */
export function isNotFound(err: unknown): boolean {
  return (err as grpc.ServiceError | undefined)?.code === grpc.status.NOT_FOUND;
}

/**
 * Converts a failed call into the castore error model: INVALID_ARGUMENT
 * stays the caller's fault (so a daemon proxying to another daemon keeps
 * returning INVALID_ARGUMENT), UNAVAILABLE and DEADLINE_EXCEEDED (the
 * server is down, unreachable or too slow: a retry may work) are an
 * `UnavailableError`, everything else is an {@linkcode UpstreamError}
 * carrying the status name and text. NOT_FOUND is handled by callers as
 * absence.
 */
export function callError(err: unknown): Error {
  const e = err as Partial<grpc.ServiceError> | undefined;
  if (typeof e?.code !== "number") {
    return err instanceof Error ? err : new StorageError(String(err));
  }
  const text = `${grpc.status[e.code] ?? e.code}: ${e.details ?? e.message ?? ""}`;
  if (e.code === grpc.status.INVALID_ARGUMENT) return new InvalidRequestError(text);
  if (e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED) {
    return new UnavailableError(text);
  }
  return new UpstreamError(text);
}

/** Runs a unary call; resolves `undefined` on NOT_FOUND, rejects with {@linkcode callError}. */
export function unary<Res>(
  start: (cb: (err: grpc.ServiceError | null, res: Res) => void) => unknown,
): Promise<Res | undefined> {
  return new Promise((resolve, reject) => {
    start((err, res) => {
      if (!err) resolve(res);
      else if (isNotFound(err)) resolve(undefined);
      else reject(callError(err));
    });
  });
}

/**
 * Iterates a server-streaming call. Consuming through the async iterator
 * honours backpressure (grpc-js reads the next message only when asked);
 * leaving the loop early cancels the call. NOT_FOUND ends the stream
 * quietly when `notFoundIsEmpty`, other failures throw `mapError` of them
 * (default {@linkcode callError}).
 */
export async function* serverStream<T>(
  call: grpc.ClientReadableStream<T>,
  notFoundIsEmpty = false,
  mapError: (err: unknown) => unknown = callError,
): AsyncGenerator<T> {
  let done = false;
  try {
    for await (const message of call) yield message as T;
    done = true;
  } catch (err) {
    done = true;
    if (notFoundIsEmpty && isNotFound(err)) return;
    throw mapError(err);
  } finally {
    if (!done) cancelQuietly(call);
  }
}

/**
 * Cancels a call nobody reads any more. grpc-js reports the cancellation
 * as an 'error' event, which must not go unheard once the reader is gone.
 */
export function cancelQuietly(
  call: { on(event: "error", f: () => void): unknown; cancel(): void },
): void {
  call.on("error", () => {});
  call.cancel();
}

/**
 * Messages a {@linkcode ClientUpload} lets grpc-js hold before `write`
 * waits. Four 1 MiB messages keep the connection as busy as sixteen (the
 * Writable's own limit) did in `scripts/bench_grpc.ts`, with less memory.
 */
const MAX_IN_FLIGHT = 4;

/**
 * A client-streaming call driven with backpressure. Messages are passed
 * encoded, so the caller's data is copied before {@linkcode write}
 * returns; `write` resolves at once while fewer than
 * {@linkcode MAX_IN_FLIGHT} messages wait to go out, and otherwise once the
 * oldest of them has been handed to HTTP/2, so a fast producer never queues
 * more than a few messages. The first failure is kept and rethrown by every
 * later operation.
 */
export class ClientUpload<Res> {
  readonly #call: grpc.ClientWritableStream<unknown>;
  readonly #response: Promise<Res>;
  /** Settles (never rejects) when the call has finished either way. */
  readonly #settled: Promise<void>;
  #failure: Error | undefined;
  #ended = false;
  readonly #inFlight: Promise<void>[] = [];

  /** Starts the call; `start` is e.g. `(cb) => client.put(cb)` on a {@linkcode clientOn} client. */
  constructor(
    start: (
      cb: (err: grpc.ServiceError | null, res: Res) => void,
    ) => grpc.ClientWritableStream<never>,
  ) {
    const { promise, resolve, reject } = Promise.withResolvers<Res>();
    this.#response = promise;
    // Failures surface through write/finish; keep an early one from being
    // reported as unhandled.
    this.#settled = promise.then(() => {}, () => {});
    this.#call = start((err, res) => {
      if (!err) return resolve(res);
      this.#failure = callError(err);
      reject(this.#failure);
    }) as grpc.ClientWritableStream<unknown>;
    // The outcome, errors included, arrives through the callback above; a
    // stream 'error' without a listener would be thrown as uncaught.
    this.#call.on("error", () => {});
  }

  /** The call's failure, once it has failed. */
  get failure(): Error | undefined {
    return this.#failure;
  }

  /**
   * Sends one encoded message, which must not change afterwards (encoders
   * return fresh buffers); resolves when grpc-js can take the next.
   */
  async write(encoded: Uint8Array): Promise<void> {
    if (this.#failure) throw this.#failure;
    if (this.#ended) throw new InvalidRequestError("stream already closed");
    this.#inFlight.push(new Promise((resolve) => this.#call.write(encoded, () => resolve())));
    if (this.#inFlight.length > MAX_IN_FLIGHT) {
      // A call that ends early may never report its queued writes.
      await Promise.race([this.#inFlight.shift(), this.#settled]);
    }
    if (this.#failure) throw this.#failure;
  }

  /** Half-closes the stream and returns the response. */
  finish(): Promise<Res> {
    if (!this.#ended) {
      this.#ended = true;
      this.#call.end();
    }
    return this.#response;
  }

  /** Cancels the call (the server sees CANCELLED and keeps nothing). */
  cancel(): void {
    this.#ended = true;
    this.#call.cancel();
  }
}
