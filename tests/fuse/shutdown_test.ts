/**
 * How `tvix-store mount` ends: an external unmount (`fusermount3 -u`,
 * `umount`) or SIGTERM/SIGINT make it exit 0 within a second; a busy mount
 * or SIGKILL never leaves anything hanging.
 */
import { assert, assertEquals } from "../assert.ts";
import { isMounted, type MountProcess, run, SKIP, startMount, tempStore } from "./harness.ts";

/** Waits for the mount process to exit; returns the status and milliseconds since `t0`. */
async function exitAfter(m: MountProcess, t0: number) {
  const status = await m.exited;
  return { status, ms: performance.now() - t0 };
}

async function withMount(fn: (m: MountProcess) => Promise<void>): Promise<void> {
  const store = await tempStore();
  const m = await startMount({ addrs: store.addrs, args: ["--threads=2"] });
  try {
    await fn(m);
  } finally {
    await m.stop();
    await store.remove();
  }
}

for (const [tool, args] of [["fusermount3", ["-u"]], ["umount", []]] as const) {
  Deno.test(
    { name: `mount: external ${tool} → exit 0 within a second`, ignore: SKIP },
    () =>
      withMount(async (m) => {
        const r = await run(tool, [...args, m.mountpoint]);
        assertEquals(r.code, 0, r.stderr);
        const t0 = performance.now();
        const { status, ms } = await exitAfter(m, t0);
        assertEquals(status.code, 0, m.log());
        assert(ms < 1000, `exited after ${ms} ms`);
        assert(m.log().includes("unmount occured"), m.log());
      }),
  );
}

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.test(
    { name: `mount: ${signal} unmounts and exits 0 within a second`, ignore: SKIP },
    () =>
      withMount(async (m) => {
        const t0 = performance.now();
        m.child.kill(signal);
        const { status, ms } = await exitAfter(m, t0);
        assertEquals(status.code, 0, m.log());
        assert(ms < 1000, `exited after ${ms} ms`);
        assert(!isMounted(m.mountpoint), "still mounted");
        assert(m.log().includes("interrupt received, unmounting"), m.log());
      }),
  );
}

Deno.test(
  { name: "mount: SIGTERM with a busy mount still exits", ignore: SKIP },
  () =>
    withMount(async (m) => {
      // A process whose working directory is the mount keeps it busy.
      const busy = new Deno.Command("sleep", { args: ["60"], cwd: m.mountpoint }).spawn();
      try {
        const t0 = performance.now();
        m.child.kill("SIGTERM");
        const { status, ms } = await exitAfter(m, t0);
        assertEquals(status.code, 0, m.log());
        assert(ms < 3000, `exited after ${ms} ms`);
      } finally {
        busy.kill("SIGKILL");
        await busy.status;
      }
    }),
);

Deno.test(
  { name: "mount: after SIGKILL the mount fails fast instead of hanging", ignore: SKIP },
  () =>
    withMount(async (m) => {
      m.child.kill("SIGKILL");
      const status = await m.exited;
      assertEquals(status.signal, "SIGKILL");
      // The kernel aborts the connection once the last /dev/fuse fd closes.
      // (The root's attributes may still come from the kernel's cache: the
      // mount stats its root to set the readahead; a lookup must ask.)
      const r = await run("stat", [`${m.mountpoint}/anything`]);
      assert(r.code !== 0 && r.stderr.includes("Transport endpoint is not connected"), r.stderr);
    }),
);
