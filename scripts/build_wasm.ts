/**
 * Assembles the WebAssembly text modules under src/ into the TypeScript
 * modules that embed them (`deno task wasm`). The binaries are committed,
 * so running the product needs no assembler; tests/castore/gear_scan_test.ts
 * checks that each embedded binary is what its text assembles to.
 *
 * Usage: `deno run -A scripts/build_wasm.ts [--check]`; with `--check` it
 * writes nothing and exits 1 if an embedded binary is out of date.
 *
 * @module
 */
import { assembleWat, WASM_MODULES, wasmModuleSource } from "./wasm_modules.ts";

const check = Deno.args.includes("--check");
let stale = 0;
for (const mod of WASM_MODULES) {
  const binary = await assembleWat(mod.wat);
  const source = wasmModuleSource(mod, binary);
  const current = await Deno.readTextFile(mod.ts).catch(() => "");
  if (current === source) continue;
  if (check) {
    console.error(`${mod.ts} is out of date; run \`deno task wasm\``);
    stale++;
  } else {
    await Deno.writeTextFile(mod.ts, source);
    console.log(`wrote ${mod.ts} (${binary.length} bytes of WebAssembly)`);
  }
}
if (stale) Deno.exit(1);
