/**
 * One Worker's FUSE channel: a pair of `/dev/fuse` fds cloned from the
 * session (`FUSE_DEV_IOC_CLONE`), the request loop and the reply writers.
 *
 * With nothing in flight the Worker blocks in `read` on the blocking clone
 * (one Worker woken per request, no pool hand-off); while requests are in
 * flight it reads the non-blocking clone synchronously and, once the kernel
 * has nothing queued, waits for the next request on Deno's blocking pool so
 * the isolate stays free to finish the pending replies (a synchronous FFI
 * call freezes it). Each clone is its own kernel processing queue, so a
 * reply goes to the fd that delivered its request. Replies are written
 * synchronously, data replies with `writev` straight from the source
 * buffers. The loop ends when the kernel reports the session gone
 * (`ENODEV`, after any unmount).
 *
 * @module
 */
import { cString, errno, OPEN_FLAGS } from "../libc.ts";
import {
  Errno,
  FUSE_DEV_IOC_CLONE,
  type LibC,
  loadLibc,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLNVAL,
} from "./ffi.ts";
import { log } from "../log.ts";
import { OUT_HEADER_SIZE } from "./protocol.ts";

/**
 * Start addresses of the buffers replies are written from, remembered per
 * buffer: their memory never moves (ArrayBuffer and SharedArrayBuffer
 * backing stores are fixed once allocated), and looking the address up
 * anew costs a pointer object and a BigInt per piece.
 */
const addresses = new WeakMap<ArrayBufferLike, number>();

function bufferAddress(buffer: ArrayBufferLike): number {
  let a = addresses.get(buffer);
  if (a === undefined) {
    a = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer)));
    addresses.set(buffer, a);
  }
  return a;
}

/** Writes iovec `i` (`base`, `len`) into `iov` as little-endian 32-bit halves. */
function setIovec(iov: Uint32Array, i: number, base: number, len: number): void {
  iov[4 * i] = base % 0x100000000;
  iov[4 * i + 1] = Math.floor(base / 0x100000000);
  iov[4 * i + 2] = len;
  iov[4 * i + 3] = 0;
}

/** Handles one request whose bytes are `buf[0..n)`; must copy what it keeps beyond the call. */
export type Dispatch = (buf: Uint8Array, view: DataView, n: number, fd: number) => void;

/** Requests handled synchronously in a row before letting the event loop run. */
const BURST = 64;
/** Microtask turns granted to in-flight requests before waiting on the pool. */
const SETTLE_TURNS = 16;

/** A cloned FUSE channel with reply helpers. */
export class Channel {
  readonly #c: LibC;
  readonly #fdQueued: number;
  readonly #fdWait: number;
  readonly #bufSize: number;
  /** Reply assembly buffer; replies are built and written synchronously, so one suffices. */
  readonly reply: Uint8Array<ArrayBuffer>;
  /** DataView over {@linkcode reply}. */
  readonly replyView: DataView;
  readonly #header = new Uint8Array(OUT_HEADER_SIZE);
  readonly #headerView = new DataView(this.#header.buffer);
  readonly #headerAddress = bufferAddress(this.#header.buffer);
  #iov = new Uint32Array(4 * 64);
  readonly #pollfd = new Uint8Array(8);
  #writeErrors = 0;
  /**
   * A MessageChannel turn is the cheapest way back through the event loop
   * (~20 µs; `setTimeout(0)` takes about 2 ms here).
   */
  readonly #tick = new MessageChannel();
  #yielded: (() => void) | undefined;
  #closed = false;

  /** Clones the session fd `sessionFd`; requests may be up to `bufSize` bytes. */
  constructor(sessionFd: number, bufSize: number) {
    this.#c = loadLibc();
    this.#bufSize = bufSize;
    this.#fdQueued = this.#clone(sessionFd, true);
    try {
      this.#fdWait = this.#clone(sessionFd, false);
    } catch (err) {
      this.#c.close(this.#fdQueued);
      throw err;
    }
    this.#tick.port2.onmessage = () => this.#yielded?.();
    this.reply = new Uint8Array(bufSize);
    this.replyView = new DataView(this.reply.buffer);
  }

