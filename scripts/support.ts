/**
 * Plumbing shared by the benchmark scripts: where main.ts is, numeric
 * command-line options, and waiting for a child process to print a line.
 * (Not named `bench_*`, so `scripts/bench.ts` does not run it.)
 *
 * @module
 */

/** Absolute path of main.ts, for running `tvix-store` as a process. */
export const MAIN = new URL("../main.ts", import.meta.url).pathname;

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
