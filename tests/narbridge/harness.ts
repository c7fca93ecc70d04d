/**
 * Runs `tvix-store` subcommands as real processes for the nar-bridge tests:
 * long-running ones (daemon, nar-bridge) on port 0, ready once they log
 * their address, and one-shot ones (import).
 *
 * @module
 */
import {
  childEnv,
  MAIN,
  startServer as startServerProcess,
  tvixStore as runTvixStore,
} from "../cli/helpers.ts";

/** A running `tvix-store` server process. */
export interface Server {
  /** The `host:port` it logged. */
  address: string;
  /** Everything it logged so far. */
  log(): string;
  /** SIGTERM, then waits for the exit. */
  stop(): Promise<Deno.CommandStatus>;
}

/**
 * Starts `tvix-store <args>` and resolves once a stderr line matches
 * ` listening address=<addr>`; fails if the process exits first.
 */
export async function startServer(args: string[]): Promise<Server> {
  const server = await startServerProcess(args, { name: `tvix-store ${args[0]}` });
  return {
    address: server.address,
    log: server.log,
    stop: async () => (await server.stop()).status,
  };
}

/** Runs `tvix-store <args>` to completion; throws with its stderr unless it succeeds. */
export async function tvixStore(args: string[]): Promise<string> {
  const out = await runTvixStore(args);
  if (out.code !== 0) {
    throw new Error(`tvix-store ${args.join(" ")} failed (${out.code}): ${out.stderr}`);
  }
  return out.stdout;
}

/**
 * Polls `probe` every 50 ms until it returns a value (a log line appearing,
 * say); fails after 10 s naming `what`.
 */
export async function waitFor<T>(probe: () => T | undefined, what: string): Promise<T> {
  for (let i = 0; i < 200; i++) {
    const v = probe();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function isMounted(path: string): boolean {
  return Deno.readTextFileSync("/proc/self/mounts").split("\n").some((l) =>
    l.split(" ")[1] === path
  );
}

/** A running `tvix-store mount`. */
export interface Mount {
  mountpoint: string;
  /** SIGTERM, waits for the exit, makes sure the mount is gone and removes the mountpoint. */
  stop(): Promise<void>;
}

/**
 * Starts `tvix-store mount <tmp> <args>` and resolves once the mount shows
 * up in /proc/self/mounts (polled; fails if the process exits first).
 */
export async function startMount(args: string[]): Promise<Mount> {
  const mountpoint = await Deno.makeTempDir({ prefix: "narbridge-mnt-" });
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "mount", mountpoint, ...args],
    env: childEnv({}),
    clearEnv: true,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let exited: Deno.CommandStatus | undefined;
  const status = child.status.then((s) => (exited = s));
  // A generous bound, so a mount that never appears fails with its log instead of hanging.
  const giveUp = Date.now() + 60_000;
  while (!isMounted(mountpoint)) {
    if (exited || Date.now() > giveUp) {
      if (!exited) child.kill("SIGKILL");
      await status;
      await Deno.remove(mountpoint).catch(() => {});
      throw new Error(`mount did not come up (${exited?.code}):\n${await stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    mountpoint,
    stop: async () => {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      await status;
      await stderr;
      if (isMounted(mountpoint)) {
        await new Deno.Command("umount", { args: ["-l", mountpoint] }).output();
      }
      await Deno.remove(mountpoint).catch(() => {});
    },
  };
}
