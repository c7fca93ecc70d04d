/**
 * The HTTP/1.1 front of the nar-bridge: node:http plus the limits a server
 * facing arbitrary clients needs and Deno's node:http leaves out.
 *
 * Deno 2.9's node:http parses requests strictly (oversized or malformed
 * headers fail), answers `Expect: 100-continue` itself and honours
 * `maxConnections`, but ignores `headersTimeout`, `requestTimeout` and
 * `keepAliveTimeout` (tested: slow and idle connections stay open), and
 * emits no `drop` event, so a refusal could not even be logged. This module
 * therefore keeps its own per-connection state:
 *
 * - a header deadline, armed when a connection opens and again whenever it
 *   has no request in progress: a client that does not complete a request's
 *   headers in time (a slow sender, or an idle keep-alive connection) is
 *   disconnected;
 * - a connection count: connections beyond the limit are closed as soon as
 *   they are accepted;
 * - a stall timer on bodies: an upload that sends nothing for the body
 *   timeout fails with {@linkcode BodyStalled} (the handler answers 408 on a
 *   connection that then closes), and a download whose client takes
 *   nothing for that long is cut.
 *
 * Response bodies are async generators, pulled while less than
 * {@linkcode SEND_QUEUE_BYTES} wait for the socket (rendering overlaps
 * sending). When the
 * client goes away the generator is ended with `return()` at once, so the
 * NAR renderer and its blob readers are released; that is logged at debug
 * level, since hanging up is what clients do.
 *
 * Chosen over `Deno.serve`, which has no header timeout and no access to
 * connections; a 320 MiB NAR streams within a few percent of the same
 * speed through both.
 *
 * @module
 */
import http from "node:http";
import type { Socket } from "node:net";
import { releaseWhole } from "../castore/blob/chunk_codec.ts";
import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";

/** Limits on what one client can hold. */
export interface HttpLimits {
  /**
   * Longest a client may take to send a request's headers, counted from the
   * connection's start or the end of its previous response (so also how long
   * an idle keep-alive connection stays open).
   */
  headerTimeoutMs: number;
  /** Longest an upload may send nothing, or a download's client take nothing. */
  bodyTimeoutMs: number;
  /** Connections open at once; further ones are closed when accepted. */
  maxConnections: number;
}

/** The limits used unless configured otherwise. */
export const DEFAULT_HTTP_LIMITS: Readonly<HttpLimits> = {
  headerTimeoutMs: 30_000,
  bodyTimeoutMs: 30_000,
  maxConnections: 512,
};

/** `partial` with its unset (or undefined) fields taken from {@linkcode DEFAULT_HTTP_LIMITS}. */
export function resolveLimits(partial: Partial<HttpLimits> = {}): HttpLimits {
  return {
    headerTimeoutMs: partial.headerTimeoutMs ?? DEFAULT_HTTP_LIMITS.headerTimeoutMs,
    bodyTimeoutMs: partial.bodyTimeoutMs ?? DEFAULT_HTTP_LIMITS.bodyTimeoutMs,
    maxConnections: partial.maxConnections ?? DEFAULT_HTTP_LIMITS.maxConnections,
  };
}

/** A request as handlers see it. */
export interface HttpRequest {
  method: string;
  /** The URL's path, not percent-decoded. */
  path: string;
  /** A request header (lower-case name), if present. */
  header(name: string): string | undefined;
  /**
   * The body. Iterating fails with {@linkcode BodyStalled} when the client
   * stops sending and {@linkcode ClientGone} when it disconnects.
   */
  body: AsyncIterable<Uint8Array>;
}

/** A response a handler returns. */
export interface HttpResponse {
  status: number;
  headers: Record<string, string>;
  /** Nothing (HEAD, empty bodies), all bytes, or pieces rendered as the client reads. */
  body?: Uint8Array | AsyncGenerator<Uint8Array>;
  /**
   * The body's pieces are handed over (no one else refers to their
   * buffers): a buffer that a piece spans whole is freed as soon as the
   * socket has taken it. A NAR passes every byte through such buffers, and
   * left to the collector they piled up: a 256 MiB download raised the
   * bridge's resident memory by ~270 MiB, with this by ~16 MiB.
   */
  piecesOwned?: boolean;
}

