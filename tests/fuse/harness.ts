/**
 * Test plumbing for the FUSE tests: a local store in a temp dir (SQLite +
 * object store), a `tvix-store mount` process on a temp mountpoint, and a
 * check for `/dev/fuse`.
 *
 * @module
 */
import { join } from "node:path";
import { constructServices, type ServiceAddrs, type Services } from "../../src/store/services.ts";
import { mountAt, readaheadFile } from "../../src/fuse/mountinfo.ts";

/** The program's entry point. */
export const MAIN = new URL("../../main.ts", import.meta.url).pathname;

/** Why FUSE tests cannot run here, or `undefined` if they can. */
export function fuseUnavailable(): string | undefined {
  try {
    Deno.statSync("/dev/fuse");
  } catch {
    return "/dev/fuse is absent: FUSE tests skipped";
  }
  return undefined;
}

/** Whether FUSE tests are skipped (logs why, once). */
export const SKIP = (() => {
  const why = fuseUnavailable();
  if (why) console.warn(why);
  return why !== undefined;
})();

/** A local store under a temp dir. */
export interface TempStore {
  dir: string;
  addrs: ServiceAddrs;
  /** Opens the services (close them when done). */
  open(): Promise<Services>;
  /** Removes the temp dir. */
  remove(): Promise<void>;
}

/** Creates an empty local store (SQLite metadata, object-store blobs) in a temp dir. */
export async function tempStore(): Promise<TempStore> {
  const dir = await Deno.makeTempDir({ prefix: "tvix-fuse-store-" });
  const db = `sqlite://${join(dir, "store.sqlite")}`;
  const addrs = {
    blobServiceAddr: `objectstore+file://${join(dir, "blobs")}`,
    directoryServiceAddr: db,
    pathInfoServiceAddr: db,
  };
  return {
    dir,
    addrs,
    open: () => constructServices(addrs),
    remove: () => Deno.remove(dir, { recursive: true }),
  };
}

/** Flags naming the three services. */
export function addrFlags(addrs: ServiceAddrs): string[] {
  return [
    `--blob-service-addr=${addrs.blobServiceAddr}`,
    `--directory-service-addr=${addrs.directoryServiceAddr}`,
    `--path-info-service-addr=${addrs.pathInfoServiceAddr}`,
  ];
}

/** Whether `path` is currently a mountpoint of a tvix-store FUSE filesystem. */
export function isMounted(path: string): boolean {
  const e = mountAt(path);
  return e?.fsType === "fuse" && e.source === "tvix-store";
}

/**
 * The kernel readahead (KiB, as sysfs spells it) of the mount at
 * `mountpoint` once it reads `kb`, or what it still read after `polls`
 * reads 20 ms apart: the mount raises it once its Workers are told to
 * serve. Counted in polls, not in time, so that a loaded machine, whose
 * timers fire late, waits longer.
 */
export async function readaheadOnceSet(
  mountpoint: string,
  kb: string,
  polls: number,
): Promise<string> {
  const file = readaheadFile(mountAt(mountpoint)!);
  let now = Deno.readTextFileSync(file).trim();
  for (let i = 1; i < polls && now !== kb; i++) {
    await new Promise((r) => setTimeout(r, 20));
    now = Deno.readTextFileSync(file).trim();
  }
  return now;
}

/** A running `tvix-store mount`. */
export interface MountProcess {
  mountpoint: string;
  child: Deno.ChildProcess;
  /** Everything it wrote to stderr so far. */
  log(): string;
  /** Resolves with the exit status. */
  exited: Promise<Deno.CommandStatus>;
  /** Unmounts (SIGTERM, then lazy unmount as a fallback), waits for exit, removes the mountpoint. */
  stop(): Promise<Deno.CommandStatus>;
}

/** Options of {@linkcode startMount}. */
export interface MountOptions {
  addrs: ServiceAddrs;
  /** Extra `mount` flags (`--list-root`, `--threads=4`, …). */
  args?: string[];
}

/**
 * Starts `deno run -A main.ts mount` on a fresh temp mountpoint and waits
 * until the mount appears (or the process exits, which throws).
 */
export async function startMount(opts: MountOptions): Promise<MountProcess> {
  const mountpoint = await Deno.makeTempDir({ prefix: "tvix-fuse-mnt-" });
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "mount", mountpoint, ...addrFlags(opts.addrs), ...(opts.args ?? [])],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let stderr = "";
  const drained = (async () => {
    for await (const t of child.stderr.pipeThrough(new TextDecoderStream())) stderr += t;
  })();
  const exited = child.status.then(async (s) => {
    await drained;
    return s;
  });
  let done: Deno.CommandStatus | undefined;
  exited.then((s) => (done = s));
  while (!isMounted(mountpoint)) {
    if (done) {
      await Deno.remove(mountpoint).catch(() => {});
      throw new Error(`mount exited with ${done.code} before mounting:\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const stop = async () => {
    if (!done) {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
    }
    const status = await exited;
    if (isMounted(mountpoint)) {
      await new Deno.Command("umount", { args: ["-l", mountpoint] }).output();
    }
    await Deno.remove(mountpoint).catch(() => {});
    return status;
  };
  return { mountpoint, child, log: () => stderr, exited, stop };
}

/** Runs a command; returns its exit code and output. */
export async function run(
  cmd: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs `tvix-store` with `args`; returns its exit code and output. */
export function runTvix(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return run(Deno.execPath(), ["run", "-A", MAIN, ...args]);
}

/** The `user.*` extended attribute `name` of `path` (via getfattr), or `undefined` if absent. */
export async function getXattr(path: string, name: string): Promise<string | undefined> {
  const r = await run("getfattr", ["--only-values", "-h", "-n", name, path]);
  return r.code === 0 ? r.stdout : undefined;
}

/** Names of the `user.*` extended attributes of `path` (via getfattr), or the error output. */
export async function listXattrs(path: string): Promise<{ names: string[]; error?: string }> {
  const r = await run("getfattr", ["-h", "--absolute-names", "-m", "-", path]);
  if (r.code !== 0) return { names: [], error: r.stderr };
  return { names: r.stdout.split("\n").filter((l) => l && !l.startsWith("#")) };
}
