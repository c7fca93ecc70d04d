/**
 * `tvix_ts.castore.v1.SmallBlobService`: our extension for uploading and
 * reading many small blobs in one call (docs/compatibility.md#small-blobs).
 *
 * The upstream `BlobService.Put` takes one blob per call. Most files of a
 * Nix store are a few KiB, and a call costs each side a few hundred µs of
 * HTTP/2 and grpc-js work, far more than storing the bytes; a batch call
 * pays that once for many blobs. Each request message is a whole blob,
 * encoded as an upstream `BlobChunk` (`bytes data = 1`); the response
 * lists their digests in the same order, once every blob is stored.
 *
 * `Read` is the same for reading: one request names many blobs, and the
 * response stream carries each of them whole, in request order, or says
 * that it is absent or too large for the call (then the client reads it
 * with the upstream `Read`). A response message carries as many blobs as
 * are ready, up to about {@linkcode READ_RESPONSE_BYTES}: a message per
 * blob of a few KiB cost both ends more in HTTP/2 writes and grpc-js
 * framing than the blob itself.
 *
 * ```proto
 * service SmallBlobService {
 *   rpc Put(stream tvix.castore.v1.BlobChunk) returns (PutSmallBlobsResponse);
 *   rpc Read(ReadSmallBlobsRequest) returns (stream ReadSmallBlobsResponse);
 * }
 * message PutSmallBlobsResponse { repeated bytes digests = 1; }
 * message ReadSmallBlobsRequest { repeated bytes digests = 1; }
 * message ReadSmallBlobsResponse { repeated SmallBlobContents blobs = 1; }
 * message SmallBlobContents {
 *   enum Outcome { FOUND = 0; NOT_FOUND = 1; TOO_LARGE = 2; }
 *   bytes data = 1;
 *   Outcome outcome = 2;
 * }
 * ```
 *
 * Upstream clients never call it, and our client falls back to one `Put`
 * or `Read` per blob when a server answers UNIMPLEMENTED, so wire
 * compatibility holds both ways.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import type { MethodDefinition, ServiceDefinition } from "@grpc/grpc-js";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { varintBytes, writeVarint } from "./varint.ts";
import { responseScratch } from "./response_scratch.ts";

/** The fully qualified service name. */
export const SMALL_BLOB_SERVICE_NAME = "tvix_ts.castore.v1.SmallBlobService";

/**
 * Most blobs one call may carry: their digests must fit one response
 * message (4 MiB at 34 bytes each).
 */
export const MAX_SMALL_BLOBS_PER_CALL = 65_536;

/**
 * Most blobs one `Read` call may name. Each costs the daemon a read of up
 * to about 1 MiB even when it is answered `TOO_LARGE`, so a call costs at
 * most what this many upstream `Read` calls that nobody reads would.
 */
export const MAX_SMALL_BLOB_READS = 128;

/**
 * Largest blob a `Read` call returns; a larger one is answered with
 * `TOO_LARGE` and no data. Also what our client asks for through it.
 */
export const MAX_SMALL_BLOB_READ_BYTES = 1024 * 1024;

/**
 * A `Read` response message is sent once the blobs in it reach this many
 * bytes (or no further blob is ready yet).
 */
export const READ_RESPONSE_BYTES = 256 * 1024;

/** A request message: one whole blob (the wire form of `BlobChunk`). */
export interface SmallBlob {
  data: Uint8Array;
}

/** The response: each blob's BLAKE3 digest, in request order. */
export interface PutSmallBlobsResponse {
  digests: Uint8Array[];
}

/**
 * A message whose only field is `repeated bytes digests = 1`, which both
 * the `Put` response and the `Read` request are.
 */
interface DigestList {
  digests: Uint8Array[];
}

function encodeDigestList(msg: DigestList): Uint8Array {
  const w = new BinaryWriter();
  for (const d of msg.digests) w.uint32(10).bytes(d);
  return w.finish();
}

function decodeDigestList(buf: Uint8Array): DigestList {
  const r = new BinaryReader(buf);
  const digests: Uint8Array[] = [];
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) digests.push(r.bytes());
    else r.skip(wireType);
  }
  return { digests };
}

/** Encodes a `Put` response. */
export function encodePutSmallBlobsResponse(res: PutSmallBlobsResponse): Uint8Array {
  return encodeDigestList(res);
}

