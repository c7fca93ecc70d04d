/**
 * Runs a test's helper script in a child `deno run -A` process, for what
 * must start in a fresh process (allocator settings, per-isolate logging).
 *
 * @module
 */
import { assert } from "./assert.ts";

/** Runs `script` with `args` and `env` to completion; fails (with its stderr) unless it exits 0. */
export async function runDenoScript(
  script: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  assert(out.success, `${script} ${args.join(" ")} failed:\n${stderr}`);
  return { stdout, stderr };
}