/** Answers one request; must not throw. */
export type HttpHandler = (req: HttpRequest) => Promise<HttpResponse>;

/** The client sent no body bytes for the body timeout. */
export class BodyStalled extends Error {
  override name = "BodyStalled";
}

/** The client disconnected before its request was read. */
export class ClientGone extends Error {
  override name = "ClientGone";
}

/** A listening server. */
export interface HttpServerHandle {
  /** The bound address, `host:port` (`[v6]:port`). */
  address: string;
  /** The bound port. */
  port: number;
  /**
   * Stops accepting, cuts streaming downloads, lets requests being read
   * (uploads) finish (their own timeouts bound them), then closes what is
   * left.
   */
  close(): Promise<void>;
}

/** Per-connection state. */
interface Connection {
  socket: Socket;
  /** Requests received whose responses have not ended. */
  active: number;
  /** Header deadline, while no request is in progress. */
  timer?: ReturnType<typeof setTimeout>;
  /** Cuts the response body being streamed, if any. */
  cut?: () => void;
  /**
   * Settles when the last request received has been answered: the next
   * one (pipelined on the same connection) starts only then.
   */
  previous?: Promise<void>;
  /** Settles when the connection closes. */
  gone: Promise<void>;
}

/**
 * Requests one connection may have pipelined ahead of the one being
 * answered; beyond that it is closed. Each waits for its predecessor's
 * response to end, so a client cannot make the server render many
 * responses at once (and hold them all) over one connection.
 */
const MAX_PIPELINED = 16;

const CLOSED = Symbol("closed");

/** A pipelined request whose connection closed before its turn came. */
class ConnectionGone extends Error {}

/**
 * Bytes a streamed response may have queued for the socket before the
 * renderer waits: enough that the socket rarely runs dry while the next
 * piece renders (waiting for each piece to drain was about 5% slower),
 * small enough that a slow client costs little.
 */
const SEND_QUEUE_BYTES = 1 << 20;

/** Rate limit of the "connection limit reached" warning. */
const LIMIT_WARNING_INTERVAL_MS = 10_000;

function formatHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * The body of `req` as an async iterable whose every wait for data is
 * bounded by `stallMs`. Only waits count: while the consumer is busy (and
 * the socket paused by backpressure) no timer runs.
 */
function requestBody(req: http.IncomingMessage, stallMs: number): AsyncIterable<Uint8Array> {
  return {
    async *[Symbol.asyncIterator]() {
      // Not ended with return(): that would destroy the socket before an
      // error response could be written.
      const it = req[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>;
      while (true) {
        const next = it.next();
        let timer: ReturnType<typeof setTimeout> | undefined;
        const stalled = new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new BodyStalled(`request body stalled for ${stallMs / 1000} s`)),
            stallMs,
          );
        });
        let r: IteratorResult<Uint8Array>;
        try {
          r = await Promise.race([next, stalled]);
        } catch (err) {
          next.catch(() => {}); // settles when the socket closes
          if (err instanceof BodyStalled) throw err;
          throw new ClientGone(`client went away during the upload: ${errorMessage(err)}`);
        } finally {
          clearTimeout(timer);
        }
        if (r.done) return;
        yield r.value;
      }
    },
  };
}

/** Waits until `res` can take more, fails to within `stallMs`, or closes. */
function drained(res: http.ServerResponse, stallMs: number): Promise<"drain" | "stall" | "close"> {
  return new Promise((resolve) => {
    const done = (how: "drain" | "stall" | "close") => {
      clearTimeout(timer);
      res.off("drain", onDrain);
      res.off("close", onClose);
      resolve(how);
    };
    const onDrain = () => done("drain");
    const onClose = () => done("close");
    const timer = setTimeout(() => done("stall"), stallMs);
    res.on("drain", onDrain);
    res.on("close", onClose);
  });
}

/**
 * Writes a streamed body: at most {@linkcode SEND_QUEUE_BYTES} (plus a
 * piece) queued for the socket, one more piece being rendered. Ends the
 * generator as soon as the client is gone. Returns the bytes written.
 */
