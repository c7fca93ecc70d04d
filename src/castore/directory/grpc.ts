/**
 * DirectoryService backed by a remote `tvix.castore.v1.DirectoryService`
 * over gRPC (`grpc+unix://…`, `grpc+http://…`, `grpc+https://…`).
 *
 * Everything received is checked before it is returned: a single directory
 * against the requested digest, a closure root-to-leaves
 * (docs/compatibility.md#directory-closures, with upstream's
 * docs/compatibility.md#q7-grpc-directory-client-reports-false-premature-ends
 * fixed). Uploads are validated here too, leaves-to-root, so an
 * invalid closure fails at the directory that breaks it and the server is
 * never asked to store it.
 *
 * @module
 */
import {
  DirectoryServiceClient,
  type PutDirectoryResponse,
} from "../../proto/tvix/castore/protos/rpc_directory.ts";
import { B3_LEN, b3Display, blake3, bytesEqual, type Digest } from "../digest.ts";
import {
  type Directory,
  directoryDigest,
  encodeDirectory,
  validateDirectory,
} from "../directory.ts";
import { errorMessage, InvalidRequestError, StorageError } from "../../errors.ts";
import {
  channelFor,
  type ChannelLease,
  clientOn,
  ClientUpload,
  MAX_DIRECTORY_MESSAGE_BYTES,
  serverStream,
} from "../../grpc/channel.ts";
import { checkStored, ClosureError, DownloadValidator, UploadClosure } from "./closure.ts";
import type { DirectoryPutter, DirectoryService } from "./service.ts";

/** A DirectoryService that forwards every operation to a gRPC server. */
export class GrpcDirectoryService implements DirectoryService {
  /** Every call is a round trip to the server. */
  readonly remote = true;
  readonly #lease: ChannelLease;
  readonly #client: DirectoryServiceClient;

  /** Wraps a leased channel; prefer {@linkcode GrpcDirectoryService.fromUrl}. */
  constructor(lease: ChannelLease) {
    this.#lease = lease;
    this.#client = clientOn(lease, DirectoryServiceClient);
  }

  /** Connects to the server named by a `grpc+…` URL (docs/architecture.md#service-urls). */
  static async fromUrl(url: string): Promise<GrpcDirectoryService> {
    return new GrpcDirectoryService(await channelFor(url));
  }

  /**
   * Non-recursive `Get`. NOT_FOUND or an empty stream mean absent; a
   * directory with another digest, or an invalid one, is a `StorageError`.
   */
  async get(digest: Digest): Promise<Directory | undefined> {
    const call = this.#client.get({ byWhat: { $case: "digest", value: digest }, recursive: false });
    for await (const directory of serverStream(call, true)) {
      checkStored(digest, directory);
      return directory; // leaving the loop cancels the rest of the call
    }
    return undefined;
  }

  /**
   * Recursive `Get`, each directory checked root-to-leaves before it is
   * yielded and repeats skipped. An empty stream (or NOT_FOUND) yields
   * nothing; a stream that ends with referenced directories missing throws.
   */
  async *getRecursive(digest: Digest): AsyncGenerator<Directory> {
    const call = this.#client.get({ byWhat: { $case: "digest", value: digest }, recursive: true });
    const validator = new DownloadValidator(digest);
    try {
      for await (const directory of serverStream(call, true)) {
        if (validator.add(directory)) yield directory;
      }
      validator.finish();
    } catch (err) {
      if (err instanceof ClosureError) {
        throw new StorageError(
          `invalid closure of ${b3Display(digest)} from server: ${err.message}`,
        );
      }
      throw err;
    }
  }

  /**
   * Sends one directory in its own `Put` stream. As on the reference
   * server, a directory that references others is rejected: upload closures
   * with {@linkcode putMultiple}.
   */
  async put(directory: Directory): Promise<Digest> {
    try {
      validateDirectory(directory);
    } catch (err) {
      throw new InvalidRequestError(`directory failed validation: ${errorMessage(err)}`);
    }
    const encoded = encodeSendable(directory);
    const upload = new ClientUpload<PutDirectoryResponse>((cb) => this.#client.put(cb));
    await upload.write(encoded);
    return checkRoot(await upload.finish(), directoryDigest(directory));
  }

  /** One `Put` stream for a whole closure, leaves first; see {@linkcode GrpcDirectoryPutter}. */
  putMultiple(): DirectoryPutter {
    return new GrpcDirectoryPutter(this.#client);
  }

  /** Releases this backend's hold on the shared channel. */
  close(): Promise<void> {
    this.#lease.release();
    return Promise.resolve();
  }
}

/**
 * Streams a closure to the server as it is put. Each directory is first
 * checked here with the server's own rules (leaves-to-root order, validity,
 * child sizes), so `put` throws a `ClosureError` at the offending
 * directory; any failure cancels the call and nothing is stored.
 */
export class GrpcDirectoryPutter implements DirectoryPutter {
  readonly #client: DirectoryServiceClient;
  readonly #closure = new UploadClosure();
  #upload: ClientUpload<PutDirectoryResponse> | undefined;
  #closed: Promise<Digest> | undefined;
  #failure: Error | undefined;

  /** The call starts with the first directory. */
  constructor(client: DirectoryServiceClient) {
    this.#client = client;
  }

  /** Checks `directory` against what was put before and sends it. */
  async put(directory: Directory): Promise<void> {
    if (this.#closed) throw new InvalidRequestError("directory putter already closed");
    if (this.#failure) throw this.#failure;
    try {
      this.#closure.add(directory);
      // Encoded now: what was validated is what is sent.
      const encoded = encodeSendable(directory);
      this.#upload ??= new ClientUpload((cb) => this.#client.put(cb));
      await this.#upload.write(encoded);
    } catch (err) {
      this.#fail(err as Error);
      throw err;
    }
  }

  /** Checks the closure has one root, ends the stream, returns the root digest. */
  close(): Promise<Digest> {
    this.#closed ??= this.#finish();
    return this.#closed;
  }

  async #finish(): Promise<Digest> {
    if (this.#failure) throw this.#failure;
    let closure;
    try {
      closure = this.#closure.finalize();
    } catch (err) {
      this.#fail(err as Error);
      throw err;
    }
    if (!closure || !this.#upload) throw new InvalidRequestError("got no directories");
    return checkRoot(await this.#upload.finish(), closure.rootDigest);
  }

  #fail(err: Error): void {
    this.#failure ??= err;
    this.#upload?.cancel();
  }
}

/**
 * A directory's encoding, if it fits in one message
 * (docs/compatibility.md#message-size-limits); a larger one is refused
 * here rather than by the server.
 */
function encodeSendable(directory: Directory): Uint8Array {
  const encoded = encodeDirectory(directory);
  if (encoded.length > MAX_DIRECTORY_MESSAGE_BYTES) {
    throw new InvalidRequestError(
      `directory ${b3Display(blake3(encoded))} is ${encoded.length} bytes, more than ` +
        `the ${MAX_DIRECTORY_MESSAGE_BYTES}-byte message limit`,
    );
  }
  return encoded;
}

/** The server's root digest must be the one we computed. */
function checkRoot(res: PutDirectoryResponse, expected: Digest): Digest {
  if (res.rootDigest.length !== B3_LEN || !bytesEqual(res.rootDigest, expected)) {
    throw new StorageError(
      `server returned root digest ${b3Display(res.rootDigest)}, expected ${b3Display(expected)}`,
    );
  }
  return res.rootDigest;
}
