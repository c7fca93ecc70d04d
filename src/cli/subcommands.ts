/**
 * The list of subcommands; each lives in its own file beside this one and
 * exports a `register(program)` function.
 *
 * @module
 */
import type { Command } from "commander";

/** Adds every subcommand to `program`. */
export function registerSubcommands(program: Command): void {
  // Subcommands register here as they land: daemon, import, copy, mount.
  void program;
}
