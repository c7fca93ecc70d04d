/**
 * `tvix-store mount`: mounts the store read-only and serves it with one
 * Worker per FUSE channel until it is unmounted.
 *
 * Order of events: Workers start and build their services (so bad URLs fail
 * before anything is mounted); the main thread mounts; each Worker clones
 * the session fd and serves. SIGINT/SIGTERM unmount; an external
 * `fusermount3 -u`/`umount` ends the session by itself. Either way every
 * Worker reads `ENODEV`, reports `done`, and the process exits 0. If a
 * Worker does not finish soon after the unmount (a busy mount keeps the
 * connection alive after a lazy detach), the process exits anyway: closing
 * its fds aborts the connection, so nothing hangs.
 *
 * @module
 */
import type { ServiceAddrs } from "../store/services.ts";
import { log, LOG_LEVELS, logEnabled } from "../log.ts";
import { sqlitePathFromUrl } from "../castore/sqlite_db.ts";
import { allowedCpus } from "./ffi.ts";
import { workerCpus } from "./affinity.ts";
import { InodeTable } from "./inodes.ts";
import { SharedChunkCache } from "./shared_chunks.ts";
import { SharedListings } from "./shared_listings.ts";
import { FuseSession } from "./session.ts";
import { mountAt, readaheadFile } from "./mountinfo.ts";
import type { FromWorker, ToWorker, WorkerConfig } from "./worker.ts";

/** What `mount` was asked to do. */
export interface MountOptions {
  mountpoint: string;
  addrs: ServiceAddrs;
  threads: number;
  allowOther: boolean;
  listRoot: boolean;
  showXattr: boolean;
  /** Bytes of decompressed chunks shared by the Workers (default {@linkcode defaultCacheBytes}). */
  sharedCacheBytes?: number;
  /** Bytes of decompressed chunks each Worker keeps for itself (default 64 MiB). */
  cacheBytes?: number;
  /** Bind each Worker's thread to one of the allowed CPUs (see `affinity.ts`; default true). */
  pinThreads?: boolean;
}

/**
 * The sysfs file of the mount's readahead, for the Workers to raise it
 * (`worker.ts`, `raiseReadahead`). The mount's device number names it. It
 * comes from mountinfo, never from a `stat` of the mount, which this
 * process would answer itself (see `mountinfo.ts` for why that can hang a
 * killed mount).
 */
function readaheadFileOf(mountedAt: string): string | undefined {
  const entry = mountAt(mountedAt);
  if (entry?.fsType.startsWith("fuse")) return readaheadFile(entry);
  log.debug("readahead left at the kernel default", { error: `no FUSE mount at ${mountedAt}` });
  return undefined;
}

/** Typical chunk size of the object store (FastCDC average), which sizes the shared cache's slots. */
const TYPICAL_CHUNK = 256 << 10;
/** Largest chunk the shared cache holds (FastCDC maximum); larger ones stay per Worker. */
const MAX_SHARED_CHUNK = 512 << 10;

/**
 * Default size of the shared chunk cache: an eighth of the RAM, between
 * 256 MiB and 4 GiB. Decompressing and verifying a chunk is what bounds a
 * read from the object store, so a cache that holds a large file's
 * working set whole makes a second read (after the kernel dropped its
 * pages) cost only the FUSE round trips; an eighth leaves the page cache
 * and builds most of the machine. Memory is committed only as chunks are
 * cached.
 */
function defaultCacheBytes(): number {
  let total = 8 * 2 ** 30;
  try {
    total = Deno.systemMemoryInfo().total;
  } catch {
    // Without --allow-sys: assume a modest 8 GiB machine.
  }
  return Math.min(4 * 2 ** 30, Math.max(256 << 20, Math.floor(total / 8)));
}

/** How long Workers get to finish after an unmount before the process exits regardless. */
const DRAIN_MS = 1000;

/** Whether `url` is an in-memory SQLite database (`sqlite:` or `sqlite://`, no path). */
function isMemorySqlite(url: string): boolean {
  if (!/^sqlite:/i.test(url)) return false;
  try {
    return sqlitePathFromUrl(new URL(url)) === undefined;
  } catch {
    return false; // invalid: building the services will say why
  }
}

/** Throws a clear error for URLs a multi-Worker mount cannot use. */
function checkMountAddrs(addrs: ServiceAddrs): void {
  for (const [key, url] of Object.entries(addrs)) {
    const flag = `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    // Each Worker builds its own services: an in-memory one would be empty.
    if (/^(objectstore\+)?memory:/i.test(url) || isMemorySqlite(url)) {
      throw new Error(
        `${flag} ${url}: in-memory services cannot be used by mount, whose Workers each open ` +
          `the services themselves and would see separate empty stores; use sqlite:///FILE, ` +
          `objectstore+file:///DIR or a daemon via grpc+…`,
      );
    }
  }
}

interface WorkerHandle {
  worker: Worker;
  next(): Promise<FromWorker>;
}

/** Starts a Worker; it gets its `start` once it has loaded and `gate` has resolved. */
function spawn(config: WorkerConfig, gate: Promise<void>): WorkerHandle {
  const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
  const queue: FromWorker[] = [];
  const waiting: ((m: FromWorker) => void)[] = [];
  const deliver = (m: FromWorker) => {
    const w = waiting.shift();
    if (w) w(m);
    else queue.push(m);
  };
  worker.onmessage = (e: MessageEvent<FromWorker>) => {
    // Messages sent before the module finished evaluating (it has top-level
    // awaits) could be lost: send the config once the Worker says it listens.
    if (e.data.type === "loaded") {
      gate.then(() => worker.postMessage({ type: "start", config } satisfies ToWorker));
    } else deliver(e.data);
  };
  worker.onerror = (e) => {
    e.preventDefault();
    deliver({ type: "failed", message: e.message });
  };
  return {
    worker,
    next: () => {
      const m = queue.shift();
      return m ? Promise.resolve(m) : new Promise((resolve) => waiting.push(resolve));
    },
  };
}

