/**
 * Counting a child process's system calls with `strace -f -c`, for tests
 * that check how often something is done (flushes, opens) rather than how
 * long it takes.
 *
 * @module
 */

/** What {@linkcode countSyscalls} saw. */
export interface SyscallCounts {
  /** Exit code of the traced command. */
  code: number;
  stdout: string;
  stderr: string;
  /** How many times the command (with all its threads) made the call. */
  calls(name: string): number;
  /** strace's summary table, for failure messages. */
  table: string;
}

/** What strace wrote to its output file, and the traced command's own exit code and output. */
export interface Traced {
  code: number;
  stdout: string;
  stderr: string;
  /** strace's output: one line per call, or with `summary` its table. */
  output: string;
}

/** Options of {@linkcode traceSyscalls}. */
export interface TraceOptions {
  env?: Record<string, string>;
  clearEnv?: boolean;
  /** `strace -c`: a table of counts instead of one line per call. */
  summary?: boolean;
  /** `strace -y`: descriptors shown with the path they refer to. */
  paths?: boolean;
}

/** Runs `command` under `strace -f`, tracing the calls named in `syscalls`. */
export async function traceSyscalls(
  command: string[],
  syscalls: string[],
  options: TraceOptions = {},
): Promise<Traced> {
  const tmp = await Deno.makeTempFile({ prefix: "tvix-strace-" });
  try {
    const out = await new Deno.Command("strace", {
      args: [
        "-f",
        ...(options.summary ? ["-c"] : []),
        ...(options.paths ? ["-y"] : []),
        "-o",
        tmp,
        "-e",
        `trace=${syscalls.join(",")}`,
        ...command,
      ],
      env: options.env,
      clearEnv: options.clearEnv,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const td = new TextDecoder();
    return {
      code: out.code,
      stdout: td.decode(out.stdout),
      stderr: td.decode(out.stderr),
      output: await Deno.readTextFile(tmp),
    };
  } finally {
    await Deno.remove(tmp);
  }
}

/**
 * strace's lines of one call each: with `-f`, a call interrupted by another
 * thread's is written as `NAME(args <unfinished ...>` and later
 * `<... NAME resumed>rest`; those two are joined into the line the call
 * would have had alone.
 */
export function wholeCalls(output: string): string[] {
  const lines = output.split("\n");
  const out: string[] = [];
  const open = new Map<string, number>(); // pid -> index in out of its unfinished call
  for (const line of lines) {
    const pid = line.match(/^(\d+)\s/)?.[1] ?? "";
    const resumed = line.match(/<\.\.\. \w+ resumed>(.*)$/);
    if (resumed && open.has(pid)) {
      const at = open.get(pid)!;
      open.delete(pid);
      out[at] = out[at].replace(/ <unfinished \.\.\.>$/, "") + resumed[1];
      continue;
    }
    if (line.endsWith("<unfinished ...>")) open.set(pid, out.length);
    out.push(line);
  }
  return out;
}

/** Runs `command` under strace, counting the calls named in `syscalls`. */
export async function countSyscalls(
  command: string[],
  syscalls: string[],
  options: { env?: Record<string, string>; clearEnv?: boolean } = {},
): Promise<SyscallCounts> {
  const traced = await traceSyscalls(command, syscalls, { ...options, summary: true });
  const table = traced.output;
  return {
    code: traced.code,
    stdout: traced.stdout,
    stderr: traced.stderr,
    table,
    calls(name) {
      // Columns: % time, seconds, usecs/call, calls, [errors,] syscall.
      const line = table.split("\n").find((l) => l.trim().endsWith(` ${name}`));
      return line ? Number(line.trim().split(/\s+/)[3]) : 0;
    },
  };
}
