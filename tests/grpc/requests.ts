/**
 * Typed wrappers around the Python client's ops: build request bytes with
 * the generated message codecs, decode the answers, and assert statuses.
 *
 * @module
 */
import { status as Code } from "@grpc/grpc-js";
import {
  BlobChunk,
  PutBlobResponse,
  ReadBlobRequest,
  StatBlobRequest,
  StatBlobResponse,
} from "../../src/proto/tvix/castore/protos/rpc_blobstore.ts";
import {
  GetDirectoryRequest,
  PutDirectoryResponse,
} from "../../src/proto/tvix/castore/protos/rpc_directory.ts";
import { Directory, Node } from "../../src/proto/tvix/castore/protos/castore.ts";
import { PathInfo } from "../../src/proto/tvix/store/protos/pathinfo.ts";
import {
  CalculateNARResponse,
  GetPathInfoRequest,
} from "../../src/proto/tvix/store/protos/rpc_pathinfo.ts";
import type { NodeVariant } from "../../src/castore/node.ts";
import { concatBytes } from "../../src/castore/digest.ts";
import { assert, assertEquals } from "../assert.ts";
import type { Answer, PyClient } from "./daemon_harness.ts";

export { Code };

/** Asserts the status of an answer (and optionally its details text). */
export function assertStatus(
  answer: Answer,
  code: Code,
  details?: string | RegExp,
  what = "",
): void {
  assertEquals(
    `${Code[answer.code]}`,
    `${Code[code]}`,
    `${what} status (details: ${JSON.stringify(answer.details)})`,
  );
  if (typeof details === "string") assertEquals(answer.details, details, `${what} details`);
  else if (details) assert(details.test(answer.details), `${what} details ${answer.details}`);
}

/** Concatenates byte arrays. */
export const concat = concatBytes;

/** Splits `data` into pieces of `size` bytes. */
export function split(data: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0; at < data.length; at += size) out.push(data.subarray(at, at + size));
  return out;
}

/** The calls of the three services through the Python client. */
export class Calls {
  constructor(readonly py: PyClient) {}

  blobPut(chunks: Uint8Array[], cancel = false) {
    return this.py.call("blob.put", { chunks, cancel });
  }
  async blobPutOk(chunks: Uint8Array[]): Promise<Uint8Array> {
    const a = await this.blobPut(chunks);
    assertStatus(a, Code.OK, undefined, "blob put");
    return PutBlobResponse.decode(a.responses[0]).digest;
  }
  blobStat(digest: Uint8Array, sendChunks = false) {
    const request = StatBlobRequest.encode({ digest, sendChunks, sendBao: false }).finish();
    return this.py.call("blob.stat", { request });
  }
  async blobStatOk(digest: Uint8Array, sendChunks = false): Promise<StatBlobResponse> {
    const a = await this.blobStat(digest, sendChunks);
    assertStatus(a, Code.OK, undefined, "blob stat");
    return StatBlobResponse.decode(a.responses[0]);
  }
  blobRead(digest: Uint8Array) {
    return this.py.call("blob.read", { request: ReadBlobRequest.encode({ digest }).finish() });
  }
  /** The `data` of every message of a successful Read. */
  async blobReadOk(digest: Uint8Array): Promise<Uint8Array[]> {
    const a = await this.blobRead(digest);
    assertStatus(a, Code.OK, undefined, "blob read");
    return a.responses.map((m) => BlobChunk.decode(m).data);
  }

  dirPut(dirs: Directory[]) {
    return this.py.call("directory.put", {
      messages: dirs.map((d) => Directory.encode(d).finish()),
    });
  }
  async dirPutOk(dirs: Directory[]): Promise<Uint8Array> {
    const a = await this.dirPut(dirs);
    assertStatus(a, Code.OK, undefined, "directory put");
    return PutDirectoryResponse.decode(a.responses[0]).rootDigest;
  }
  dirGet(digest: Uint8Array | undefined, recursive: boolean) {
    const request = GetDirectoryRequest.encode({
      byWhat: digest ? { $case: "digest", value: digest } : undefined,
      recursive,
    }).finish();
    return this.py.call("directory.get", { request });
  }
  async dirGetOk(digest: Uint8Array, recursive: boolean): Promise<Directory[]> {
    const a = await this.dirGet(digest, recursive);
    assertStatus(a, Code.OK, undefined, "directory get");
    return a.responses.map((m) => Directory.decode(m));
  }

  pathInfoPut(info: PathInfo) {
    return this.py.call("pathinfo.put", { request: PathInfo.encode(info).finish() });
  }
  pathInfoGet(digest: Uint8Array | undefined) {
    const request = GetPathInfoRequest.encode({
      byWhat: digest ? { $case: "byOutputHash", value: digest } : undefined,
    }).finish();
    return this.py.call("pathinfo.get", { request });
  }
  async pathInfoList(): Promise<PathInfo[]> {
    const a = await this.py.call("pathinfo.list");
    assertStatus(a, Code.OK, undefined, "pathinfo list");
    return a.responses.map((m) => PathInfo.decode(m));
  }
  calculateNar(node: NodeVariant | undefined) {
    return this.py.call("pathinfo.calculate_nar", { request: Node.encode({ node }).finish() });
  }
  async calculateNarOk(node: NodeVariant): Promise<CalculateNARResponse> {
    const a = await this.calculateNar(node);
    assertStatus(a, Code.OK, undefined, "calculate nar");
    return CalculateNARResponse.decode(a.responses[0]);
  }
}

/** Encodes `Directory` messages (re-exported for tests building raw cases). */
export { Directory, PathInfo };