/**
 * Mounts and serves until unmounted. Resolves with the exit status: 0 after
 * a clean unmount, 1 if a Worker failed. Throws if mounting fails.
 */
export async function runMount(opts: MountOptions): Promise<number> {
  checkMountAddrs(opts.addrs);
  try {
    if (!(await Deno.stat(opts.mountpoint)).isDirectory) {
      throw new Error(`mountpoint ${opts.mountpoint} is not a directory`);
    }
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new Error(`mountpoint ${opts.mountpoint} does not exist`);
    }
    throw err;
  }
  // Listening from the start: a signal during start-up must neither kill
  // the process half-way (leaving a dead mount) nor unmount a session
  // whose Workers have not cloned their channels yet (the clone then
  // fails and the exit looks like a crash). It is acted on once every
  // Worker serves, or start-up is cut short before mounting.
  const stopRequested = Promise.withResolvers<void>();
  let stopping = false;
  const onSignal = () => {
    if (!stopping) log.info("interrupt received, unmounting…");
    stopping = true;
    stopRequested.resolve();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    return await mountAndServe(opts, () => stopping, stopRequested.promise);
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
}

async function mountAndServe(
  opts: MountOptions,
  stopping: () => boolean,
  stopRequested: Promise<void>,
): Promise<number> {
  const inodes = InodeTable.create();
  const listings = SharedListings.create({ maxInodes: inodes.capacity });
  const sharedChunks = SharedChunkCache.create(
    opts.sharedCacheBytes ?? defaultCacheBytes(),
    MAX_SHARED_CHUNK,
    TYPICAL_CHUNK,
  );
  const maxPages = 256;
  const allowed = opts.pinThreads === false ? [] : allowedCpus();
  const cpus = workerCpus(opts.threads, allowed);
  // The first Worker opens the services alone: creating a fresh SQLite
  // database (and switching it to WAL) while other connections open it can
  // fail with "database is locked" despite the busy timeout.
  const firstReady = Promise.withResolvers<void>();
  const workers = Array.from({ length: opts.threads }, (_, id) =>
    spawn({
      id,
      addrs: opts.addrs,
      listRoot: opts.listRoot,
      showXattr: opts.showXattr,
      logLevel: LOG_LEVELS.find(logEnabled) ?? "error",
      inodes: inodes.buffer,
      listings: listings.buffer,
      maxPages,
      maxReadahead: 1 << 20,
      threads: opts.threads,
      cacheBytes: opts.cacheBytes ?? 64 << 20,
      sharedChunks: sharedChunks.buffer,
      cpu: cpus[id],
      allowedCpus: allowed,
    }, id === 0 ? Promise.resolve() : firstReady.promise));
  const stopAll = () => workers.forEach((w) => w.worker.terminate());

  for (const w of workers) {
    // A signal cuts a slow start short (services that take long to open).
    const m = await Promise.race([w.next(), stopRequested.then(() => undefined)]);
    if (m === undefined) break;
    if (m.type !== "ready") {
      stopAll();
      throw new Error(`cannot start a FUSE worker: ${m.type === "failed" ? m.message : m.type}`);
    }
    firstReady.resolve();
  }
  if (stopping()) {
    stopAll();
    log.info("interrupted before mounting");
    return 0;
  }

  // The path as mountinfo will show it, resolved before anything is mounted
  // there (see readaheadFileOf). Only the readahead depends on it, so a
  // failure here must not stop the mount.
  const mountedAt = await Deno.realPath(opts.mountpoint).catch(() => opts.mountpoint);
  log.info("mounting", { path: opts.mountpoint, threads: opts.threads });
  let session: FuseSession;
  try {
    session = FuseSession.mount(opts.mountpoint, { allowOther: opts.allowOther });
  } catch (err) {
    stopAll();
    throw err;
  }

  let drainTimer: ReturnType<typeof setTimeout> | undefined;
  const finished = Promise.withResolvers<void>();
  const unmount = (why: string) => {
    session.unmount();
    drainTimer ??= setTimeout(() => {
      log.warn("workers did not finish after unmounting; exiting anyway", { why });
      finished.resolve();
    }, DRAIN_MS);
  };

  let status = 0;
  const failed = (message: string) => {
    log.error("FUSE worker failed", { error: message });
    status = 1;
    unmount("worker failed");
  };
  const raFile = readaheadFileOf(mountedAt);
  // Each Worker first reports that it cloned its channel, then that it is done.
  const serving = workers.map(async (w) => {
    w.worker.postMessage(
      { type: "serve", fd: session.fd, readaheadFile: raFile } satisfies ToWorker,
    );
    const m = await w.next();
    if (m.type === "failed") failed(m.message);
    return m.type === "serving" ? w : undefined;
  });
  const served = serving.map(async (started) => {
    const w = await started;
    if (!w) return;
    const m = await w.next();
    if (m.type === "failed") failed(m.message);
  });
  Promise.all(served).then(() => finished.resolve());
  // An unmount before every channel is cloned would make the late clones
  // fail: wait for all of them first.
  Promise.all([stopRequested, ...serving]).then(() => unmount("signal"));
  await finished.promise;

  clearTimeout(drainTimer);
  session.destroy();
  stopAll();
  log.info("unmounted, exiting");
  return status;
}
