/**
 * The FUSE session: created and mounted with libfuse on the thread that
 * owns it, which is also the only thread that may unmount it (a second
 * caller crashes libfuse). libfuse never processes requests here: the
 * session is created with an empty operations table and the Workers clone
 * its fd.
 *
 * @module
 */
import { cString } from "../libc.ts";
import { fuseArgs, loadFuse, LOWLEVEL_OPS_SIZE } from "./ffi.ts";

/** How to mount. */
export interface SessionOptions {
  /** Add `allow_other` (other users may access the mount). */
  allowOther: boolean;
}

/** A mounted FUSE session. */
export class FuseSession {
  readonly mountpoint: string;
  /** The session's /dev/fuse fd, for Workers to clone. */
  readonly fd: number;
  readonly #session: Deno.PointerObject;
  #unmounted = false;
  #destroyed = false;

  private constructor(mountpoint: string, session: Deno.PointerObject, fd: number) {
    this.mountpoint = mountpoint;
    this.#session = session;
    this.fd = fd;
  }

  /**
   * Mounts a read-only session at `mountpoint` (`ro`, `default_permissions`,
   * `fsname=tvix-store`, plus `allow_other` if asked). Non-root users go
   * through `fusermount3`. Throws if it cannot.
   */
  static mount(mountpoint: string, opts: SessionOptions): FuseSession {
    const fuse = loadFuse();
    const options = ["ro", "default_permissions", "fsname=tvix-store"];
    if (opts.allowOther) options.push("allow_other");
    const { args, keep } = fuseArgs(["tvix-store", "-o", options.join(",")]);
    const ops = new Uint8Array(LOWLEVEL_OPS_SIZE);
    const session = fuse.fuse_session_new(args, ops, BigInt(ops.length), null);
    void keep;
    if (!session) throw new Error("cannot create the FUSE session (see the message above)");
    if (fuse.fuse_session_mount(session, cString(mountpoint)) !== 0) {
      fuse.fuse_session_destroy(session);
      throw new Error(`cannot mount at ${mountpoint} (see the message above)`);
    }
    return new FuseSession(mountpoint, session, fuse.fuse_session_fd(session));
  }

  /**
   * Unmounts (lazily) unless already done. Every channel then reads
   * `ENODEV` once the kernel tears the connection down. Harmless after an
   * external unmount.
   */
  unmount(): void {
    if (this.#unmounted) return;
    this.#unmounted = true;
    loadFuse().fuse_session_unmount(this.#session);
  }

  /** Unmounts if needed and frees the session. */
  destroy(): void {
    if (this.#destroyed) return;
    this.unmount();
    this.#destroyed = true;
    loadFuse().fuse_session_destroy(this.#session);
  }
}
