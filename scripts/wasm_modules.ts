/**
 * The project's WebAssembly text modules, and how each is embedded into a
 * TypeScript module (used by scripts/build_wasm.ts and its test).
 *
 * @module
 */
import wabtInit from "wabt";

/** A `.wat` file and the `.ts` module that embeds its binary. */
export interface WasmModule {
  /** Path of the WebAssembly text. */
  readonly wat: string;
  /** Path of the generated TypeScript module. */
  readonly ts: string;
  /** Name of the exported `Uint8Array` constant. */
  readonly constant: string;
}

const SRC = new URL("../src/", import.meta.url).pathname;

/** Every embedded module. */
export const WASM_MODULES: readonly WasmModule[] = [
  {
    wat: `${SRC}castore/blob/gear_scan.wat`,
    ts: `${SRC}castore/blob/gear_scan_wasm.ts`,
    constant: "GEAR_SCAN_WASM",
  },
];

/** The binary module the text at `path` assembles to. */
export async function assembleWat(path: string): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const parsed = wabt.parseWat(path, await Deno.readTextFile(path));
  try {
    parsed.resolveNames();
    parsed.validate();
    return new Uint8Array(parsed.toBinary({}).buffer);
  } finally {
    parsed.destroy();
  }
}

/** The TypeScript module embedding `binary` for `mod`. */
export function wasmModuleSource(mod: WasmModule, binary: Uint8Array): string {
  const name = mod.wat.slice(mod.wat.lastIndexOf("/") + 1);
  const base64 = btoa(String.fromCharCode(...binary));
  const lines = base64.match(/.{1,96}/g) ?? [];
  return [
    `/**`,
    ` * The WebAssembly binary of \`${name}\`, generated from it by`,
    ` * \`deno task wasm\` (scripts/build_wasm.ts); do not edit.`,
    ` *`,
    ` * @module`,
    ` */`,
    ``,
    `/** The assembled module (${binary.length} bytes). */`,
    `export const ${mod.constant}: Uint8Array = Uint8Array.from(`,
    `  atob(`,
    // Laid out as `deno fmt` lays it out, so that a formatted tree is current.
    ...lines.map((l, i) => `${i ? "      " : "    "}"${l}"${i < lines.length - 1 ? " +" : ","}`),
    `  ),`,
    `  (c) => c.charCodeAt(0),`,
    `);`,
    ``,
  ].join("\n");
}
