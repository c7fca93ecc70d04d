import { assertEquals, assertThrows } from "../assert.ts";
import { fromHex, toHex } from "../../src/castore/digest.ts";
import {
  decode,
  decodeFixed,
  encode,
  encodedLength,
  Nixbase32Error,
} from "../../src/store/nixbase32.ts";

const VECTORS: [string, string][] = [
  ["", ""],
  ["1f", "0z"],
  ["8a12321522fd91efbd60ebb2481af88580f61600", "00bgd045z0d4icpbc2yyz4gx48ak44la"],
  [
    "b3a24de97a8fdbc835b9833169501030b8977031bcb54b3b3ac13740f846ab30",
    "0c5b8vw40dy178xlpddw65q9gf1h2186jcc3p4swinwggbllv8mk",
  ],
  ["00".repeat(20), "0".repeat(32)],
  ["ff".repeat(20), "z".repeat(32)],
];

Deno.test("nixbase32 encodes and decodes the contract's vectors", () => {
  for (const [hex, text] of VECTORS) {
    assertEquals(encode(fromHex(hex)), text, hex);
    assertEquals(toHex(decode(text)), hex, text);
  }
});

Deno.test("nixbase32 encoded lengths", () => {
  assertEquals([0, 1, 16, 20, 32, 64].map(encodedLength), [0, 2, 26, 32, 52, 103]);
});

Deno.test("nixbase32 round-trips every length and value pattern", () => {
  for (let n = 0; n <= 70; n++) {
    const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 151 + n * 7) & 0xff);
    const text = encode(bytes);
    assertEquals(text.length, encodedLength(n));
    assertEquals(decode(text), bytes);
  }
});

Deno.test("nixbase32 rejects symbols outside the alphabet and spilled bits", () => {
  for (const bad of ["e", "0o", "0u", "0t", "0E", "0Z", "0-", "0é"]) {
    assertThrows(() => decode(bad), Nixbase32Error, "symbol");
  }
  for (const bad of ["zz", "c0"]) assertThrows(() => decode(bad), Nixbase32Error, "trailing bits");
});

Deno.test("nixbase32 fixed-size decoding requires the exact length", () => {
  assertEquals(decodeFixed("0".repeat(32), 20), new Uint8Array(20));
  assertThrows(() => decodeFixed("0".repeat(31), 20), Nixbase32Error, "length");
  assertThrows(() => decodeFixed("0".repeat(33), 20), Nixbase32Error, "length");
});
