/**
 * `tvix-store`: a content-addressed store for Nix. Subcommands run the gRPC
 * daemon, import paths, copy closures, mount the store through FUSE and
 * serve it as a Nix binary cache.
 *
 * Run: `deno run -A main.ts --help` (or `tvix-store --help` once
 * `deno task install` has put the command on PATH).
 *
 * Start-up loads as little as it can: `--version` and the top-level help
 * load neither commander nor any subcommand, and a subcommand loads only
 * its own module (src/cli/subcommands.ts).
 *
 * @module
 */
import type { Command } from "commander";
import { LOG_LEVELS, parseLogLevel, setLogLevel } from "./src/log.ts";
import { errorMessage } from "./src/errors.ts";
import { findSubcommand, formatTopLevelHelp, type ProgramHelp } from "./src/cli/subcommands.ts";

/** Version printed by `--version`. */
export const VERSION = "0.1.0";

const DESCRIPTION =
  "content-addressed store for Nix: gRPC daemon, import, copy, FUSE mount, binary cache";
const LOG_LEVEL_HELP = `log level: ${LOG_LEVELS.join(", ")} (or 1-5)`;

/** The program's own options, as {@linkcode findSubcommand} needs to skip them. */
const VALUE_OPTIONS = ["--log-level"];
const FLAG_OPTIONS = ["-V", "--version", "-h", "--help"];

/** What the top-level help says besides the subcommands. */
const PROGRAM_HELP: ProgramHelp = {
  usage: "tvix-store [options] [command]",
  description: DESCRIPTION,
  options: [
    ["-V, --version", "output the version number"],
    ["--log-level <level>", `${LOG_LEVEL_HELP} (default: "info", env: TVIX_LOG_LEVEL)`],
    ["-h, --help", "display help for command"],
  ],
  footer: [
    "First steps (each long-running command stays in the foreground until Ctrl-C):",
    "  tvix-store daemon                       serve the store on [::1]:8000",
    "  tvix-store import PATH                  (in a second terminal) add a path",
    "  tvix-store mount --list-root /mnt/tvix  browse it (umount /mnt/tvix also stops it)",
    "Run 'tvix-store help COMMAND' for the options of a command.",
  ],
};

function helpWidth(): number {
  return Deno.stdout.isTerminal() ? Deno.consoleSize().columns : 80;
}

/**
 * Builds the command-line program for `args`: with the subcommand they
 * name, or with all of them if they name none (exported for tests).
 */
export async function buildProgram(args: readonly string[]): Promise<Command> {
  // The HTTP/2 workarounds (src/grpc/h2_*.ts) come with the modules that
  // open gRPC channels and servers, so a command that makes no gRPC call
  // never loads node:http2.
  const [{ Command, Help, Option }, { registerSubcommands }, { usageOf }] = await Promise.all([
    import("commander"),
    import("./src/cli/subcommands.ts"),
    import("./src/cli/common.ts"),
  ]);
  const program: Command = new Command("tvix-store")
    .description(DESCRIPTION)
    .version(VERSION)
    .addOption(
      new Option("--log-level <level>", LOG_LEVEL_HELP)
        .env("TVIX_LOG_LEVEL")
        .default("info")
        .argParser(parseLogLevel),
    )
    .configureHelp({
      // The top-level help is the one printed without commander, so both agree.
      formatHelp: (cmd, helper): string =>
        cmd === program
          ? formatTopLevelHelp(PROGRAM_HELP, helpWidth())
          : Help.prototype.formatHelp.call(helper, cmd, helper),
    })
    .hook("preAction", () => {
      setLogLevel(program.opts().logLevel);
    });
  await registerSubcommands(program, findSubcommand(args, VALUE_OPTIONS, FLAG_OPTIONS));
  // Errors stay one line; a missing argument also says how the command is used.
  for (const cmd of [program, ...program.commands]) {
    cmd.configureOutput({
      outputError: (text: string, write: (text: string) => void) =>
        write(oneLineError(text, cmd === program ? undefined : usageOf(cmd))),
    });
  }
  return program;
}

/**
 * A commander error as one line: its "(Did you mean …?)" hint joined on,
 * and the usage after a missing argument.
 */
function oneLineError(text: string, usage?: string): string {
  let line = text.trimEnd().replace(/\n\((Did you mean .*)\)$/, (_, hint) => ` (${hint})`);
  if (usage && line.startsWith("error: missing required argument")) line += ` (usage: ${usage})`;
  return `${line}\n`;
}

/** Answers `--version` and the top-level help without building the program; false if not asked. */
function answerEarly(args: readonly string[]): boolean {
  const te = new TextEncoder();
  if (args.length === 1 && (args[0] === "-V" || args[0] === "--version")) {
    Deno.stdout.writeSync(te.encode(`${VERSION}\n`));
    return true;
  }
  if (args.length === 0) {
    // As commander does: help, on stderr, and a failure status.
    Deno.stderr.writeSync(te.encode(formatTopLevelHelp(PROGRAM_HELP, helpWidth())));
    Deno.exit(1);
  }
  if (args.length === 1 && ["-h", "--help", "help"].includes(args[0])) {
    Deno.stdout.writeSync(te.encode(formatTopLevelHelp(PROGRAM_HELP, helpWidth())));
    return true;
  }
  return false;
}

if (import.meta.main) {
  try {
    if (!answerEarly(Deno.args)) {
      // Loaded here, not statically, so --version and the help stay without FFI.
      (await import("./src/malloc_tuning.ts")).tuneMalloc();
      const program = await buildProgram(Deno.args);
      await program.parseAsync(["deno", "tvix-store", ...Deno.args]);
    }
  } catch (err) {
    console.error(`error: ${errorMessage(err)}`);
    Deno.exit(1);
  }
}
