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
import { register as registerList } from "./list.ts";
import { register as registerInfo } from "./info.ts";
import { register as registerDelete } from "./delete.ts";
import { register as registerGc } from "./gc.ts";
import { register as registerVerify } from "./verify.ts";

/** Adds every subcommand to `program`. */
export function registerSubcommands(program: Command): void {
  registerDaemon(program);
  registerImport(program);
  registerCopy(program);
  registerNarBridge(program);
  registerMount(program);
  registerList(program);
  registerInfo(program);
  registerDelete(program);
  registerGc(program);
  registerVerify(program);
}
