/**
 * Runs a command on a pseudo-terminal, as a person at a terminal would:
 * python3's `pty` module gives it a terminal of 120 columns as stdin,
 * stdout and stderr, and can press Ctrl-C (the terminal then sends SIGINT
 * to the command, as a real one does) once the output matches a pattern.
 * Also reduces raw terminal output to the lines a screen would show.
 *
 * @module
 */
import { childEnv } from "./helpers.ts";

const PTY_RUNNER = `
import fcntl, json, os, pty, re, select, signal, struct, sys, termios, time
spec = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    os.execvp(spec["argv"][0], spec["argv"])
out = b""
pressed = False
pattern = spec.get("ctrlCAfter")
deadline = time.time() + spec["timeoutSeconds"]
while time.time() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.05)
    if ready:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
    if pattern and not pressed and re.search(pattern.encode(), out):
        os.write(fd, b"\\x03")
        pressed = True
else:
    os.kill(pid, signal.SIGKILL)
_, status = os.waitpid(pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "output": out.decode("utf-8", "replace"), "pressed": pressed}))
`;

/** What {@linkcode runOnPty} saw. */
export interface PtyResult {
  /** Exit status; negative if a signal killed the command. */
  code: number;
  /** Everything written to the terminal, raw (escape sequences, `\r\n`). */
  output: string;
  /** Whether Ctrl-C was pressed. */
  pressed: boolean;
}

/**
 * Runs `argv` on a pseudo-terminal with {@linkcode childEnv} plus `env`;
 * with `ctrlCAfter`, presses Ctrl-C once the output matches it. Gives up
 * (SIGKILL) after `timeoutSeconds` (default 120).
 */
export async function runOnPty(
  argv: string[],
  opts: { env?: Record<string, string>; ctrlCAfter?: RegExp; timeoutSeconds?: number } = {},
): Promise<PtyResult> {
  const spec = {
    argv,
    ctrlCAfter: opts.ctrlCAfter?.source,
    timeoutSeconds: opts.timeoutSeconds ?? 120,
  };
  const out = await new Deno.Command("python3", {
    args: ["-c", PTY_RUNNER, JSON.stringify(spec)],
    env: childEnv(opts.env),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`the pty runner failed (${out.code})`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/**
 * The lines a terminal shows after `output`: `\r` returns to the line's
 * start, ESC[2K erases the line, other escape sequences are dropped.
 */
export function screenLines(output: string): string[] {
  const lines: string[] = [];
  let line = "";
  let col = 0;
  const put = (ch: string) => {
    line = line.slice(0, col) + ch + line.slice(col + 1);
    col++;
  };
  for (let i = 0; i < output.length; i++) {
    const ch = output[i];
    if (ch === "\n") {
      lines.push(line);
      line = "";
      col = 0;
    } else if (ch === "\r") col = 0;
    else if (ch === "\x1b" && output[i + 1] === "[") {
      // A control sequence: ESC [, parameters, then a letter.
      let end = i + 2;
      while (end < output.length && !/[A-Za-z]/.test(output[end])) end++;
      if (output.slice(i + 2, end + 1) === "2K") line = "";
      i = end;
    } else put(ch);
  }
  if (line !== "") lines.push(line);
  return lines;
}
