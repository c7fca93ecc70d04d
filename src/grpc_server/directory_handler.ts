/**
 * The `tvix.castore.v1.DirectoryService` server over a
 * {@linkcode DirectoryService} backend (docs/compatibility.md#directory-service).
 *
 * @module
 */
import type {
  DirectoryServiceServer,
  GetDirectoryRequest,
  PutDirectoryResponse,
} from "../proto/tvix/castore/protos/rpc_directory.ts";
import { Directory } from "../proto/tvix/castore/protos/castore.ts";
import type { DirectoryService } from "../castore/directory/service.ts";
import { ClosureError, UploadClosure } from "../castore/directory/closure.ts";
import { B3_LEN, b3Display } from "../castore/digest.ts";
import { InvalidRequestError } from "../errors.ts";
import { clientStreamHandler, receiveAll, serverStreamHandler } from "../grpc/server_call.ts";
import { Code, internalStatus, RpcError, type RpcStatus, statusFromError } from "../grpc/status.ts";
import { MAX_DIRECTORY_MESSAGE_BYTES } from "../grpc/channel.ts";

/**
 * A directory must fit in one message of at most
 * {@linkcode MAX_DIRECTORY_MESSAGE_BYTES}, or it could be stored but never
 * served back to our clients. The limit is well above the 4 MiB of every
 * other message, so that directories Nix accepts fit
 * (docs/compatibility.md#message-size-limits).
 */
function checkServable(directory: Directory, what: string): number {
  const size = Directory.encode(directory).finish().length;
  if (size > MAX_DIRECTORY_MESSAGE_BYTES) {
    throw new RpcError(
      what === "received" ? Code.INVALID_ARGUMENT : Code.RESOURCE_EXHAUSTED,
      `${what} directory is ${size} bytes, more than the ${MAX_DIRECTORY_MESSAGE_BYTES}-byte message limit`,
    );
  }
  return size;
}

/**
 * Directory Put statuses: closure errors are INTERNAL with their text as in
 * the reference, except a child digest of the wrong length, which is the
 * caller's malformed request (INVALID_ARGUMENT; the reference panics, see
 * docs/compatibility.md#q8-short-child-digests-crash-directory-put).
 * Backend errors follow the generic mapping.
 */
function putStatus(err: unknown): RpcStatus {
  if (err instanceof ClosureError) {
    const code = err.kind === "InvalidDigest" ? Code.INVALID_ARGUMENT : Code.INTERNAL;
    return { code, details: err.message };
  }
  return statusFromError(err);
}

/**
 * Default bound of the directories one `Put` stream may upload, in
 * encoded bytes: the whole closure is held (and validated) before any of it
 * is stored, so without a bound one client could fill the daemon's memory.
 * Closures of real store paths are far smaller (tens of MiB for trees of
 * hundreds of thousands of files).
 */
export const DEFAULT_MAX_CLOSURE_BYTES = 256 * 1024 * 1024;

/** Options of {@linkcode directoryHandler}. */
export interface DirectoryHandlerOptions {
  /** Bound of one `Put` stream's directories (default {@linkcode DEFAULT_MAX_CLOSURE_BYTES}). */
  maxClosureBytes?: number;
}

/** Builds the DirectoryService handlers. */
export function directoryHandler(
  directories: DirectoryService,
  opts: DirectoryHandlerOptions = {},
): DirectoryServiceServer {
  const maxClosure = opts.maxClosureBytes ?? DEFAULT_MAX_CLOSURE_BYTES;
  return {
    get: serverStreamHandler<GetDirectoryRequest, Directory>(
      "DirectoryService/Get",
      async (req, send) => {
        if (req.byWhat?.$case !== "digest") {
          throw new RpcError(Code.INVALID_ARGUMENT, "invalid by_what");
        }
        const digest = req.byWhat.value;
        if (digest.length !== B3_LEN) {
          throw new RpcError(Code.INVALID_ARGUMENT, "invalid digest length");
        }
        if (!req.recursive) {
          const directory = await directories.get(digest);
          if (!directory) {
            throw new RpcError(Code.NOT_FOUND, `directory ${b3Display(digest)} not found`);
          }
          checkServable(directory, "stored");
          await send(directory);
          return;
        }
        // A missing root is an empty OK stream on every backend
        // (docs/compatibility.md#q6-recursive-directory-get-of-a-missing-root).
        for await (const directory of directories.getRecursive(digest)) {
          checkServable(directory, "stored");
          if (!await send(directory)) return;
        }
      },
      internalStatus,
    ),

    put: clientStreamHandler<Directory, PutDirectoryResponse>(
      "DirectoryService/Put",
      async (call) => {
        // Validate the whole closure before anything reaches the backend, so
        // a rejected or cancelled upload stores nothing.
        const closure = new UploadClosure();
        let bytes = 0;
        for await (const directory of receiveAll(call)) {
          bytes += checkServable(directory, "received");
          if (bytes > maxClosure) {
            throw new RpcError(
              Code.RESOURCE_EXHAUSTED,
              `the uploaded directories exceed the ${maxClosure}-byte limit of one Put ` +
                "(--max-directory-closure-size)",
            );
          }
          closure.add(directory);
        }
        const complete = closure.finalize();
        if (!complete) throw new InvalidRequestError("got no directories");
        const putter = directories.putMultiple();
        for (const directory of complete.leavesToRoot) await putter.put(directory);
        return { rootDigest: await putter.close() };
      },
      putStatus,
    ),
  };
}
