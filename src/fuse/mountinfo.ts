/**
 * The kernel's table of mounts as this process sees them
 * (`/proc/self/mountinfo`).
 *
 * The mount reads its own device number from here rather than with a
 * `stat` of its mountpoint: that `stat` is a FUSE request answered by the
 * process itself, and a process killed while its own request waits for an
 * answer never exits (the waiting thread cannot be interrupted once the
 * request was read, and the connection is only aborted after every thread
 * has gone). Reading this file asks the kernel alone.
 *
 * @module
 */

/** One mounted filesystem. */
export interface MountEntry {
  /** Its device, `major:minor` (a FUSE mount's names its BDI in `/sys/class/bdi`). */
  device: string;
  /** Where it is mounted, unescaped. */
  mountPoint: string;
  /** The filesystem type, e.g. `fuse`. */
  fsType: string;
  /** The source the filesystem was mounted from (a FUSE server's name). */
  source: string;
}

/** Undoes the kernel's octal escapes (`\040` for a space, and so on) in a mountinfo field. */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/**
 * The entries of a mountinfo text, in order (a later mount on the same
 * point hides an earlier one). Lines it cannot read are skipped.
 */
export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split("\n")) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    const f = line.split(" ");
    const sep = f.indexOf("-", 6);
    if (f.length < 7 || sep < 0 || sep + 2 >= f.length) continue;
    entries.push({
      device: f[2],
      mountPoint: unescape(f[4]),
      fsType: f[sep + 1],
      source: unescape(f[sep + 2]),
    });
  }
  return entries;
}

/** The sysfs file holding the kernel readahead (KiB) of `entry`'s device (its BDI). */
export function readaheadFile(entry: MountEntry): string {
  return `/sys/class/bdi/${entry.device}/read_ahead_kb`;
}

/** The filesystem mounted last at `path` (absolute, no symlinks), if any. */
export function mountAt(path: string): MountEntry | undefined {
  const entries = parseMountInfo(Deno.readTextFileSync("/proc/self/mountinfo"));
  return entries.findLast((e) => e.mountPoint === path);
}
