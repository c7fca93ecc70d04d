/**
 * PathInfoService and NarCalculationService backed by a remote
 * `tvix.store.v1.PathInfoService` over gRPC (`grpc+unix://…`,
 * `grpc+http://…`, `grpc+https://…`). Every PathInfo received is validated
 * (docs/compatibility.md#pathinfo-validation) before it is returned.
 *
 * @module
 */
import {
  type CalculateNARResponse,
  PathInfoServiceClient,
} from "../../proto/tvix/store/protos/rpc_pathinfo.ts";
import { InvalidRequestError, StorageError } from "../../errors.ts";
import { type NodeVariant, renameNode, toNode } from "../../castore/node.ts";
import {
  channelFor,
  type ChannelLease,
  clientOn,
  serverStream,
  unary,
} from "../../grpc/channel.ts";
import { STORE_PATH_DIGEST_LEN } from "../store_path.ts";
import type { PathInfo, PathInfoService } from "./service.ts";
import type { NarCalculationService, NarSummary } from "../../nar/calculation.ts";
import { checkReceivedPathInfo } from "./validate.ts";

/**
 * A PathInfoService that forwards every operation to a gRPC server. It
 * also answers `calculateNar` through the same connection (`CalculateNAR`:
 * the server renders from its own storage), so it is its own
 * {@linkcode PathInfoService.narCalculation}.
 */
export class GrpcPathInfoService implements PathInfoService, NarCalculationService {
  readonly #lease: ChannelLease;
  readonly #client: PathInfoServiceClient;
  /** Every call is a round trip to the server. */
  readonly remote = true;

  /** Wraps a leased channel; prefer {@linkcode GrpcPathInfoService.fromUrl}. */
  constructor(lease: ChannelLease) {
    this.#lease = lease;
    this.#client = clientOn(lease, PathInfoServiceClient);
  }

  /** Connects to the server named by a `grpc+…` URL (docs/architecture.md#service-urls). */
  static async fromUrl(url: string): Promise<GrpcPathInfoService> {
    return new GrpcPathInfoService(await channelFor(url));
  }

  /**
   * `Get` by the 20-byte store path digest; NOT_FOUND is absent. The answer
   * must be valid and describe the store path asked for.
   */
  async get(digest: Uint8Array): Promise<PathInfo | undefined> {
    if (digest.length !== STORE_PATH_DIGEST_LEN) {
      throw new InvalidRequestError("invalid output digest length");
    }
    const info = await unary<PathInfo>((cb) =>
      this.#client.get({ byWhat: { $case: "byOutputHash", value: digest } }, cb)
    );
    if (!info) return undefined;
    checkReceivedPathInfo(info, digest);
    return info;
  }

  /** `Put`; the server validates. Returns the PathInfo as the server stored it. */
  async put(info: PathInfo): Promise<PathInfo> {
    const stored = await unary<PathInfo>((cb) => this.#client.put(info, cb));
    if (!stored) throw new StorageError("server answered NOT_FOUND to a put");
    checkReceivedPathInfo(stored);
    return stored;
  }

  /** `List`, each PathInfo validated as it arrives. */
  async *list(): AsyncGenerator<PathInfo> {
    for await (const info of serverStream(this.#client.list({}))) {
      checkReceivedPathInfo(info);
      yield info;
    }
  }

  /** `CalculateNAR` on the server: NAR size and SHA-256 of `node`, whose name is irrelevant. */
  calculateNar(node: NodeVariant): Promise<NarSummary> {
    return calculateNar(this.#client, node);
  }

  /** The server calculates NARs: this service itself. */
  get narCalculation(): NarCalculationService {
    return this;
  }

  /** Releases this backend's hold on the shared channel. */
  close(): Promise<void> {
    this.#lease.release();
    return Promise.resolve();
  }
}

/**
 * The placeholder name sent with nameless nodes: servers following the
 * reference (docs/compatibility.md#q9-calculatenar-requires-a-valid-root-node-name)
 * reject a root node without a valid name, and the
 * name does not enter the NAR.
 */
const PLACEHOLDER_NAME = new TextEncoder().encode("root");

async function calculateNar(client: PathInfoServiceClient, node: NodeVariant): Promise<NarSummary> {
  const named = node.value.name.length > 0 ? node : renameNode(node, PLACEHOLDER_NAME);
  const res = await unary<CalculateNARResponse>((cb) => client.calculateNar(toNode(named), cb));
  if (!res) throw new StorageError("server answered NOT_FOUND to CalculateNAR");
  if (res.narSha256.length !== 32) {
    throw new StorageError(`server returned a NAR SHA-256 of ${res.narSha256.length} bytes`);
  }
  return { narSize: res.narSize, narSha256: res.narSha256 };
}
