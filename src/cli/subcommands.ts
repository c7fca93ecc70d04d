/**
 * The list of subcommands. Each lives in its own file beside this one,
 * exporting a `register(program)` function; a run loads only the module of
 * the subcommand it names (and `--help`, `--version` load none), so that
 * start-up does not pay for the daemon, the mount and every backend.
 *
 * The table repeats each subcommand's arguments and description for the
 * top-level help; tests/cli/first_day_test.ts checks it against what the
 * modules register.
 *
 * @module
 */
import type { Command } from "commander";

/** What a subcommand module exports. */
export interface SubcommandModule {
  /** Adds the subcommand, with its options and action, to `program`. */
  register(program: Command): void;
}

/** One subcommand: what the top-level help says about it, and where it lives. */
export interface Subcommand {
  name: string;
  /** Its arguments as its usage line shows them, e.g. `<paths...>`. */
  args: string;
  description: string;
  /** Imports the module that registers it. */
  load(): Promise<SubcommandModule>;
}

/** Every subcommand, in the order the help lists them. */
export const SUBCOMMANDS: readonly Subcommand[] = [
  {
    name: "daemon",
    args: "",
    description: "run the gRPC server (BlobService, DirectoryService, PathInfoService)",
    load: () => import("./daemon.ts"),
  },
  {
    name: "import",
    args: "<paths...>",
    description: "import local paths as content-addressed store paths (like nix-store --add)",
    load: () => import("./import.ts"),
  },
  {
    name: "copy",
    args: "[json-file]",
    description:
      "copy a closure from /nix/store (nix path-info --json -r, or exportReferencesGraph)",
    load: () => import("./copy.ts"),
  },
  {
    name: "nar-bridge",
    args: "",
    description: "serve the store as a Nix HTTP binary cache (narinfo, NARs, uploads)",
    load: () => import("./nar_bridge.ts"),
  },
  {
    name: "mount",
    args: "<path>",
    description: "mount the store as a read-only FUSE filesystem at PATH",
    load: () => import("./mount.ts"),
  },
  {
    name: "list",
    args: "",
    description: "list every store path in the store",
    load: () => import("./list.ts"),
  },
  {
    name: "info",
    args: "<paths...>",
    description: "show NAR size and hash, references, referrers and deduplication of store paths",
    load: () => import("./info.ts"),
  },
  {
    name: "delete",
    args: "<paths...>",
    description: "remove store paths (their data goes at the next gc)",
    load: () => import("./delete.ts"),
  },
  {
    name: "gc",
    args: "",
    description: "remove data no store path reaches, and give its space back",
    load: () => import("./gc.ts"),
  },
  {
    name: "verify",
    args: "",
    description: "check every store path against its stored data; exit non-zero on damage",
    load: () => import("./verify.ts"),
  },
];

/**
 * The subcommand `args` (the command line after the program name) runs, or
 * shows help for (`help NAME`), read the way commander reads it: options of
 * the program itself (`valueOptions` take a value, as `--log-level debug`
 * or `--log-level=debug`) come first, then the subcommand's name.
 * `undefined` when no known subcommand is named or an option is not the
 * program's: then every subcommand is loaded and commander decides.
 */
export function findSubcommand(
  args: readonly string[],
  valueOptions: readonly string[],
  flagOptions: readonly string[],
): Subcommand | undefined {
  let i = 0;
  while (i < args.length && args[i].startsWith("-")) {
    const arg = args[i];
    if (valueOptions.includes(arg)) i += 2;
    else if (valueOptions.some((o) => arg.startsWith(`${o}=`)) || flagOptions.includes(arg)) i++;
    else return undefined;
  }
  let name = args[i];
  if (name === "help") name = args[i + 1];
  return SUBCOMMANDS.find((s) => s.name === name);
}

/** Registers `only`, or every subcommand, on `program`. */
export async function registerSubcommands(program: Command, only?: Subcommand): Promise<void> {
  const modules = await Promise.all((only ? [only] : SUBCOMMANDS).map((s) => s.load()));
  for (const m of modules) m.register(program);
}

/** The parts of the top-level help that the program itself (main.ts) supplies. */
export interface ProgramHelp {
  usage: string;
  description: string;
  /** Its options: term (`--log-level <level>`) and description. */
  options: [string, string][];
  /** Lines after the list of commands. */
  footer: string[];
}

/**
 * The top-level help: the program's options, each subcommand with its
 * usage and description, then the footer; descriptions wrapped to `width`
 * columns. Printed without loading commander or any subcommand.
 */
export function formatTopLevelHelp(program: ProgramHelp, width: number): string {
  const commands: [string, string][] = SUBCOMMANDS.map((s) => [
    `${s.name} [options]${s.args ? ` ${s.args}` : ""}`,
    s.description,
  ]);
  commands.push(["help [command]", "display help for command"]);
  const termWidth = Math.max(...[...program.options, ...commands].map(([t]) => t.length));
  const item = ([term, desc]: [string, string]) => {
    const indent = 2 + termWidth + 2;
    const lines = wrap(desc, Math.max(width - indent, 30));
    return `  ${term.padEnd(termWidth)}  ${lines.join(`\n${" ".repeat(indent)}`)}`;
  };
  return [
    `Usage: ${program.usage}`,
    "",
    program.description,
    "",
    "Options:",
    ...program.options.map(item),
    "",
    "Commands:",
    ...commands.map(item),
    "",
    ...program.footer,
    "",
  ].join("\n");
}

/** Splits `text` into lines of at most `width` characters, at spaces. */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  lines.push(line);
  return lines;
}
