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

/** Runs `command` under strace, counting the calls named in `syscalls`. */
export async function countSyscalls(
  command: string[],
  syscalls: string[],
  options: { env?: Record<string, string>; clearEnv?: boolean } = {},
): Promise<SyscallCounts> {
  const tmp = await Deno.makeTempFile({ prefix: "tvix-strace-" });
  try {
    const out = await new Deno.Command("strace", {
      args: ["-f", "-c", "-o", tmp, "-e", `trace=${syscalls.join(",")}`, ...command],
      env: options.env,
      clearEnv: options.clearEnv,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const table = await Deno.readTextFile(tmp);
    const td = new TextDecoder();
    return {
      code: out.code,
      stdout: td.decode(out.stdout),
      stderr: td.decode(out.stderr),
      table,
      calls(name) {
        // Columns: % time, seconds, usecs/call, calls, [errors,] syscall.
        const line = table.split("\n").find((l) => l.trim().endsWith(` ${name}`));
        return line ? Number(line.trim().split(/\s+/)[3]) : 0;
      },
    };
  } finally {
    await Deno.remove(tmp);
  }
}
