/**
 * `tvix-store`: a content-addressed store for Nix. Subcommands run the gRPC
 * daemon, import paths, copy closures and mount the store through FUSE.
 *
 * Run: `deno run -A main.ts --help`.
 *
 * @module
 */
// Must be evaluated before anything creates an HTTP/2 session (grpc-js).
import "./src/grpc/h2_goaway_workaround.ts";
import { Command, Option } from "commander";
import { LOG_LEVELS, parseLogLevel, setLogLevel } from "./src/log.ts";
import { errorMessage } from "./src/errors.ts";
import { registerSubcommands } from "./src/cli/subcommands.ts";

/** Version printed by `--version`. */
export const VERSION = "0.1.0";

/** Builds the command-line program (exported for tests). */
export function buildProgram(): Command {
  const program = new Command("tvix-store")
    .description("content-addressed store for Nix: gRPC daemon, import, copy, FUSE mount")
    .version(VERSION)
    .addOption(
      new Option("--log-level <level>", `log level: ${LOG_LEVELS.join(", ")} (or 1-5)`)
        .env("TVIX_LOG_LEVEL")
        .default("info")
        .argParser(parseLogLevel),
    )
    .showHelpAfterError()
    .hook("preAction", (cmd) => setLogLevel(cmd.opts().logLevel));
  registerSubcommands(program);
  return program;
}

if (import.meta.main) {
  try {
    await buildProgram().parseAsync(["deno", "tvix-store", ...Deno.args]);
  } catch (err) {
    console.error(`error: ${errorMessage(err)}`);
    Deno.exit(1);
  }
}
