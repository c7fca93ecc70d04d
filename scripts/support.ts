/**
 * Plumbing shared by the benchmark scripts: where main.ts is, numeric
 * command-line options, running `tvix-store` to completion, writing random
 * files, waiting for a child process to print a line, stopping children,
 * medians and the load average.
 * (Not named `bench_*`, so `scripts/bench.ts` does not run it.)
 *
 * @module
 */

/**
 * The V8 setting `tvix-store` ships with: `deno task start`, `install` and
 * `compile` pass it as `--v8-flags` (a test holds them to it), and
 * `deno task bench` hands it to every benchmark and to the processes they
 * start through `DENO_V8_FLAGS`, so benchmarks measure the command as
 * installed. Why this value: docs/architecture.md#runtime-settings.
 */
export const PRODUCT_V8_FLAGS = "--max-semi-space-size=1";

/** Absolute path of main.ts, for running `tvix-store` as a process. */
export const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** Runs `tvix-store ARGS…` to completion; its stdout, or an error with its stderr. */
export async function runTvix(args: string[]): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout);
}

/**
 * Writes `mib` MiB of random (incompressible) bytes under `root`, in files
 * of at most 64 MiB named `big0`, `big1`, …
 */
export async function writeRandomFiles(root: string, mib: number): Promise<void> {
  const MiB = 1024 * 1024;
  await Deno.mkdir(root, { recursive: true });
  const buf = new Uint8Array(MiB);
  for (let left = mib, n = 0; left > 0; n++) {
    const size = Math.min(64, left);
    using f = await Deno.open(`${root}/big${n}`, { write: true, create: true });
    for (let m = 0; m < size; m++) {
      for (let o = 0; o < MiB; o += 65536) crypto.getRandomValues(buf.subarray(o, o + 65536));
      for (let at = 0; at < MiB;) at += await f.write(buf.subarray(at));
    }
    left -= size;
  }
}

/** The number after `--<name>` on the command line, else `def`. */
export function numberArg(name: string, def: number): number {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Number(Deno.args[i + 1]) : def;
}

/** The word after `--<name>` on the command line, else `undefined`. */
export function stringArg(name: string): string | undefined {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Deno.args[i + 1] : undefined;
}

/**
 * Reads a child's output stream to its end (so the child never blocks on a
 * full pipe), keeping the last 20 lines in `tail`; `match` resolves with the
 * first line matching `pattern`, or rejects with the tail if the stream
 * ends first.
 */
export function watchLines(
  stream: ReadableStream<Uint8Array>,
  pattern: RegExp,
): { match: Promise<RegExpExecArray>; tail: string[] } {
  const tail: string[] = [];
  let resolveMatch!: (m: RegExpExecArray) => void;
  let rejectMatch!: (e: Error) => void;
  const match = new Promise<RegExpExecArray>((res, rej) => {
    resolveMatch = res;
    rejectMatch = rej;
  });
  (async () => {
    let buffer = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      buffer += text;
      let at;
      while ((at = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, at);
        buffer = buffer.slice(at + 1);
        tail.push(line);
        if (tail.length > 20) tail.shift();
        const m = pattern.exec(line);
        if (m) resolveMatch(m);
      }
    }
    rejectMatch(new Error(`process ended before printing ${pattern}:\n${tail.join("\n")}`));
  })();
  return { match, tail };
}

/** A memory figure of process `pid` in MiB: `VmHWM` (its peak) or `VmRSS` (now); NaN if absent. */
export function processMemMiB(pid: number, field: "VmHWM" | "VmRSS"): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(Deno.readTextFileSync(`/proc/${pid}/status`));
  return m ? Number(m[1]) / 1024 : NaN;
}

/**
 * Resets the peak (`VmHWM`) of `pid` to its current resident memory, so a
 * phase measures its own; false where that is not allowed (the peak then
 * counts from the process start).
 */
export function resetPeakRss(pid: number): boolean {
  try {
    Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

/** The median of `xs` (the mean of the middle two for an even count). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them. */
export function loadAverage(): string {
  try {
    return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  } catch {
    return "unknown";
  }
}

/**
 * Waits until the 1-minute load average is below `threshold`, for at most
 * `maxSecs`, so that a benchmark's next part does not start in the load
 * its previous part left (the average lags: from 1.5 to 0.5 takes about a
 * minute). Returns what it waited and the load it saw, for the report.
 */
export async function waitForQuiet(threshold = 0.5, maxSecs = 120): Promise<string> {
  const t0 = performance.now();
  const one = () => Number(loadAverage().split(" ")[0]);
  while (!(one() < threshold) && performance.now() - t0 < maxSecs * 1000) {
    await new Promise((r) => setTimeout(r, 2000));
  }
  const waited = ((performance.now() - t0) / 1000).toFixed(0);
  const load = loadAverage();
  return one() < threshold
    ? `waited ${waited} s for load below ${threshold}: ${load}`
    : `load still ${load} after ${waited} s (numbers below are weaker evidence)`;
}

/** Sends SIGTERM to each child still running and waits for all of them to end. */
export async function stopChildren(children: Deno.ChildProcess[]): Promise<void> {
  for (const c of children) {
    try {
      c.kill("SIGTERM");
    } catch { /* gone */ }
    await c.status;
  }
}