async function streamBody(
  res: http.ServerResponse,
  gen: AsyncGenerator<Uint8Array>,
  conn: Connection | undefined,
  stallMs: number,
  path: string,
  owned: boolean,
): Promise<number> {
  let onClose!: () => void;
  let written = 0;
  const closed = new Promise<typeof CLOSED>((resolve) => (onClose = () => resolve(CLOSED)));
  res.once("close", onClose);
  if (conn) conn.cut = () => res.destroy();
  let next = gen.next();
  let outcome: "done" | "gone" | "stalled" | "failed" = "gone";
  try {
    while (true) {
      const step = await Promise.race([next, closed]);
      if (step === CLOSED) break;
      if (step.done) {
        outcome = "done";
        res.end();
        break;
      }
      const piece = step.value;
      written += piece.length;
      if (owned) res.write(piece, () => releaseWhole(piece));
      else res.write(piece);
      next = gen.next(); // rendered while the socket writes
      if (res.writableLength >= SEND_QUEUE_BYTES) {
        const how = await drained(res, stallMs);
        if (how === "close") break;
        if (how === "stall") {
          outcome = "stalled";
          res.destroy();
          break;
        }
      }
    }
  } catch (err) {
    if (!res.destroyed) {
      // Headers are out already: all we can do is cut the body short.
      outcome = "failed";
      log.error("nar-bridge: response failed after its headers", {
        path,
        error: errorMessage(err),
      });
      res.destroy();
    }
  } finally {
    res.off("close", onClose);
    if (conn) conn.cut = undefined;
  }
  if (outcome === "done") return written;
  // Releases the renderer and its blob readers (after the piece in progress).
  next.catch(() => {});
  await gen.return(undefined).catch(() => {});
  if (outcome === "gone") log.debug("nar-bridge: client went away, response released", { path });
  if (outcome === "stalled") {
    log.debug("nar-bridge: client stopped reading, response cut and released", { path });
  }
  return written;
}

/** Sends `response` on `res`; returns the body bytes written. */
async function send(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  response: HttpResponse,
  conn: Connection | undefined,
  limits: HttpLimits,
  path: string,
): Promise<number> {
  const headers = { ...response.headers };
  // An error answered before the body was read: the rest of it is not
  // wanted, and reading it just to keep the connection is not worth it.
  if (response.status >= 400 && !req.complete) headers["connection"] = "close";
  res.writeHead(response.status, headers);
  const body = response.body;
  if (body === undefined || body instanceof Uint8Array || req.method === "HEAD") {
    const sent = body instanceof Uint8Array && req.method !== "HEAD" ? body : undefined;
    res.end(sent);
    if (body && !(body instanceof Uint8Array)) await body.return(undefined);
    return sent?.length ?? 0;
  }
  // Headers go out now, so a client sees the response start even if the
  // first piece takes a while (or fails, which then cuts the body).
  res.flushHeaders();
  const owned = response.piecesOwned === true;
  return await streamBody(res, body, conn, limits.bodyTimeoutMs, path, owned);
}

/**
 * Listens on `listen` (an IPv6 host may keep its brackets) and answers
 * every request with `handler`, within `limits`.
 */
