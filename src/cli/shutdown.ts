/**
 * How long-running subcommands (`daemon`, `nar-bridge`) learn that they
 * should stop: the first SIGINT or SIGTERM asks for an orderly shutdown.
 *
 * @module
 */

/** The signals that ask a long-running subcommand to stop. */
const STOP_SIGNALS: readonly Deno.Signal[] = ["SIGINT", "SIGTERM"];

/** What {@linkcode onStopSignal} returns. */
export interface StopSignal {
  /** Resolves with the first stop signal received. */
  readonly signal: Promise<Deno.Signal>;
  /**
   * Removes the listeners (again is harmless); a stop signal after this
   * gets the default action, ending the process.
   */
  dispose(): void;
}

/**
 * Listens for SIGINT and SIGTERM; `signal` resolves on the first.
 *
 * With `onRepeat`, the listeners stay until {@linkcode StopSignal.dispose}
 * and every later stop signal calls it (e.g. to cut a slow shutdown short).
 * Without it, the listeners go at the first signal, so a second one ends the
 * process at once, as if nobody listened.
 */
export function onStopSignal(onRepeat?: (signal: Deno.Signal) => void): StopSignal {
  const { promise, resolve } = Promise.withResolvers<Deno.Signal>();
  let seen = false;
  let listening = true;
  const handlers = STOP_SIGNALS.map((signal) => {
    const handler = () => {
      if (seen) return onRepeat?.(signal);
      seen = true;
      if (!onRepeat) dispose();
      resolve(signal);
    };
    Deno.addSignalListener(signal, handler);
    return [signal, handler] as const;
  });
  function dispose(): void {
    if (!listening) return;
    listening = false;
    for (const [signal, handler] of handlers) Deno.removeSignalListener(signal, handler);
  }
  return { signal: promise, dispose };
}
