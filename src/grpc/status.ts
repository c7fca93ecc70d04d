/**
 * Turning errors into gRPC statuses (docs/compatibility.md#status-codes).
 *
 * Handlers throw {@linkcode RpcError} where the wire contract names an exact
 * status; everything else goes through {@linkcode statusFromError}, the
 * generic castore mapping (`InvalidRequestError` → INVALID_ARGUMENT,
 * `StorageError` → DATA_LOSS "storage error: …"). Some RPCs report backend
 * errors as INTERNAL with the error's display text instead; they use
 * {@linkcode internalStatus}.
 *
 * @module
 */
import { status as Code } from "@grpc/grpc-js";
import { errorMessage, InvalidRequestError, StorageError, UnavailableError } from "../errors.ts";
import { log } from "../log.ts";

export { Code };

/** A gRPC status and its message, as grpc-js callbacks and `emit("error")` accept it. */
export interface RpcStatus {
  code: Code;
  details: string;
}

/** An error that carries the exact gRPC status to answer with. */
export class RpcError extends Error {
  override name = "RpcError";
  constructor(readonly code: Code, details: string) {
    super(details);
  }

  /** The status to send. */
  get status(): RpcStatus {
    return { code: this.code, details: this.message };
  }
}

/**
 * The generic mapping (docs/compatibility.md#status-codes): an
 * {@linkcode RpcError} keeps its status,
 * `InvalidRequestError` → INVALID_ARGUMENT with its message,
 * `UnavailableError` → UNAVAILABLE (the client may retry), `StorageError`
 * → DATA_LOSS "storage error: <msg>", anything else (a bug, an unexpected
 * exception) → INTERNAL with its message.
 */
export function statusFromError(err: unknown): RpcStatus {
  if (err instanceof RpcError) return err.status;
  if (err instanceof InvalidRequestError) {
    return { code: Code.INVALID_ARGUMENT, details: err.message };
  }
  if (err instanceof UnavailableError) {
    return { code: Code.UNAVAILABLE, details: `storage unavailable: ${err.message}` };
  }
  if (err instanceof StorageError) {
    return { code: Code.DATA_LOSS, details: `storage error: ${err.message}` };
  }
  return { code: Code.INTERNAL, details: errorMessage(err) };
}

/**
 * An error's display text as the reference prints it: "invalid request: …"
 * or "internal storage error: …" for the two castore kinds, the bare message
 * otherwise.
 */
export function errorDisplay(err: unknown): string {
  if (err instanceof InvalidRequestError) return `invalid request: ${err.message}`;
  if (err instanceof StorageError) return `internal storage error: ${err.message}`;
  return errorMessage(err);
}

/**
 * INTERNAL with the error's display text, for the RPCs whose backend errors
 * the contract reports that way (Directory Get, PathInfo List); an
 * {@linkcode RpcError} keeps its own status, and an unreachable backend
 * is UNAVAILABLE there too, so clients know to retry.
 */
export function internalStatus(err: unknown): RpcStatus {
  if (err instanceof RpcError) return err.status;
  if (err instanceof UnavailableError) return statusFromError(err);
  return { code: Code.INTERNAL, details: errorDisplay(err) };
}

/**
 * Logs a failed call: server-side failures (INTERNAL, DATA_LOSS, UNKNOWN
 * not caused by the request) at WARN since an operator should see them,
 * the caller's mistakes at DEBUG. `err` is what the handler threw.
 */
export function logFailure(method: string, status: RpcStatus, err?: unknown): void {
  const serverSide = (status.code === Code.INTERNAL || status.code === Code.DATA_LOSS ||
    status.code === Code.UNKNOWN) && !(err instanceof InvalidRequestError);
  const fields = { method, code: Code[status.code], details: status.details };
  if (serverSide) log.warn("call failed", fields);
  else log.debug("call failed", fields);
}

/**
 * The largest message the server sends: what the reference's clients accept
 * (docs/compatibility.md#message-size-limits).
 */
export const MAX_RESPONSE_MESSAGE_BYTES = 4 * 1024 * 1024;
