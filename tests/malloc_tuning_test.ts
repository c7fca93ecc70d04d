/**
 * tuneMalloc(): in a child process, 50 rounds of eight 1 MiB blocks
 * allocated, written and freed fault every page in again by default (glibc
 * trims the freed memory off its heap each round) and only the first
 * round's once tuned; settings the user gave glibc are left alone.
 */
import { assert, assertEquals } from "./assert.ts";
import { runDenoScript } from "./deno_child.ts";

const CHILD = new URL("./malloc_tuning_child.ts", import.meta.url).pathname;

async function run(mode: string, env: Record<string, string> = {}) {
  const { stdout } = await runDenoScript(CHILD, [mode], env);
  const [applied, faults] = stdout.trim().split(" ");
  return { applied: applied === "true", faults: Number(faults) };
}

Deno.test({
  name: "tuneMalloc keeps freed blocks for reuse; user settings win",
  ignore: Deno.build.os !== "linux",
}, async () => {
  const plain = await run("none");
  const tuned = await run("tune");
  assert(tuned.applied, "mallopt was not applied");
  // 50 x 8 x 256 pages faulted in again, against one round's worth.
  assert(plain.faults > 0.8 * 50 * 8 * 256, `default: ${plain.faults} faults`);
  assert(tuned.faults < 8 * 256 + 500, `tuned: ${tuned.faults} faults`);
  const user = await run("tune", { MALLOC_ARENA_MAX: "2" });
  assertEquals(user.applied, false, "a MALLOC_* variable is the user's choice");
  assertEquals((await run("tune", { GLIBC_TUNABLES: "glibc.malloc.arena_max=2" })).applied, false);
});
