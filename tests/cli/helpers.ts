/**
 * Runs `tvix-store` (main.ts) as real processes for the tests: one-shot
 * subcommands to completion, long-running ones (daemon, nar-bridge) until
 * they log their bound address; plus the service flags of an embedded store
 * in a temp dir.
 *
 * @module
 */
import { serviceAddrArgs } from "../../src/cli/common.ts";
import { embeddedAddrs } from "../../src/store/services.ts";

/** Absolute path of main.ts. */
export const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const td = new TextDecoder();

/**
 * Environment for child processes: `extra` plus only PATH, HOME and
 * DENO_DIR (pass `clearEnv: true`), so stray `*_SERVICE_ADDR` variables
 * cannot change the backends.
 */
export function childEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {
    NO_COLOR: "1",
    // Caches (the importer's stat cache) go to a directory of this test
    // run, not the user's; Deno's own cache must then be named explicitly.
    XDG_CACHE_HOME: TEST_CACHE_HOME,
    DENO_DIR,
  };
  for (const k of ["PATH", "HOME"]) {
    const v = Deno.env.get(k);
    if (v !== undefined) env[k] = v;
  }
  return { ...env, ...extra };
}

/**
 * Deno's own cache directory: it defaults to one under XDG_CACHE_HOME,
 * which child processes get pointed elsewhere.
 */
export const DENO_DIR: string = Deno.env.get("DENO_DIR") ?? JSON.parse(
  new TextDecoder().decode(
    (await new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stdout: "piped" })
      .output())
      .stdout,
  ),
).denoDir;

/** XDG_CACHE_HOME of child processes: one directory per test process, removed at exit. */
const TEST_CACHE_HOME = Deno.makeTempDirSync({ prefix: "tvix-test-cache-" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(TEST_CACHE_HOME, { recursive: true });
  } catch { /* already gone */ }
});

/** Reads a byte stream as lines, handing each to `onLine`. Resolves at EOF. */
export async function readLines(
  stream: ReadableStream<Uint8Array>,
  onLine: (line: string) => void,
): Promise<void> {
  let buffered = "";
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    buffered += text;
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      onLine(buffered.slice(0, nl));
      buffered = buffered.slice(nl + 1);
    }
  }
  if (buffered) onLine(buffered);
}

/** Runs `tvix-store ARGS...` with `env` added; returns exit code, stdout and stderr. */
export async function tvixStore(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: childEnv(env),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: td.decode(out.stdout), stderr: td.decode(out.stderr) };
}

/** A running `tvix-store` server process (daemon, nar-bridge). */
export interface ServerProcess {
  /** The address it logged in its ` listening address=<addr>` line. */
  address: string;
  /** The process. */
  child: Deno.ChildProcess;
  /** Everything it logged so far. */
  log(): string;
  /** The exit status if the process has ended (without being stopped by the test). */
  exitStatus(): Deno.CommandStatus | undefined;
  /** Sends `signal` (default SIGTERM) and waits for the exit; returns the status and how long it took. */
  stop(signal?: Deno.Signal): Promise<{ status: Deno.CommandStatus; ms: number }>;
}

/** Options of {@linkcode startServer}. */
export interface ServerOptions {
  /** Names the process in the error if it exits before listening. */
  name: string;
  /** Extra environment (on top of {@linkcode childEnv}). */
  env?: Record<string, string>;
  /** Working directory. */
  cwd?: string;
}

/**
 * Starts `tvix-store ARGS...` and resolves once a stderr line matches
 * ` listening address=<addr>`; fails with its log if the process exits
 * first. Its stderr is drained (and kept for `log()`) until it exits.
 */
export async function startServer(args: string[], opts: ServerOptions): Promise<ServerProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: childEnv(opts.env),
    cwd: opts.cwd,
    clearEnv: true,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let text = "";
  let resolveAddr!: (a: string) => void;
  const addr = new Promise<string>((r) => (resolveAddr = r));
  const drained = readLines(child.stderr, (line) => {
    text += line + "\n";
    const m = / listening address=(\S+)/.exec(line);
    if (m) resolveAddr(m[1]);
  });
  const exited = child.status.then((s) => {
    throw new Error(`${opts.name} exited early (${s.code}):\n${text}`);
  });
  let address: string;
  try {
    address = await Promise.race([addr, exited]);
  } catch (err) {
    await drained;
    throw err;
  }
  exited.catch(() => {});
  let exitStatus: Deno.CommandStatus | undefined;
  child.status.then((s) => (exitStatus = s));
  let stopped: Promise<{ status: Deno.CommandStatus; ms: number }> | undefined;
  return {
    address,
    child,
    log: () => text,
    exitStatus: () => exitStatus,
    stop(signal: Deno.Signal = "SIGTERM") {
      stopped ??= (async () => {
        const t0 = performance.now();
        try {
          child.kill(signal);
        } catch { /* already gone */ }
        const status = await child.status;
        const ms = performance.now() - t0;
        await drained;
        return { status, ms };
      })();
      return stopped;
    },
  };
}

/** Service flags for an embedded store under `dir` (the daemon's layout, {@linkcode embeddedAddrs}). */
export function localStoreArgs(dir: string): string[] {
  return serviceAddrArgs(embeddedAddrs(dir));
}

/** Service flags pointing all three services at the daemon at `url` (`grpc+http://…`). */
export function remoteStoreArgs(url: string): string[] {
  return serviceAddrArgs({
    blobServiceAddr: url,
    directoryServiceAddr: url,
    pathInfoServiceAddr: url,
  });
}

/**
 * `deno run` permissions for a CLI run without FFI (read, write, env, net
 * and sys only), so the code paths for sandboxes without it are taken.
 */
export const NO_FFI_PERMISSIONS: readonly string[] = [
  "--no-prompt",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-net",
  "--allow-sys",
];

/** What {@linkcode tracedImport} saw. */
export interface TracedImport {
  /** The store path printed. */
  stdout: string;
  /** openat lines of files under the tree read by path or by name relative to a directory. */
  opened: string[];
}

/**
 * Runs `tvix-store import` of `tree` under strace (openat only) with the
 * given Deno permissions and service flags, the stat cache in `cacheHome`;
 * fails unless it exits 0. Returns the files under the tree it opened for
 * reading, by path or by name relative to a directory descriptor (what the
 * FFI walk does); directories and failed opens left out.
 */
export async function tracedImport(
  tree: string,
  opts: { permissions: string[]; serviceArgs: string[]; cacheHome: string; traceTo: string },
): Promise<TracedImport> {
  const out = await new Deno.Command("strace", {
    args: [
      "-f",
      "-qq",
      "-e",
      "trace=openat",
      "-o",
      opts.traceTo,
      Deno.execPath(),
      "run",
      ...opts.permissions,
      MAIN,
      "import",
      ...opts.serviceArgs,
      tree,
    ],
    env: childEnv({ XDG_CACHE_HOME: opts.cacheHome }),
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (out.code !== 0) throw new Error(`import exited ${out.code}: ${td.decode(out.stderr)}`);
  const opened = (await Deno.readTextFile(opts.traceTo)).split("\n").filter((l) =>
    (l.includes(`openat(AT_FDCWD, "${tree}/`) || /openat\(\d+, "/.test(l)) &&
    !l.includes("O_DIRECTORY") && !l.includes("= -1")
  );
  return { stdout: td.decode(out.stdout).trim(), opened };
}
