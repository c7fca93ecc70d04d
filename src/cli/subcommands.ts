/**
 * The list of subcommands; each lives in its own file beside this one and
 * exports a `register(program)` function.
 *
 * @module
 */
import type { Command } from "commander";
import { register as registerDaemon } from "./daemon.ts";
import { register as registerImport } from "./import.ts";
import { register as registerCopy } from "./copy.ts";
import { register as registerNarBridge } from "./nar_bridge.ts";
import { register as registerMount } from "./mount.ts";

/** Adds every subcommand to `program`. */
export function registerSubcommands(program: Command): void {
  // Subcommands register here as they land: daemon, import, copy, mount.
  registerDaemon(program);
  registerImport(program);
  registerCopy(program);
  registerNarBridge(program);
  registerMount(program);
  void program;
}
