/**
 * The WebAssembly binary of `gear_scan.wat`, generated from it by
 * `deno task wasm` (scripts/build_wasm.ts); do not edit.
 *
 * @module
 */

/** The assembled module (232 bytes). */
export const GEAR_SCAN_WASM: Uint8Array = Uint8Array.from(
  atob(
    "AGFzbQEAAAABDAFgB39/f35+fn4BfwMCAQAFAwEAAQcRAgZtZW1vcnkCAARzY2FuAAAKswEBsAEBAX4CQANAIAAgAU8NASAH" +
      "QgKGIAAtAABBA3QpA4AQfCEHIAcgBINQBEAgAA8LIAcgAC0AAUEDdCkDAHwhByAHIAODUARAIABBAWoPCyAAQQJqIQAMAAsL" +
      "AkADQCAAIAJPDQEgB0IChiAALQAAQQN0KQOAEHwhByAHIAaDUARAIAAPCyAHIAAtAAFBA3QpAwB8IQcgByAFg1AEQCAAQQFq" +
      "DwsgAEECaiEADAALC0F/Cw==",
  ),
  (c) => c.charCodeAt(0),
);
