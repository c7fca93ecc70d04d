/**
 * `src/grpc/varint.ts` writes what protobuf's own writer writes, at every
 * length boundary, also above 2^32.
 */
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { varintBytes, writeVarint } from "../../src/grpc/varint.ts";
import { assertEquals } from "../assert.ts";

Deno.test("varint: bytes and length match the protobuf writer at every boundary", () => {
  const values = [0, 1, 127, 128, 300, 16_383, 16_384, 2 ** 21 - 1, 2 ** 21, 2 ** 28 - 1, 2 ** 28];
  values.push(2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 35 + 5, Number.MAX_SAFE_INTEGER);
  for (const value of values) {
    const want = new BinaryWriter().uint64(value).finish();
    const out = new Uint8Array(12);
    const end = writeVarint(out, 2, value);
    assertEquals(out.subarray(2, end), want, `bytes of ${value}`);
    assertEquals(varintBytes(value), want.length, `length of ${value}`);
  }
});
