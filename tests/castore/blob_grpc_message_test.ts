import { assertEquals } from "../assert.ts";
import { encodeBlobChunk } from "../../src/castore/blob/grpc.ts";
import { BlobChunk } from "../../src/proto/tvix/castore/protos/rpc_blobstore.ts";
import { pseudoRandom } from "../fixtures.ts";

Deno.test("encodeBlobChunk is byte-identical to the generated encoder at every varint width", () => {
  for (const n of [1, 127, 128, 300, 16383, 16384, 262144, 2097151, 2097152]) {
    const data = pseudoRandom(n, n + 1);
    assertEquals(encodeBlobChunk(data), BlobChunk.encode({ data }).finish(), `${n} bytes`);
    assertEquals(BlobChunk.decode(encodeBlobChunk(data)).data, data);
  }
  // Never sent (empty writes send nothing), but still a valid message.
  assertEquals(BlobChunk.decode(encodeBlobChunk(new Uint8Array(0))).data, new Uint8Array(0));
});
