/**
 * Read responses are encoded by our own serializer into a reused buffer
 * (`blobServiceDefinition` in `src/grpc_server/blob_handler.ts`); it must
 * produce exactly the generated encoder's bytes for every length, the
 * varint boundaries and both sides of the reused buffer's size included.
 */
import { Buffer } from "node:buffer";
import { assertEquals } from "../assert.ts";
import { blobServiceDefinition, READ_MESSAGE_BYTES } from "../../src/grpc_server/blob_handler.ts";
import { BlobChunk } from "../../src/proto/tvix/castore/protos/rpc_blobstore.ts";

Deno.test("Read responses are encoded as the generated BlobChunk encoder does", () => {
  const serialize = blobServiceDefinition.read.responseSerialize;
  const lengths = [
    0,
    1,
    127,
    128,
    16_383,
    16_384,
    2_097_151,
    READ_MESSAGE_BYTES - 1,
    READ_MESSAGE_BYTES,
    READ_MESSAGE_BYTES + 8,
    2_097_152,
  ];
  for (const length of lengths) {
    const data = new Uint8Array(length).map((_, i) => (i * 31 + length) & 0xff);
    // A view into a larger buffer, as the handler sends them.
    const view = new Uint8Array(length + 10).subarray(3, 3 + length);
    view.set(data);
    const expected = Buffer.from(BlobChunk.encode({ data }).finish());
    const got = serialize({ data: view });
    assertEquals(Buffer.compare(got, expected), 0, `length ${length}`);
    assertEquals(got.length, expected.length, `length ${length}`);
  }
});
