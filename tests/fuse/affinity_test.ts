/**
 * CPU binding of FUSE Workers (`src/fuse/affinity.ts`) and the mount's
 * kernel readahead: checked on this thread and on a real mount's threads
 * through /proc.
 */
import { assert, assertEquals } from "../assert.ts";
import { CpuBinding, LARGE_READ, workerCpus } from "../../src/fuse/affinity.ts";
import { allowedCpus, setThreadCpus } from "../../src/fuse/ffi.ts";
import {
  addrFlags,
  readaheadOnceSet,
  run,
  runTvix,
  SKIP,
  startMount,
  tempStore,
} from "./harness.ts";

/** `Cpus_allowed_list` of a task's status file. */
function cpusAllowed(statusPath: string): string {
  const m = /^Cpus_allowed_list:\s*(\S+)$/m.exec(Deno.readTextFileSync(statusPath));
  if (!m) throw new Error(`no Cpus_allowed_list in ${statusPath}`);
  return m[1];
}

/** Expands a kernel CPU list ("0-2,5") into numbers. */
function parseCpuList(list: string): number[] {
  return list.split(",").flatMap((part) => {
    const [a, b] = part.split("-").map(Number);
    return Array.from({ length: (b ?? a) - a + 1 }, (_, i) => a + i);
  });
}

/** The FUSE Worker threads of process `pid` and the CPUs each may use. */
function workerThreads(pid: number): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
    const comm = Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/comm`).trim();
    if (comm.startsWith("worker-")) {
      out.set(comm, parseCpuList(cpusAllowed(`/proc/${pid}/task/${t.name}/status`)));
    }
  }
  return out;
}

const MULTI_CPU = allowedCpus().length > 1;

Deno.test("affinity: Workers are spread round-robin over the allowed CPUs", () => {
  assertEquals(workerCpus(5, [0, 1]), [0, 1, 0, 1, 0]);
  assertEquals(workerCpus(3, [2, 5, 7]), [2, 5, 7]);
  // One CPU allowed (or binding switched off): nothing to bind.
  assertEquals(workerCpus(2, [3]), [undefined, undefined]);
  assertEquals(workerCpus(2, []), [undefined, undefined]);
});

Deno.test({
  name: "affinity: a binding is left during a run of large READs and taken again after others",
  ignore: !MULTI_CPU,
}, () => {
  const allowed = allowedCpus();
  const self = "/proc/thread-self/status";
  try {
    const b = new CpuBinding(allowed[1], allowed);
    assert(b.bound);
    assertEquals(parseCpuList(cpusAllowed(self)), [allowed[1]]);
    for (let i = 0; i < 7; i++) b.note(true);
    assert(b.bound, "a few large READs do not release it");
    b.note(true);
    assert(!b.bound);
    assertEquals(parseCpuList(cpusAllowed(self)), allowed);
    // Hysteresis: a few other requests amid a stream keep it free.
    for (let i = 0; i < 10; i++) b.note(false);
    for (let i = 0; i < 3; i++) b.note(true);
    assert(!b.bound);
    for (let i = 0; i < 14; i++) b.note(false);
    assert(b.bound);
    assertEquals(parseCpuList(cpusAllowed(self)), [allowed[1]]);
  } finally {
    setThreadCpus(allowed);
  }
  assertEquals(parseCpuList(cpusAllowed(self)), allowed);
});

Deno.test({
  name: "mount: each Worker is bound to its own CPU; --no-pin-threads leaves them free",
  ignore: SKIP || !MULTI_CPU,
}, async () => {
  const allowed = allowedCpus();
  const store = await tempStore();
  try {
    const bound = await startMount({ addrs: store.addrs, args: ["--threads=2"] });
    try {
      const threads = workerThreads(bound.child.pid);
      assertEquals(threads.size, 2, [...threads.keys()].join(","));
      const cpus = [...threads.values()];
      assert(cpus.every((c) => c.length === 1), JSON.stringify(cpus));
      assert(cpus[0][0] !== cpus[1][0], `both Workers on CPU ${cpus[0][0]}`);
    } finally {
      await bound.stop();
    }
    const free = await startMount({
      addrs: store.addrs,
      args: ["--threads=2", "--no-pin-threads"],
    });
    try {
      const threads = workerThreads(free.child.pid);
      assertEquals(threads.size, 2);
      for (const c of threads.values()) assertEquals(c, allowed);
    } finally {
      await free.stop();
    }
  } finally {
    await store.remove();
  }
});

Deno.test({
  name: "mount: the kernel reads ahead 1 MiB (the largest READ) instead of 128 KiB",
  ignore: SKIP || Deno.uid() !== 0,
}, async () => {
  const store = await tempStore();
  const m = await startMount({ addrs: store.addrs });
  try {
    assertEquals(await readaheadOnceSet(m.mountpoint, "1024", 100), "1024");
    assertEquals((await run("stat", ["-c", "%F", m.mountpoint])).stdout.trim(), "directory");
  } finally {
    await m.stop();
    await store.remove();
  }
});

Deno.test({
  name: "mount: a streaming read releases the Workers' CPUs, a listing binds them again",
  ignore: SKIP || !MULTI_CPU,
}, async () => {
  const store = await tempStore();
  const src = await Deno.makeTempDir();
  try {
    // 64 MiB of varied bytes: many 1 MiB READs.
    const big = new Uint8Array(64 << 20);
    for (let i = 0; i < big.length; i += 4096) big[i] = (i / 4096) & 0xff;
    await Deno.writeFile(`${src}/big`, big);
    for (let i = 0; i < 40; i++) await Deno.writeTextFile(`${src}/f${i}`, `${i}`);
    const imported = await runTvix(["import", src, ...addrFlags(store.addrs)]);
    assertEquals(imported.code, 0, imported.stderr);
    const m = await startMount({ addrs: store.addrs, args: ["--threads=2"] });
    try {
      const root = `${m.mountpoint}/${imported.stdout.trim().slice("/nix/store/".length)}`;
      assert([...workerThreads(m.child.pid).values()].every((c) => c.length === 1));
      const f = await Deno.open(`${root}/big`);
      // Nothing is cached yet: the kernel asks in READs of up to 1 MiB.
      const buf = new Uint8Array(LARGE_READ * 8);
      while ((await f.read(buf)) !== null) { /* stream it */ }
      f.close();
      assert(
        [...workerThreads(m.child.pid).values()].some((c) => c.length > 1),
        "every Worker stayed bound through 64 MiB of large READs",
      );
      for (let round = 0; round < 3; round++) {
        for (let i = 0; i < 40; i++) await run("getfattr", ["-n", "user.x", `${root}/f${i}`]);
      }
      assert([...workerThreads(m.child.pid).values()].every((c) => c.length === 1));
    } finally {
      await m.stop();
    }
  } finally {
    await Deno.remove(src, { recursive: true });
    await store.remove();
  }
});
