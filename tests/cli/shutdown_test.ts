import { assertEquals } from "../assert.ts";
import { childEnv, readLines } from "./helpers.ts";

const CHILD = new URL("./shutdown_child.ts", import.meta.url).pathname;

/** Runs the child in `mode`; `next()` waits for its next stdout line. */
function spawnChild(mode: "once" | "repeat") {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", CHILD, mode],
    env: childEnv(),
    clearEnv: true,
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines: string[] = [];
  const waiting: ((line: string | undefined) => void)[] = [];
  const done = readLines(child.stdout, (line) => {
    const w = waiting.shift();
    if (w) w(line);
    else lines.push(line);
  }).then(() => {
    for (const w of waiting.splice(0)) w(undefined);
  });
  const next = (): Promise<string | undefined> =>
    lines.length > 0
      ? Promise.resolve(lines.shift())
      : new Promise((resolve) => waiting.push(resolve));
  return { child, next, done };
}

Deno.test("onStopSignal: the first signal resolves; without onRepeat a second one kills", async () => {
  const { child, next, done } = spawnChild("once");
  await child.stdin.close();
  assertEquals(await next(), "ready");
  child.kill("SIGINT");
  assertEquals(await next(), "signal SIGINT");
  child.kill("SIGINT");
  const status = await child.status;
  await done;
  assertEquals(status.signal, "SIGINT");
});

Deno.test("onStopSignal: repeats call onRepeat until disposed", async () => {
  const { child, next, done } = spawnChild("repeat");
  assertEquals(await next(), "ready");
  child.kill("SIGTERM");
  assertEquals(await next(), "signal SIGTERM");
  child.kill("SIGINT");
  assertEquals(await next(), "repeat SIGINT");
  child.kill("SIGTERM");
  assertEquals(await next(), "repeat SIGTERM");
  await child.stdin.close();
  assertEquals(await next(), "disposed");
  // With the listeners gone, SIGTERM has its default effect.
  child.kill("SIGTERM");
  const status = await child.status;
  await done;
  assertEquals(status.signal, "SIGTERM");
});
