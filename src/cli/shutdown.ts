/**
 * How subcommands react to SIGINT and SIGTERM. Long-running ones
 * (`daemon`, `nar-bridge`) take the first as a request for an orderly
 * shutdown; one-shot ones (`import`, `copy`) end at once, with a clean
 * line and the shell's exit status for the signal.
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

/** Signal numbers, for the exit status a shell reports (128 + n). */
const SIGNAL_NUMBERS: Partial<Record<Deno.Signal, number>> = { SIGINT: 2, SIGTERM: 15 };

/**
 * For one-shot commands (`import`, `copy`): the first SIGINT or SIGTERM
 * erases any progress line, prints one line `interrupted` on stderr and
 * ends the process with the status a shell gives a killed command (130
 * for Ctrl-C, 143 for SIGTERM). What was stored so far stays: each path
 * becomes valid only once complete. Returns a function that removes the
 * listeners (the command is done).
 */
export function exitOnInterrupt(beforeExit: () => void): () => void {
  const handlers = STOP_SIGNALS.map((signal) => {
    const handler = () => {
      beforeExit();
      Deno.stderr.writeSync(new TextEncoder().encode("interrupted\n"));
      Deno.exit(128 + (SIGNAL_NUMBERS[signal] ?? 0));
    };
    Deno.addSignalListener(signal, handler);
    return [signal, handler] as const;
  });
  return () => {
    for (const [signal, handler] of handlers) Deno.removeSignalListener(signal, handler);
  };
}
