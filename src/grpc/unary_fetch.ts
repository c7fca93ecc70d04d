/**
 * One unary gRPC call through `fetch`, over cleartext HTTP/2 with prior
 * knowledge, for a command whose whole job may be a single question: an
 * unchanged re-import asks the daemon once whether it holds a path, and
 * loading grpc-js and opening its channel cost more than the rest of that
 * command (docs/architecture.md#re-imports-the-stat-cache).
 *
 * `fetch` does not show HTTP trailers. A reply without a message carries
 * its status in the headers (a trailers-only reply) and is seen in full;
 * the status that follows a message is not, so such a reply is returned as
 * a message whose final status is unknown. Callers use this only where a
 * wrong guess costs time, never correctness.
 *
 * @module
 */
import { errorMessage, StorageError } from "../errors.ts";

/** What a unary call over `fetch` answered. */
export type FetchedReply =
  /** A reply without a message: its gRPC status code and message. */
  | { kind: "status"; code: number; details: string }
  /** One message; the status after it is not visible to `fetch`. */
  | { kind: "message"; message: Uint8Array };

/** How long the call may take, connection included, by default (ms). */
export const FETCH_CALL_TIMEOUT_MS = 5000;

/**
 * Calls `method` (`/package.Service/Method`) at `origin` (`http://host:port`)
 * with the encoded `request`. Throws a {@linkcode StorageError} when the
 * server cannot be reached in time or does not answer as a gRPC server.
 */
export async function unaryOverFetch(
  origin: string,
  method: string,
  request: Uint8Array,
  timeoutMs = FETCH_CALL_TIMEOUT_MS,
): Promise<FetchedReply> {
  const body = new Uint8Array(5 + request.length);
  new DataView(body.buffer).setUint32(1, request.length);
  body.set(request, 5);
  using client = Deno.createHttpClient({ http1: false, http2: true });
  let response: Response;
  let reply: Uint8Array;
  try {
    response = await fetch(`${origin}${method}`, {
      method: "POST",
      headers: { "content-type": "application/grpc", te: "trailers" },
      body,
      client,
      signal: AbortSignal.timeout(timeoutMs),
    });
    reply = new Uint8Array(await response.arrayBuffer());
  } catch (err) {
    throw new StorageError(`${origin}${method}: ${errorMessage(err)}`);
  }
  const type = response.headers.get("content-type") ?? "";
  if (response.status !== 200 || !type.startsWith("application/grpc")) {
    throw new StorageError(`${origin}${method}: not a gRPC reply (HTTP ${response.status})`);
  }
  const status = response.headers.get("grpc-status");
  if (status !== null && reply.length === 0) {
    const details = decodeURIComponent(response.headers.get("grpc-message") ?? "");
    return { kind: "status", code: Number(status), details };
  }
  // Exactly one uncompressed, length-prefixed message.
  const view = new DataView(reply.buffer, reply.byteOffset, reply.byteLength);
  if (reply.length < 5 || reply[0] !== 0 || view.getUint32(1) !== reply.length - 5) {
    throw new StorageError(`${origin}${method}: malformed gRPC reply`);
  }
  return { kind: "message", message: reply.subarray(5) };
}
