/**
 * `tvix_ts.castore.v1.SmallBlobService`: our extension for uploading many
 * small blobs in one call (docs/compatibility.md#small-blob-uploads).
 *
 * The upstream `BlobService.Put` takes one blob per call. Most files of a
 * Nix store are a few KiB, and a call costs each side a few hundred µs of
 * HTTP/2 and grpc-js work, far more than storing the bytes; a batch call
 * pays that once for many blobs. Each request message is a whole blob,
 * encoded as an upstream `BlobChunk` (`bytes data = 1`); the response
 * lists their digests in the same order, once every blob is stored.
 *
 * ```proto
 * service SmallBlobService {
 *   rpc Put(stream tvix.castore.v1.BlobChunk) returns (PutSmallBlobsResponse);
 * }
 * message PutSmallBlobsResponse { repeated bytes digests = 1; }
 * ```
 *
 * Upstream clients never call it, and our client falls back to `Put` per
 * blob when a server answers UNIMPLEMENTED, so wire compatibility holds
 * both ways.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import type { MethodDefinition, ServiceDefinition } from "@grpc/grpc-js";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";

/** The fully qualified service name. */
export const SMALL_BLOB_SERVICE_NAME = "tvix_ts.castore.v1.SmallBlobService";

/**
 * Most blobs one call may carry: their digests must fit one response
 * message (4 MiB at 34 bytes each).
 */
export const MAX_SMALL_BLOBS_PER_CALL = 65_536;

/** A request message: one whole blob (the wire form of `BlobChunk`). */
export interface SmallBlob {
  data: Uint8Array;
}

/** The response: each blob's BLAKE3 digest, in request order. */
export interface PutSmallBlobsResponse {
  digests: Uint8Array[];
}

/** Encodes a response. */
export function encodePutSmallBlobsResponse(res: PutSmallBlobsResponse): Uint8Array {
  const w = new BinaryWriter();
  for (const d of res.digests) w.uint32(10).bytes(d);
  return w.finish();
}

/** Decodes a response; unknown fields are skipped. */
export function decodePutSmallBlobsResponse(buf: Uint8Array): PutSmallBlobsResponse {
  const r = new BinaryReader(buf);
  const digests: Uint8Array[] = [];
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) digests.push(r.bytes());
    else r.skip(wireType);
  }
  return { digests };
}

/** Decodes a request message; unknown fields are skipped. */
export function decodeSmallBlob(buf: Uint8Array): SmallBlob {
  const r = new BinaryReader(buf);
  let data: Uint8Array = new Uint8Array(0);
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) data = r.bytes();
    else r.skip(wireType);
  }
  return { data };
}

const plain = (buf: Uint8Array) => new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
const asBuffer = (bytes: Uint8Array) =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);

/**
 * The service as grpc-js takes it, for both ends. Requests are sent
 * already encoded (as `BlobChunk` messages), so the request serializer
 * only wraps the bytes.
 */
export const smallBlobServiceDefinition: ServiceDefinition<{
  put: MethodDefinition<Uint8Array | SmallBlob, PutSmallBlobsResponse>;
}> = {
  put: {
    path: `/${SMALL_BLOB_SERVICE_NAME}/Put`,
    requestStream: true,
    responseStream: false,
    requestSerialize: (value) => {
      if (value instanceof Uint8Array) return asBuffer(value);
      const w = new BinaryWriter();
      w.uint32(10).bytes(value.data);
      return asBuffer(w.finish());
    },
    requestDeserialize: (buf) => decodeSmallBlob(plain(buf)),
    responseSerialize: (res) => asBuffer(encodePutSmallBlobsResponse(res)),
    responseDeserialize: (buf) => decodePutSmallBlobsResponse(plain(buf)),
    originalName: "put",
  },
};