/** Decodes a `Put` response; unknown fields are skipped. */
export function decodePutSmallBlobsResponse(buf: Uint8Array): PutSmallBlobsResponse {
  return decodeDigestList(buf);
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

/** The `Read` request: the blobs wanted, in the order they are to be returned. */
export interface ReadSmallBlobsRequest {
  digests: Uint8Array[];
}

/** What a `Read` response says of one blob. */
export enum SmallBlobOutcome {
  /** `data` is the whole blob. */
  FOUND = 0,
  /** The server has no such blob. */
  NOT_FOUND = 1,
  /** The blob is larger than {@linkcode MAX_SMALL_BLOB_READ_BYTES}. */
  TOO_LARGE = 2,
}

/** One requested blob, as a `Read` response tells of it. */
export interface SmallBlobContents {
  data: Uint8Array;
  outcome: SmallBlobOutcome;
}

/** A `Read` response message: the next requested blobs, in request order. */
export interface ReadSmallBlobsResponse {
  blobs: SmallBlobContents[];
  /**
   * Set by {@linkcode decodeReadSmallBlobsResponse}: the received message,
   * whose buffer every blob's `data` is a view into.
   */
  received?: Uint8Array;
}

/** Encodes a `Read` request. */
export function encodeReadSmallBlobsRequest(req: ReadSmallBlobsRequest): Uint8Array {
  return encodeDigestList(req);
}

/** Decodes a `Read` request; unknown fields are skipped. */
export function decodeReadSmallBlobsRequest(buf: Uint8Array): ReadSmallBlobsRequest {
  return decodeDigestList(buf);
}

/** Length of an encoded `SmallBlobContents`. */
function contentsBytes(blob: SmallBlobContents): number {
  const data = blob.data.length;
  return (blob.outcome !== SmallBlobOutcome.FOUND ? 1 + varintBytes(blob.outcome) : 0) +
    (data > 0 ? 1 + varintBytes(data) + data : 0);
}

/**
 * Encodes a `Read` response, each blob copied once (the generic writer
 * copied every blob twice), into the reused response buffer: this is the
 * method's response serializer, and grpc-js copies the result into the
 * frame before it returns ({@linkcode responseScratch}). Within a blob the
 * outcome goes before `data`.
 */
export function encodeReadSmallBlobsResponse(res: ReadSmallBlobsResponse): Buffer {
  let size = 0;
  for (const blob of res.blobs) {
    const inner = contentsBytes(blob);
    size += 1 + varintBytes(inner) + inner;
  }
  const out = responseScratch(size);
  let at = 0;
  for (const blob of res.blobs) {
    out[at++] = 0x0a; // field 1, length-delimited
    at = writeVarint(out, at, contentsBytes(blob));
    if (blob.outcome !== SmallBlobOutcome.FOUND) {
      out[at++] = 0x10; // field 2, varint
      at = writeVarint(out, at, blob.outcome);
    }
    if (blob.data.length > 0) {
      out[at++] = 0x0a;
      at = writeVarint(out, at, blob.data.length);
      out.set(blob.data, at);
      at += blob.data.length;
    }
  }
  return out;
}

/**
 * Decodes a `Read` response; unknown fields are skipped. Each blob's
 * `data` is a view into `buf`.
 */
export function decodeReadSmallBlobsResponse(buf: Uint8Array): ReadSmallBlobsResponse {
  const r = new BinaryReader(buf);
  const blobs: SmallBlobContents[] = [];
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) blobs.push(decodeContents(r.bytes()));
    else r.skip(wireType);
  }
  return { blobs, received: buf };
}

function decodeContents(buf: Uint8Array): SmallBlobContents {
  const r = new BinaryReader(buf);
  let data: Uint8Array = new Uint8Array(0);
  let outcome = SmallBlobOutcome.FOUND;
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) data = r.bytes();
    else if (field === 2 && wireType === WireType.Varint) outcome = r.int32();
    else r.skip(wireType);
  }
  return { data, outcome };
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
  read: MethodDefinition<ReadSmallBlobsRequest, ReadSmallBlobsResponse>;
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
  read: {
    path: `/${SMALL_BLOB_SERVICE_NAME}/Read`,
    requestStream: false,
    responseStream: true,
    requestSerialize: (req) => asBuffer(encodeReadSmallBlobsRequest(req)),
    requestDeserialize: (buf) => decodeReadSmallBlobsRequest(plain(buf)),
    responseSerialize: encodeReadSmallBlobsResponse,
    responseDeserialize: (buf) => decodeReadSmallBlobsResponse(plain(buf)),
    originalName: "read",
  },
};