  #clone(sessionFd: number, nonblocking: boolean): number {
    const c = this.#c;
    const path = cString("/dev/fuse");
    const { O_RDWR, O_CLOEXEC, O_NONBLOCK } = OPEN_FLAGS;
    const fd = c.open(path, O_RDWR | O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0), 0);
    if (fd < 0) throw new Error(`cannot open /dev/fuse: errno ${errno()}`);
    if (c.ioctl(fd, FUSE_DEV_IOC_CLONE, new Uint32Array([sessionFd])) !== 0) {
      const e = errno();
      c.close(fd);
      throw new Error(`FUSE_DEV_IOC_CLONE failed: errno ${e}`);
    }
    return fd;
  }

  /**
   * Reads and dispatches requests until the session is gone.
   *
   * `idle()` says whether nothing asynchronous is in flight. Then the
   * Worker blocks in `read` on the blocking clone, as a libfuse thread
   * does: the kernel wakes one waiter per request (exclusive wait), and the
   * request is handled without a trip through Deno's blocking pool. With
   * `upkeepMs` > 0 (remote services, whose connections need the event loop
   * now and then) it first waits in `poll` for at most that long.
   *
   * While requests are in flight it first gives them a few microtask turns
   * (replies from memory finish there), then reads the non-blocking clone
   * synchronously as long as the kernel has requests queued, and only when
   * it runs dry while they still wait for I/O waits with a blocking `read`
   * on Deno's pool, so the event loop runs meanwhile.
   * Every {@linkcode BURST} requests it yields one event-loop turn.
   */
  async serve(dispatch: Dispatch, idle: () => boolean, upkeepMs = 0): Promise<void> {
    const c = this.#c;
    const buf = new Uint8Array(this.#bufSize);
    const view = new DataView(buf.buffer);
    const size = this.#bufSize;
    const fdQueued = this.#fdQueued, fdWait = this.#fdWait;
    let burst = 0;
    for (;;) {
      if (++burst >= BURST) {
        burst = 0;
        await this.#yield();
      }
      if (idle()) {
        if (upkeepMs > 0 && this.#poll(fdWait, upkeepMs) === 0) {
          await this.#yield();
          continue;
        }
        const m = c.read(fdWait, buf, size);
        if (m > 0) {
          dispatch(buf, view, m, fdWait);
          continue;
        }
        const e = errno();
        if (e === Errno.ENODEV) return;
        // ENOENT: the request was interrupted before we read it.
        if (e === Errno.EINTR || e === Errno.ENOENT || e === Errno.EAGAIN) continue;
        throw new Error(`reading /dev/fuse failed: errno ${e}`);
      }
      // Requests answered from memory finish within a few microtask turns:
      // let them, and block again if nothing is left.
      for (let i = 0; i < SETTLE_TURNS && !idle(); i++) await null;
      if (idle()) continue;
      const n = c.read(fdQueued, buf, size);
      if (n > 0) {
        dispatch(buf, view, n, fdQueued);
        continue;
      }
      const e = errno();
      if (e === Errno.EAGAIN) {
        burst = 0;
        const m = await c.read_async(fdWait, buf, size);
        if (m > 0) dispatch(buf, view, m, fdWait);
        else if (this.#gone(fdWait)) return;
        continue;
      }
      if (e === Errno.EINTR || e === Errno.ENOENT) continue;
      if (e === Errno.ENODEV) return;
      throw new Error(`reading /dev/fuse failed: errno ${e}`);
    }
  }

  /** Lets the event loop run once (a macrotask turn: I/O completions, timers). */
  #yield(): Promise<void> {
    return new Promise((resolve) => {
      this.#yielded = resolve;
      this.#tick.port1.postMessage(0);
    });
  }

  /** `poll(fd, POLLIN, timeoutMs)`: the number of ready fds (0 on timeout). */
  #poll(fd: number, timeoutMs: number): number {
    const v = new DataView(this.#pollfd.buffer);
    v.setInt32(0, fd, true);
    v.setInt16(4, POLLIN, true);
    v.setInt16(6, 0, true);
    return this.#c.poll(this.#pollfd, 1n, timeoutMs);
  }

  /** Whether the session behind `fd` is gone (errno of the pool thread is not visible here). */
  #gone(fd: number): boolean {
    const v = new DataView(this.#pollfd.buffer);
    v.setInt32(0, fd, true);
    v.setInt32(4, 0, true);
    this.#c.poll(this.#pollfd, 1n, 0);
    return (v.getInt16(6, true) & (POLLERR | POLLHUP | POLLNVAL)) !== 0;
  }

  /** Sends `reply[16..16+len)` as the successful answer to request `unique`. */
  ok(fd: number, uLo: number, uHi: number, len: number): void {
    const v = this.replyView;
    v.setUint32(0, OUT_HEADER_SIZE + len, true);
    v.setInt32(4, 0, true);
    v.setUint32(8, uLo, true);
    v.setUint32(12, uHi, true);
    this.#check(this.#c.write(fd, this.reply, OUT_HEADER_SIZE + len));
  }

  /** Answers request `unique` with error `err` (a positive errno). */
  error(fd: number, uLo: number, uHi: number, err: number): void {
    const v = this.#headerView;
    v.setUint32(0, OUT_HEADER_SIZE, true);
    v.setInt32(4, -err, true);
    v.setUint32(8, uLo, true);
    v.setUint32(12, uHi, true);
    this.#check(this.#c.write(fd, this.#header, OUT_HEADER_SIZE));
  }

  /** Answers request `unique` with `pieces` concatenated, without copying them. */
  data(fd: number, uLo: number, uHi: number, pieces: readonly Uint8Array[]): void {
    if (this.#iov.length < 4 * (pieces.length + 1)) {
      this.#iov = new Uint32Array(4 * (pieces.length + 1));
    }
    // struct iovec { void *base; size_t len; } as 32-bit halves: addresses
    // are below 2^53, so plain numbers do (no BigInt per piece).
    const iov = this.#iov;
    let count = 1;
    let total = OUT_HEADER_SIZE;
    setIovec(iov, 0, this.#headerAddress, OUT_HEADER_SIZE);
    for (const p of pieces) {
      if (p.length === 0) continue;
      setIovec(iov, count, bufferAddress(p.buffer) + p.byteOffset, p.length);
      total += p.length;
      count++;
    }
    const v = this.#headerView;
    v.setUint32(0, total, true);
    v.setInt32(4, 0, true);
    v.setUint32(8, uLo, true);
    v.setUint32(12, uHi, true);
    this.#check(
      this.#c.writev(fd, new Uint8Array(iov.buffer, 0, count * 16), count),
      pieces,
    );
  }

  /** Reports a failed reply write; `_keepAlive` keeps the written buffers reachable until here. */
  #check(r: number, _keepAlive?: unknown): void {
    if (r >= 0) return;
    const e = errno();
    // ENOENT: the request was interrupted meanwhile; ENODEV: the session is gone.
    if (e === Errno.ENOENT || e === Errno.ENODEV) return;
    if (this.#writeErrors++ < 10) {
      log.warn("writing a FUSE reply failed", { errno: e });
    }
  }

  /** Closes both clones. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#c.close(this.#fdQueued);
    this.#c.close(this.#fdWait);
    this.#tick.port1.close();
    this.#tick.port2.close();
  }
}
