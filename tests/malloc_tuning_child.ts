/**
 * Child of malloc_tuning_test.ts: applies tuneMalloc() if asked (argument
 * "tune"), then, 50 times, mallocs and writes eight blocks of 1 MiB
 * through libc and frees them (as a reader with chunks in flight does), and
 * prints `applied faults`: whether the tuning was applied, and this
 * process's minor page faults during the loop.
 */
import { tuneMalloc } from "../src/malloc_tuning.ts";

const applied = Deno.args[0] === "tune" ? tuneMalloc() : false;
const libc = Deno.dlopen("libc.so.6", {
  malloc: { parameters: ["usize"], result: "pointer" },
  free: { parameters: ["pointer"], result: "void" },
  memset: { parameters: ["pointer", "i32", "usize"], result: "pointer" },
}).symbols;
const minorFaults = () =>
  Number(Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ")[7]);
const size = 1 << 20;
const before = minorFaults();
for (let i = 0; i < 50; i++) {
  const blocks = Array.from({ length: 8 }, () => libc.malloc(BigInt(size)));
  for (const p of blocks) libc.memset(p, 1, BigInt(size));
  for (const p of blocks) libc.free(p);
}
console.log(`${applied} ${minorFaults() - before}`);
