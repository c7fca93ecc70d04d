/**
 * `PathInfoService/Get` over `fetch` (`grpc/unary_fetch.ts`), for an
 * unchanged re-import, whose one question to a daemon would otherwise wait
 * for grpc-js to load and connect
 * (docs/architecture.md#re-imports-the-stat-cache). Only a plain
 * `grpc+http://host:port` address qualifies; everything else goes through
 * the regular client.
 *
 * @module
 */
import { errorMessage, StorageError } from "../../errors.ts";
import { unaryOverFetch } from "../../grpc/unary_fetch.ts";
import { PathInfo } from "../../proto/tvix/store/protos/pathinfo.ts";
import { STORE_PATH_DIGEST_LEN } from "../store_path.ts";
import { checkReceivedPathInfo } from "./validate.ts";

const GET = "/tvix.store.v1.PathInfoService/Get";
/** gRPC's NOT_FOUND (`grpc/status.ts` takes its codes from grpc-js, which this module must not load). */
const NOT_FOUND = 5;

/**
 * `http://host:port` for a `grpc+http://host[:port]` address without path,
 * query or credentials; `undefined` for any other address (Unix sockets,
 * TLS, options), which the regular client serves.
 */
export function fetchOrigin(addr: string): string | undefined {
  let url: URL;
  try {
    url = new URL(addr);
  } catch {
    return undefined;
  }
  if (
    url.protocol !== "grpc+http:" || url.hostname === "" || url.username !== "" ||
    url.password !== "" || (url.pathname !== "" && url.pathname !== "/") || url.search !== "" ||
    url.hash !== ""
  ) {
    return undefined;
  }
  return `http://${url.hostname}:${url.port === "" ? "80" : url.port}`;
}

/**
 * The PathInfo of the store path with `digest` at `origin`, validated and
 * for that path; `undefined` if the server answers NOT_FOUND. Throws a
 * `StorageError` for any other answer, and when the server cannot be reached.
 */
export async function getPathInfoOverFetch(
  origin: string,
  digest: Uint8Array,
): Promise<PathInfo | undefined> {
  if (digest.length !== STORE_PATH_DIGEST_LEN) {
    throw new StorageError("invalid output digest length");
  }
  // GetPathInfoRequest { by_output_hash (field 1, bytes) }, spelt out: the
  // generated module of the request also builds the grpc-js client.
  const request = new Uint8Array(2 + digest.length);
  request[0] = 0x0a;
  request[1] = digest.length;
  request.set(digest, 2);
  const reply = await unaryOverFetch(origin, GET, request);
  if (reply.kind === "status") {
    if (reply.code === NOT_FOUND) return undefined;
    throw new StorageError(`pathinfo get: status ${reply.code}: ${reply.details}`);
  }
  let info: PathInfo;
  try {
    info = PathInfo.decode(reply.message);
  } catch (err) {
    throw new StorageError(`invalid pathinfo: ${errorMessage(err)}`);
  }
  checkReceivedPathInfo(info, digest);
  return info;
}
