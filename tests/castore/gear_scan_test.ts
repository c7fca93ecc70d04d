import { assertEquals } from "../assert.ts";
import { assembleWat, WASM_MODULES, wasmModuleSource } from "../../scripts/wasm_modules.ts";

Deno.test("every embedded WebAssembly binary is what its text assembles to", async () => {
  for (const mod of WASM_MODULES) {
    const expected = wasmModuleSource(mod, await assembleWat(mod.wat));
    assertEquals(await Deno.readTextFile(mod.ts), expected, `${mod.ts}: run \`deno task wasm\``);
  }
});