export function serveHttp(
  listen: { host: string; port: number },
  handler: HttpHandler,
  limits: HttpLimits = DEFAULT_HTTP_LIMITS,
): Promise<HttpServerHandle> {
  const connections = new Map<Socket, Connection>();
  const inFlight = new Set<Promise<void>>();
  let lastLimitWarning = -Infinity;
  let closing = false;

  const arm = (conn: Connection) => {
    clearTimeout(conn.timer);
    conn.timer = setTimeout(() => {
      log.debug("nar-bridge: no complete request headers in time, closing the connection", {
        remote: conn.socket.remoteAddress,
      });
      conn.socket.destroy();
    }, limits.headerTimeoutMs);
  };

  const server = http.createServer();
  server.on("connection", (socket: Socket) => {
    if (closing || connections.size >= limits.maxConnections) {
      socket.destroy();
      const now = performance.now();
      if (!closing && now - lastLimitWarning > LIMIT_WARNING_INTERVAL_MS) {
        lastLimitWarning = now;
        log.warn("nar-bridge: connection limit reached, closing new connections", {
          maxConnections: limits.maxConnections,
        });
      }
      return;
    }
    let closed!: () => void;
    const conn: Connection = { socket, active: 0, gone: new Promise((r) => (closed = r)) };
    connections.set(socket, conn);
    arm(conn);
    socket.once("close", () => {
      clearTimeout(conn.timer);
      connections.delete(socket);
      closed();
    });
  });

  server.on("clientError", (err: Error & { code?: string }, socket: Socket) => {
    log.debug("nar-bridge: malformed request", { error: err.code ?? errorMessage(err) });
    if (socket.writable && err.code !== "ECONNRESET") {
      const status = err.code === "HPE_HEADER_OVERFLOW"
        ? "431 Request Header Fields Too Large"
        : "400 Bad Request";
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    }
    socket.destroy();
  });

  server.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
    const conn = connections.get(req.socket as Socket);
    if (conn) {
      conn.active++;
      clearTimeout(conn.timer);
      conn.timer = undefined;
      if (conn.active > MAX_PIPELINED + 1) {
        log.debug("nar-bridge: too many pipelined requests, closing the connection", {
          remote: conn.socket.remoteAddress,
        });
        conn.socket.destroy();
      }
    }
    // Writes after the client left fail here; the close event tells the rest.
    res.on("error", (err) => log.debug("nar-bridge: write failed", { error: errorMessage(err) }));
    let answered!: () => void;
    const ended = new Promise<void>((resolve) => (answered = resolve));
    const turn = conn?.previous;
    // A response still queued behind another gets no close event of its
    // own when the connection goes: its successors must not wait on it.
    if (conn) conn.previous = Promise.race([ended, conn.gone]);
    res.once("close", () => {
      answered();
      if (!conn) return;
      conn.active--;
      if (conn.active === 0 && !conn.socket.destroyed) arm(conn);
    });
    let path: string;
    try {
      path = new URL(req.url ?? "/", "http://nar-bridge/").pathname;
    } catch {
      path = "/";
    }
    const request: HttpRequest = {
      method: req.method ?? "GET",
      path,
      header: (name) => {
        const v = req.headers[name];
        return Array.isArray(v) ? v.join(", ") : v;
      },
      body: requestBody(req, limits.bodyTimeoutMs),
    };
    const started = performance.now();
    const task = (turn ?? Promise.resolve())
      .then(() => {
        // The connection went away while this request waited its turn.
        if (res.destroyed || req.socket.destroyed) throw new ConnectionGone();
        return handler(request);
      })
      .then(async (response) => {
        const bytes = await send(req, res, response, conn, limits, path);
        log.debug("nar-bridge request", {
          method: request.method,
          path,
          status: response.status,
          bytes,
          ms: Math.round(performance.now() - started),
        });
      })
      .catch((err) => {
        if (!(err instanceof ConnectionGone)) {
          log.error("nar-bridge: request failed", { path, error: errorMessage(err) });
        }
        res.destroy();
      });
    inFlight.add(task);
    task.finally(() => inFlight.delete(task));
  });

  const host = listen.host.replace(/^\[(.*)\]$/, "$1");
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once("error", onError);
    server.listen({ host, port: listen.port }, () => {
      server.off("error", onError);
      server.on(
        "error",
        (err) => log.error("nar-bridge: server error", { error: errorMessage(err) }),
      );
      const bound = server.address();
      const port = typeof bound === "object" && bound ? bound.port : listen.port;
      const boundHost = typeof bound === "object" && bound ? bound.address : host;
      resolve({
        address: formatHostPort(boundHost, port),
        port,
        close: async () => {
          closing = true;
          const stopped = new Promise<void>((r) => server.close(() => r()));
          for (const conn of connections.values()) {
            if (conn.cut) conn.cut();
            else if (conn.active === 0) conn.socket.destroy();
          }
          await Promise.all(inFlight);
          for (const conn of connections.values()) conn.socket.destroy();
          await stopped;
        },
      });
    });
  });
}
