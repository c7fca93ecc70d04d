/**
 * `tvix-store mount <PATH>` (docs/compatibility.md#mount): the store as a read-only FUSE
 * filesystem. It serves in the foreground until Ctrl-C, SIGTERM or an
 * `umount PATH`. Before mounting it checks that the daemons it reads from
 * answer, so that a missing daemon is an error here rather than EIO on
 * every read later. The FUSE modules load when the command runs.
 *
 * @module
 */
import { type Command, Option } from "commander";
import { addClientServiceOptions, checkDaemonsReachable, parseByteSize } from "./common.ts";
import type { ServiceAddrs } from "../store/services.ts";
import { log, logEnabled } from "../log.ts";

function positiveInt(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n < 1 || n > 1024) {
    throw new Error(`invalid thread count ${JSON.stringify(text)} (1-1024)`);
  }
  return n;
}

/** Parses `--cache-size`: a byte size (fractions allowed, e.g. `1.5G`), at least 1 MiB. */
export function parseCacheSize(text: string): number {
  return parseByteSize(text, {
    what: "cache size",
    examples: "512M, 2G; at least 1M",
    min: 2 ** 20,
    fractions: true,
  });
}

/** Parses a boolean environment value the way clap does (true/false, 1/0, yes/no, on/off). */
function envBool(name: string): boolean {
  const v = Deno.env.get(name)?.trim().toLowerCase();
  if (v === undefined || v === "") return false;
  if (["1", "true", "yes", "y", "on"].includes(v)) return true;
  if (["0", "false", "no", "n", "off"].includes(v)) return false;
  throw new Error(`invalid boolean in ${name}: ${JSON.stringify(v)}`);
}

/** Adds the `mount` subcommand. */
export function register(program: Command): void {
  const cmd = program.command("mount")
    .description("mount the store as a read-only FUSE filesystem at PATH")
    .argument("<path>", "mountpoint");
  addClientServiceOptions(cmd);
  cmd
    .addOption(
      new Option("--threads <n>", "FUSE worker threads (one channel each)")
        .env("THREADS")
        .argParser(positiveInt)
        .default(navigator.hardwareConcurrency || 4),
    )
    .option(
      "--allow-other",
      "let other users access the mount (needs user_allow_other in /etc/fuse.conf) [env: ALLOW_OTHER]",
    )
    .addOption(
      new Option(
        "--cache-size <bytes>",
        "decompressed chunks kept in memory, shared by the threads (e.g. 512M, 2G; " +
          "default: 1/8 of RAM, 256M-4G)",
      ).argParser(parseCacheSize),
    )
    .option(
      "-l, --list-root",
      "let `ls` list the store paths at the mount root (without it, paths open only by name)",
    )
    .option("--show-xattr", "expose blob and directory digests as extended attributes", true)
    .option("--no-show-xattr", "do not expose digests as extended attributes")
    .option(
      "--no-pin-threads",
      "let the scheduler move the FUSE threads between CPUs (by default each is bound to one)",
    )
    .addHelpText(
      "after",
      "\nThe mount stays in the foreground; stop it with Ctrl-C or `umount PATH`.",
    )
    .action(async (
      path: string,
      opts: ServiceAddrs & {
        threads: number;
        cacheSize?: number;
        allowOther?: boolean;
        listRoot?: boolean;
        showXattr: boolean;
        pinThreads: boolean;
      },
      self: Command,
    ) => {
      await checkDaemonsReachable(opts, self);
      // The Workers load their own grpc-js, which would write its log lines
      // straight to stderr: its own verbosity setting keeps them quiet.
      if (
        !logEnabled("debug") && !Deno.env.get("GRPC_VERBOSITY") &&
        !Deno.env.get("GRPC_NODE_VERBOSITY")
      ) {
        Deno.env.set("GRPC_NODE_VERBOSITY", "NONE");
      }
      const { runMount } = await import("../fuse/mount.ts");
      log.info(
        `mounting ${path}; it stays in the foreground until Ctrl-C or \`umount ${path}\`` +
          (opts.listRoot ? "" : "; the root lists nothing without --list-root"),
      );
      const status = await runMount({
        mountpoint: path,
        addrs: {
          blobServiceAddr: opts.blobServiceAddr,
          directoryServiceAddr: opts.directoryServiceAddr,
          pathInfoServiceAddr: opts.pathInfoServiceAddr,
        },
        threads: opts.threads,
        sharedCacheBytes: opts.cacheSize,
        allowOther: opts.allowOther === true || envBool("ALLOW_OTHER"),
        listRoot: opts.listRoot === true,
        showXattr: opts.showXattr,
        pinThreads: opts.pinThreads,
      });
      Deno.exit(status);
    });
}
