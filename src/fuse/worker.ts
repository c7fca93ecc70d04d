/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * A FUSE Worker: builds its own services from the URLs, then serves one
 * cloned channel of the session until it is unmounted. Requests are
 * answered asynchronously (a reply needs only the request's `unique`), so a
 * slow blob fetch never holds up the other requests on the channel.
 *
 * Protocol with the main thread: `loaded` (module evaluated, listening);
 * `start` (config) → `ready` | `failed`;
 * `serve` (session fd) → `serving` (its channel is cloned) → `done` | `failed`.
 *
 * @module
 */
import { errorMessage } from "../errors.ts";
import { log, type LogLevel, setLogLevel } from "../log.ts";
import type { ServiceAddrs } from "../store/services.ts";
import { constructServices, type Services } from "../store/services.ts";
import { Channel } from "./channel.ts";
import { Errno } from "./ffi.ts";
import { CpuBinding, LARGE_READ } from "./affinity.ts";
import { type DirSlice, FsError, StoreFs } from "./filesystem.ts";
import type { ReadResult } from "./range_reader.ts";
import { InodeTable } from "./inodes.ts";
import { SharedChunkCache } from "./shared_chunks.ts";
import { SharedListings } from "./shared_listings.ts";
import {
  type Attr,
  ATTR_OUT_SIZE,
  cStringAt,
  ENTRY_OUT_SIZE,
  FOPEN_KEEP_CACHE,
  get64,
  GETXATTR_IN,
  GETXATTR_OUT_SIZE,
  IN_HEADER,
  INIT_OUT_SIZE,
  LOOKUP_IN,
  MUTATING_OPS,
  NAME_MAX,
  Op,
  OPEN_IN,
  OPEN_OUT_SIZE,
  OUT_HEADER_SIZE,
  putAttrOut,
  putDirent,
  putDirentPlus,
  putEntryOut,
  putInitOut,
  putStatfsOut,
  READ_IN,
  RELEASE_IN,
  STATFS_OUT_SIZE,
} from "./protocol.ts";

/** Everything a Worker needs, sent with `start`. */
export interface WorkerConfig {
  id: number;
  addrs: ServiceAddrs;
  listRoot: boolean;
  showXattr: boolean;
  logLevel: LogLevel;
  inodes: SharedArrayBuffer;
  /** The {@linkcode SharedListings} buffer. */
  listings: SharedArrayBuffer;
  /** Largest READ, in 4 KiB pages. */
  maxPages: number;
  maxReadahead: number;
  /** Number of Workers (sizes the window in which reads count as sequential). */
  threads: number;
  /** Bytes of decompressed chunks each Worker keeps for itself. */
  cacheBytes: number;
  /** The {@linkcode SharedChunkCache} buffer. */
  sharedChunks: SharedArrayBuffer;
  /** The CPU to bind this Worker's thread to (see `affinity.ts`), if any. */
  cpu?: number;
  /** Where the thread may run while not bound. */
  allowedCpus?: number[];
}

/** Messages from the main thread. */
export type ToWorker =
  | { type: "start"; config: WorkerConfig }
  /** `readaheadFile`: the mount's sysfs readahead, raised by whichever Worker answers INIT. */
  | { type: "serve"; fd: number; readaheadFile?: string };
/** Messages to the main thread. */
export type FromWorker =
  | { type: "loaded" }
  | { type: "ready" }
  | { type: "serving" }
  | { type: "done"; served: number }
  | { type: "failed"; message: string };

/**
 * With a remote directory service, subtrees of at most this many elements
 * are fetched in one call (see `FsOptions.subtreePrefetch`): about 1.5 MB
 * of directories for files with short names, a few milliseconds on a LAN,
 * against a round trip per directory.
 */
const SUBTREE_PREFETCH = 16384;

/** Whether any of the services is reached over the network. */
function isRemote(services: Services): boolean {
  return Boolean(services.blob.remote || services.directory.remote || services.pathInfo.remote);
}

/** With remote services, the longest an idle Worker blocks without giving the event loop a turn (ms). */
const UPKEEP_MS = 1000;

/**
 * Raises the kernel's readahead for the mount to `bytes` (`file` is its
 * BDI's `read_ahead_kb`), so a sequential reader's pages are asked for in
 * READs of up to that size instead of the kernel's default 128 KiB: 8
 * times fewer round trips for large files. Measured on 2 cores, a 1 GiB
 * file from the chunk cache: 2350-2600 MB/s at 128 KiB, 3650-3740 MB/s at
 * 1 MiB. Needs root (sysfs); otherwise the default stays.
 *
 * Called once the INIT reply is written: the kernel handles that reply in
 * the write itself and lowers the readahead to at most what the reply
 * allows (what it offered, 128 KiB), so a value written earlier was lost
 * in a race (in the tests, about one mount in five kept 128 KiB).
 */
function raiseReadahead(file: string, bytes: number): void {
  const kib = Math.floor(bytes / 1024);
  try {
    Deno.writeTextFileSync(file, String(kib));
    log.debug("readahead raised", { kib, file });
  } catch (err) {
    log.debug("readahead left at the kernel default", { error: String(err) });
  }
}

/** Serves requests for `fs` on `channel` until the session ends; returns the request count. */
async function serveChannel(
  channel: Channel,
  fs: StoreFs,
  cfg: Pick<WorkerConfig, "maxPages" | "maxReadahead"> & {
    upkeepMs?: number;
    /** Raised after the INIT reply (see {@linkcode raiseReadahead}). */
    readaheadFile?: string;
    /** Adjusted from each request's kind (see `affinity.ts`). */
    binding?: CpuBinding;
  },
): Promise<number> {
  const binding = cfg.binding;
  const out = channel.reply;
  const ov = channel.replyView;
  const replyCap = out.length - OUT_HEADER_SIZE;
  let served = 0;

  let inflight = 0;
  const fail = (fd: number, lo: number, hi: number, err: unknown) => {
    if (err instanceof FsError) return channel.error(fd, lo, hi, err.errno);
    log.error("FUSE request failed", { error: errorMessage(err) });
    channel.error(fd, lo, hi, Errno.EIO);
  };
  const entry = (fd: number, lo: number, hi: number, a: Attr) => {
    putEntryOut(ov, OUT_HEADER_SIZE, a);
    channel.ok(fd, lo, hi, ENTRY_OUT_SIZE);
  };
  const dirents = (
    fd: number,
    lo: number,
    hi: number,
    s: DirSlice,
    size: number,
    plus: boolean,
  ) => {
    const end = OUT_HEADER_SIZE + Math.min(size, replyCap);
    let pos = OUT_HEADER_SIZE;
    for (let i = s.start; i < s.names.length; i++) {
      // No path can reach a name longer than NAME_MAX, and the kernel fails
      // a whole READDIR reply holding one over 1024 bytes with EIO: such
      // entries (possible in a castore directory) are left out.
      if (s.names[i].length > NAME_MAX) continue;
      const attr = fs.getattr(s.inos[i]);
      const next = s.offsets ? s.offsets[i] : i + 1;
      const used = plus
        ? putDirentPlus(out, ov, pos, end, attr, next, s.names[i])
        : putDirent(out, ov, pos, end, attr.ino, next, s.names[i], attr.mode);
      if (used === 0) break;
      pos += used;
    }
    channel.ok(fd, lo, hi, pos - OUT_HEADER_SIZE);
  };
  const xattr = (fd: number, lo: number, hi: number, value: Uint8Array | number, size: number) => {
    if (typeof value === "number") return channel.error(fd, lo, hi, value);
    if (size === 0) {
      ov.setUint32(OUT_HEADER_SIZE, value.length, true);
      ov.setUint32(OUT_HEADER_SIZE + 4, 0, true);
      return channel.ok(fd, lo, hi, GETXATTR_OUT_SIZE);
    }
    if (size < value.length) return channel.error(fd, lo, hi, Errno.ERANGE);
    out.set(value, OUT_HEADER_SIZE);
    channel.ok(fd, lo, hi, value.length);
  };

  const data = (fd: number, lo: number, hi: number, r: ReadResult) => {
    try {
      channel.data(fd, lo, hi, r.pieces);
    } finally {
      r.release?.();
    }
  };

  /** Replies with `ok(value)` or the error once `p` settles; counts it as in flight meanwhile. */
  const later = <T>(
    p: Promise<T>,
    fd: number,
    lo: number,
    hi: number,
    ok: (value: T) => void,
  ) => {
    inflight++;
    p.then(ok, (e) => fail(fd, lo, hi, e)).finally(() => inflight--);
  };

  const dispatch = (buf: Uint8Array, v: DataView, n: number, fd: number) => {
    served++;
    const opcode = v.getUint32(IN_HEADER.opcode, true);
    binding?.note(opcode === Op.READ && v.getUint32(READ_IN.size, true) >= LARGE_READ);
    const lo = v.getUint32(IN_HEADER.uniqueLo, true), hi = v.getUint32(IN_HEADER.uniqueHi, true);
    const ino = get64(v, IN_HEADER.nodeid);
    try {
      switch (opcode) {
        case Op.INIT: {
          const problem = putInitOut(v, ov, OUT_HEADER_SIZE, cfg);
          if (problem) {
            log.error(problem);
            return channel.error(fd, lo, hi, Errno.EPROTO);
          }
          channel.ok(fd, lo, hi, INIT_OUT_SIZE);
          if (cfg.readaheadFile) raiseReadahead(cfg.readaheadFile, cfg.maxReadahead);
          return;
        }
        case Op.LOOKUP: {
          const r = fs.lookup(ino, cStringAt(buf, LOOKUP_IN.name, n));
          if (r instanceof Promise) return later(r, fd, lo, hi, (a) => entry(fd, lo, hi, a));
          return entry(fd, lo, hi, r);
        }
        case Op.GETATTR:
          putAttrOut(ov, OUT_HEADER_SIZE, fs.getattr(ino));
          return channel.ok(fd, lo, hi, ATTR_OUT_SIZE);
        case Op.READLINK: {
          const t = fs.readlink(ino);
          out.set(t, OUT_HEADER_SIZE);
          return channel.ok(fd, lo, hi, t.length);
        }
        case Op.OPEN: {
          const flags = v.getUint32(OPEN_IN.flags, true);
          return later(fs.open(ino, flags), fd, lo, hi, () => {
            out.fill(0, OUT_HEADER_SIZE, OUT_HEADER_SIZE + OPEN_OUT_SIZE);
            // Contents never change: the kernel may keep cached pages across opens.
            ov.setUint32(OUT_HEADER_SIZE + 8, FOPEN_KEEP_CACHE, true);
            channel.ok(fd, lo, hi, OPEN_OUT_SIZE);
          });
        }
        case Op.OPENDIR: {
          const fh = fs.opendir(ino);
          out.fill(0, OUT_HEADER_SIZE, OUT_HEADER_SIZE + OPEN_OUT_SIZE);
          ov.setUint32(OUT_HEADER_SIZE, fh % 0x100000000, true);
          ov.setUint32(OUT_HEADER_SIZE + 4, Math.floor(fh / 0x100000000), true);
          return channel.ok(fd, lo, hi, OPEN_OUT_SIZE);
        }
        case Op.READ: {
          const offset = get64(v, READ_IN.offset);
          const size = v.getUint32(READ_IN.size, true);
          const r = fs.read(ino, offset, size);
          if (r instanceof Promise) return later(r, fd, lo, hi, (d) => data(fd, lo, hi, d));
          return data(fd, lo, hi, r);
        }
        case Op.READDIR:
        case Op.READDIRPLUS: {
          const fh = get64(v, READ_IN.fh);
          const offset = get64(v, READ_IN.offset);
          const size = v.getUint32(READ_IN.size, true);
          const plus = opcode === Op.READDIRPLUS;
          const r = fs.readdir(ino, fh, offset);
          if (r instanceof Promise) {
            return later(r, fd, lo, hi, (s) => dirents(fd, lo, hi, s, size, plus));
          }
          return dirents(fd, lo, hi, r, size, plus);
        }
        case Op.RELEASEDIR:
          fs.releasedir(ino, get64(v, RELEASE_IN.fh));
          return channel.ok(fd, lo, hi, 0);
        case Op.RELEASE:
          return channel.ok(fd, lo, hi, 0);
        case Op.STATFS:
          putStatfsOut(ov, OUT_HEADER_SIZE);
          return channel.ok(fd, lo, hi, STATFS_OUT_SIZE);
        case Op.GETXATTR: {
          const size = v.getUint32(GETXATTR_IN.size, true);
          return xattr(fd, lo, hi, fs.getxattr(ino, cStringAt(buf, GETXATTR_IN.name, n)), size);
        }
        case Op.LISTXATTR:
          return xattr(fd, lo, hi, fs.listxattr(ino), v.getUint32(GETXATTR_IN.size, true));
        case Op.FORGET:
        case Op.BATCH_FORGET:
        case Op.INTERRUPT:
          return; // no reply; inodes are never freed and requests are not cancelled
        case Op.DESTROY:
          return channel.ok(fd, lo, hi, 0);
        default:
          return channel.error(fd, lo, hi, MUTATING_OPS.has(opcode) ? Errno.EROFS : Errno.ENOSYS);
      }
    } catch (err) {
      fail(fd, lo, hi, err);
    }
  };

  await channel.serve(
    dispatch,
    () => inflight === 0 && fs.backgroundWork === 0,
    cfg.upkeepMs,
  );
  return served;
}

// Worker entry point (inert when the module is imported elsewhere, e.g. by tests).
if (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined") {
  let services: Services | undefined;
  let fs: StoreFs | undefined;
  let config: WorkerConfig | undefined;
  let binding: CpuBinding | undefined;
  const post = (m: FromWorker) => self.postMessage(m);
  self.onmessage = async (e: MessageEvent<ToWorker>) => {
    const msg = e.data;
    try {
      if (msg.type === "start") {
        config = msg.config;
        setLogLevel(config.logLevel);
        if (config.cpu !== undefined) {
          binding = new CpuBinding(config.cpu, config.allowedCpus ?? []);
          if (!binding.bound) log.debug("cannot bind FUSE worker to its CPU", { cpu: config.cpu });
        }
        services = await constructServices(config.addrs);
        fs = new StoreFs(services, InodeTable.attach(config.inodes), {
          listRoot: config.listRoot,
          showXattr: config.showXattr,
          workerId: config.id,
          listings: SharedListings.attach(config.listings),
          subtreePrefetch: services.directory.remote ? SUBTREE_PREFETCH : 0,
          read: {
            cacheBytes: config.cacheBytes,
            shared: SharedChunkCache.attach(config.sharedChunks),
            sequentialWindow: config.threads * config.maxPages * 4096,
            workerId: config.id,
            workers: config.threads,
          },
        });
        post({ type: "ready" });
      } else {
        const bufSize = config!.maxPages * 4096 + 8192; // >= max_write + request headers
        const channel = new Channel(msg.fd, bufSize);
        post({ type: "serving" });
        let served;
        try {
          // Remote services keep connections that need the event loop now and then.
          served = await serveChannel(channel, fs!, {
            ...config!,
            upkeepMs: isRemote(services!) ? UPKEEP_MS : 0,
            binding,
            readaheadFile: msg.readaheadFile,
          });
        } finally {
          channel.close();
        }
        post({ type: "done", served });
      }
    } catch (err) {
      post({ type: "failed", message: errorMessage(err) });
    }
  };
  post({ type: "loaded" });
}
