/**
 * Child process for `shutdown_test.ts`: reports on stdout what
 * {@linkcode onStopSignal} does with the signals the test sends.
 *
 * `repeat` mode passes a repeat callback, reports each repeat, and disposes
 * the listeners once stdin closes; `once` mode passes none. Either way the
 * process then stays up (an interval keeps it alive) until a signal without
 * a listener ends it.
 *
 * @module
 */
import { onStopSignal } from "../../src/cli/shutdown.ts";

const te = new TextEncoder();
const say = (line: string) => Deno.stdout.writeSync(te.encode(line + "\n"));

// Keeps the event loop alive whatever the listeners do.
setInterval(() => {}, 60_000);

const mode = Deno.args[0];
const stop = onStopSignal(mode === "repeat" ? (s) => say(`repeat ${s}`) : undefined);
say("ready");
say(`signal ${await stop.signal}`);
if (mode === "repeat") {
  // The test closes stdin once it has seen the repeats it wanted.
  for await (const _ of Deno.stdin.readable) { /* drain */ }
  stop.dispose();
  stop.dispose();
  say("disposed");
}
