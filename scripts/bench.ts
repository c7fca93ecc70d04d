/**
 * `deno task bench`: runs every `scripts/bench_*.ts` in turn, each as its
 * own process (so one benchmark's memory never counts against the next),
 * and exits non-zero if any of them failed.
 *
 * Usage: `deno run -A scripts/bench.ts [name...] [--flag...]`, where a name
 * selects `scripts/bench_<name>.ts` (default: all) and every `--flag` is
 * passed on to each benchmark run (`deno task bench fuse --only=ls`).
 *
 * Each benchmark, and every `tvix-store` process it starts, runs with the
 * V8 setting the installed command carries ({@linkcode PRODUCT_V8_FLAGS},
 * through `DENO_V8_FLAGS`); baselines that are not Deno are unaffected.
 *
 * @module
 */
import { loadAverage, PRODUCT_V8_FLAGS } from "./support.ts";
const dir = new URL(".", import.meta.url).pathname;
const wanted = new Set(Deno.args.filter((a) => !a.startsWith("--")));
const flags = Deno.args.filter((a) => a.startsWith("--"));

const benches = [...Deno.readDirSync(dir)]
  .map((e) => e.name)
  .filter((name) => /^bench_[\w-]+\.ts$/.test(name))
  .filter((name) => wanted.size === 0 || wanted.has(name.slice("bench_".length, -".ts".length)))
  .sort();
if (benches.length === 0) {
  console.error(`no benchmark matches ${[...wanted].join(", ")}`);
  Deno.exit(1);
}

const failed: string[] = [];
for (const name of benches) {
  console.log(`\n=== ${name} (load average ${loadAverage()}, V8 ${PRODUCT_V8_FLAGS}) ===`);
  const started = performance.now();
  const { code } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${dir}${name}`, ...flags],
    env: { DENO_V8_FLAGS: PRODUCT_V8_FLAGS },
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn().status;
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(`=== ${name}: ${code === 0 ? "done" : `FAILED (exit ${code})`} in ${seconds} s ===`);
  if (code !== 0) failed.push(name);
}
if (failed.length > 0) {
  console.error(`\nfailed: ${failed.join(", ")}`);
  Deno.exit(1);
}
