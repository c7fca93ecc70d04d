/**
 * Start-up benchmark: how long `tvix-store` takes before it does any work,
 * against an empty `deno run` with the same config and lockfile (the
 * baseline: what any Deno program pays). Measured, as processes:
 * - `deno run -A --config deno.json <empty.ts>` (baseline);
 * - `tvix-store --version` and `tvix-store --help` (targets: within 3x of
 *   the baseline);
 * - `tvix-store import --help` (commander and one subcommand module);
 * - `tvix-store import FILE` of one small new file through a running
 *   `tvix-store daemon` on a temp store (target: within 0.5 s), and into
 *   an embedded store directly (no gRPC code is loaded for it).
 *
 * Every round runs each command once, in this order (interleaved, so drift
 * in the machine's state hits every side alike). Prints the median and the
 * spread (min–max) of each, the ratio of its median to the baseline's, and
 * the load average before and after: on a loaded machine the absolute
 * numbers grow, the ratios much less.
 *
 * Usage: `deno run -A scripts/bench_startup.ts [--rounds 10]`.
 *
 * @module
 */
import { join } from "node:path";
import { serviceAddrArgs } from "../src/cli/common.ts";
import { embeddedAddrs } from "../src/store/services.ts";
import { loadAverage, MAIN, median, numberArg, watchLines } from "./support.ts";

const ROUNDS = numberArg("rounds", 10);
const CONFIG = new URL("../deno.json", import.meta.url).pathname;

const ms = (x: number) => `${x.toFixed(0)} ms`;
const spread = (xs: number[]) => `${ms(Math.min(...xs))}–${ms(Math.max(...xs))}`;

/** Runs `deno ARGS…` to completion; returns the wall time in ms (throws on failure). */
async function timed(args: string[]): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const elapsed = performance.now() - t0;
  if (!out.success) {
    throw new Error(`deno ${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  return elapsed;
}

const tmp = await Deno.makeTempDir({ prefix: "tvix-bench-startup-" });
const empty = join(tmp, "empty.ts");
await Deno.writeTextFile(empty, "export {};\n");

// A daemon on a temp embedded store, on a free port.
const daemon = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "-A",
    MAIN,
    "daemon",
    "-l",
    "[::1]:0",
    ...serviceAddrArgs(embeddedAddrs(join(tmp, "store"))),
  ],
  env: { TVIX_STORE_HOME: join(tmp, "store") },
  stdin: "null",
  stdout: "null",
  stderr: "piped",
}).spawn();
try {
  const listening = await watchLines(daemon.stderr, / listening address=(\S+)/).match;
  const url = `grpc+http://${listening[1]}`;
  const clientArgs = serviceAddrArgs({
    blobServiceAddr: url,
    directoryServiceAddr: url,
    pathInfoServiceAddr: url,
  });
  // Another embedded store, opened by each import itself.
  const localArgs = serviceAddrArgs(embeddedAddrs(join(tmp, "local")));

  const sides: { name: string; args: (round: number) => Promise<string[]> }[] = [
    {
      name: "empty deno run (baseline)",
      args: () => Promise.resolve(["run", "-A", "--config", CONFIG, empty]),
    },
    { name: "tvix-store --version", args: () => Promise.resolve(["run", "-A", MAIN, "--version"]) },
    { name: "tvix-store --help", args: () => Promise.resolve(["run", "-A", MAIN, "--help"]) },
    {
      name: "tvix-store import --help",
      args: () => Promise.resolve(["run", "-A", MAIN, "import", "--help"]),
    },
    {
      name: "tvix-store import FILE (daemon)",
      args: async (round) => {
        // A new file each round, so every import stores something.
        const file = join(tmp, `file-${round}`);
        await Deno.writeTextFile(file, `round ${round} ${crypto.randomUUID()}\n`);
        return ["run", "-A", MAIN, "import", ...clientArgs, file];
      },
    },
    {
      name: "tvix-store import FILE (local)",
      args: async (round) => {
        const file = join(tmp, `local-${round}`);
        await Deno.writeTextFile(file, `round ${round} ${crypto.randomUUID()}\n`);
        return ["run", "-A", MAIN, "import", ...localArgs, file];
      },
    },
  ];

  const before = loadAverage();
  console.log(
    `start-up: ${ROUNDS} interleaved rounds, ${navigator.hardwareConcurrency} cores, ` +
      `load ${before} before`,
  );
  // One untimed round fills Deno's caches (code cache, npm resolution).
  for (const side of sides) await timed(await side.args(-1));
  const times = sides.map(() => [] as number[]);
  for (let round = 0; round < ROUNDS; round++) {
    for (const [i, side] of sides.entries()) times[i].push(await timed(await side.args(round)));
  }
  const base = median(times[0]);
  for (const [i, side] of sides.entries()) {
    const m = median(times[i]);
    const ratio = i === 0 ? "" : `  ${(m / base).toFixed(1)}x baseline`;
    console.log(
      `  ${side.name.padEnd(34)} median ${ms(m).padStart(7)} (${spread(times[i])})${ratio}`,
    );
  }
  console.log(`load ${loadAverage()} after`);
} finally {
  daemon.kill("SIGTERM");
  await daemon.status;
  await Deno.remove(tmp, { recursive: true });
}
