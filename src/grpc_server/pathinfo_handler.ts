/**
 * The `tvix.store.v1.PathInfoService` server
 * (docs/compatibility.md#pathinfo-service) over a
 * {@linkcode PathInfoService} backend and a {@linkcode NarCalculationService}.
 *
 * @module
 */
import type {
  CalculateNARResponse,
  GetPathInfoRequest,
  ListPathInfoRequest,
  PathInfoServiceServer,
} from "../proto/tvix/store/protos/rpc_pathinfo.ts";
import { PathInfo } from "../proto/tvix/store/protos/pathinfo.ts";
import type { Node } from "../proto/tvix/castore/protos/castore.ts";
import type { PathInfoService } from "../store/pathinfo/service.ts";
import type { NarCalculationService } from "../nar/calculation.ts";
import { validateNode } from "../castore/node.ts";
import { errorMessage, UnavailableError } from "../errors.ts";
import { serverStreamHandler, unaryHandler } from "../grpc/server_call.ts";
import { Code, internalStatus, MAX_RESPONSE_MESSAGE_BYTES, RpcError } from "../grpc/status.ts";

/** Length of the store path digest that keys PathInfos. */
const STORE_PATH_DIGEST_LEN = 20;

/** A PathInfo must fit in one response message (see `directory_handler.ts`). */
function checkServable(info: PathInfo, what: "received" | "stored"): void {
  const size = PathInfo.encode(info).finish().length;
  if (size > MAX_RESPONSE_MESSAGE_BYTES) {
    throw new RpcError(
      what === "received" ? Code.INVALID_ARGUMENT : Code.RESOURCE_EXHAUSTED,
      `${what} PathInfo is ${size} bytes, more than the ${MAX_RESPONSE_MESSAGE_BYTES}-byte message limit`,
    );
  }
}

/** Builds the PathInfoService handlers. */
export function pathInfoHandler(
  pathInfos: PathInfoService,
  nar: NarCalculationService,
): PathInfoServiceServer {
  return {
    get: unaryHandler<GetPathInfoRequest, PathInfo>("PathInfoService/Get", async (req) => {
      if (req.byWhat?.$case !== "byOutputHash") {
        throw new RpcError(Code.UNIMPLEMENTED, "by_what needs to be specified");
      }
      const digest = req.byWhat.value;
      if (digest.length !== STORE_PATH_DIGEST_LEN) {
        throw new RpcError(Code.INVALID_ARGUMENT, "invalid output digest length");
      }
      const info = await pathInfos.get(digest);
      if (!info) throw new RpcError(Code.NOT_FOUND, "PathInfo not found");
      checkServable(info, "stored");
      return info;
    }),

    // The backend validates (docs/compatibility.md#pathinfo-validation) and
    // reports InvalidRequestError.
    put: unaryHandler<PathInfo, PathInfo>("PathInfoService/Put", async (info) => {
      checkServable(info, "received");
      return await pathInfos.put(info);
    }),

    calculateNar: unaryHandler<Node, CalculateNARResponse>(
      "PathInfoService/CalculateNAR",
      async (req) => {
        const node = req.node;
        if (!node) throw new RpcError(Code.INVALID_ARGUMENT, "no root node sent");
        // The name does not affect the NAR, so it is not checked
        // (docs/compatibility.md#q9-calculatenar-requires-a-valid-root-node-name).
        try {
          validateNode(node, false);
        } catch (err) {
          throw new RpcError(Code.INVALID_ARGUMENT, `invalid root node: ${errorMessage(err)}`);
        }
        try {
          return await nar.calculateNar(node);
        } catch (err) {
          // A backend out of reach is UNAVAILABLE, as for every other call:
          // the client may retry, and a bridge in front answers 503.
          if (err instanceof UnavailableError) throw err;
          throw new RpcError(
            Code.DATA_LOSS,
            `storage error: failed rendering nar: ${errorMessage(err)}`,
          );
        }
      },
    ),

    list: serverStreamHandler<ListPathInfoRequest, PathInfo>(
      "PathInfoService/List",
      async (_req, send) => {
        for await (const info of pathInfos.list()) {
          checkServable(info, "stored");
          if (!await send(info)) return;
        }
      },
      internalStatus,
    ),
  };
}
