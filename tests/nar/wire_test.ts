import { assertEquals } from "../assert.ts";
import { str, TOK, TokenWriter, u64 } from "../../src/nar/wire.ts";
import { concatBytes } from "../../src/castore/digest.ts";
import { releaseWhole } from "../../src/castore/blob/chunk_codec.ts";

/** 8 bytes little-endian, the slow way. */
function reference(n: bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, n, true);
  return out;
}

Deno.test("wire: u64 around the 32-bit fast path, as number and as bigint", () => {
  for (
    const n of [0n, 1n, 255n, 256n, 65_535n, 0x7fffffffn, 0xffffffffn, 0x100000000n, 2n ** 53n - 1n]
  ) {
    assertEquals(u64(n), reference(n), `${n}n`);
    assertEquals(u64(Number(n)), reference(n), `${n}`);
  }
  assertEquals(u64(2n ** 64n - 1n), reference(2n ** 64n - 1n));
});

Deno.test("wire: str is length, bytes, zero padding", () => {
  const s = str(new Uint8Array(300).fill(7));
  assertEquals(s.length, 8 + 304);
  assertEquals(s.subarray(0, 8), reference(300n));
  assertEquals(s.subarray(8, 308), new Uint8Array(300).fill(7));
  assertEquals(s.subarray(308), new Uint8Array(4));
  assertEquals(str("ab"), new Uint8Array([2, 0, 0, 0, 0, 0, 0, 0, 97, 98, 0, 0, 0, 0, 0, 0]));
});

Deno.test("wire: TokenWriter writes what str, u64 and padding would, and its views survive new buffers", () => {
  const w = new TokenWriter();
  const want: Uint8Array[] = [];
  const taken: Uint8Array[] = [];
  // ~100 KiB of tokens: past the end of the first buffer, with a take now and then.
  for (let i = 0; i < 2000; i++) {
    const name = new TextEncoder().encode(`entry-${i}`.repeat(1 + (i % 5)));
    const size = i % 3 === 0 ? BigInt(i) * 0x100000001n : BigInt(i);
    w.bytes(TOK.entryOpen);
    w.str(name);
    w.u64(size);
    w.zeros(i % 8);
    want.push(TOK.entryOpen, str(name), u64(size), new Uint8Array(i % 8));
    if (i % 7 === 0) taken.push(w.take());
  }
  assertEquals(w.pending > 0, true);
  taken.push(w.take());
  assertEquals(w.pending, 0);
  assertEquals(concatBytes(taken), concatBytes(want));
});

Deno.test("wire: a TokenWriter piece that spans its whole buffer may be freed by its reader", () => {
  const w = new TokenWriter();
  const name = new Uint8Array(200).fill(0x61);
  const want: Uint8Array[] = [];
  // More than a buffer's worth before the first take: one piece, one buffer.
  for (let i = 0; i < 400; i++) {
    w.str(name);
    want.push(str(name));
  }
  const piece = w.take();
  assertEquals(piece.byteLength, piece.buffer.byteLength);
  assertEquals(piece, concatBytes(want));
  releaseWhole(piece); // what the HTTP server does with a piece it owns
  w.bytes(TOK.close);
  w.u64(7);
  assertEquals(w.take(), concatBytes([TOK.close, u64(7)]));
});
