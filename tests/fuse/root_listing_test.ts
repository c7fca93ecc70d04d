/**
 * Listing the mount root while the store changes: every path present
 * before and after a change is listed exactly once, even when the listing
 * continues on another Worker or after its snapshot was dropped
 * (docs/compatibility.md#operations-and-errors). A real mount with two
 * Workers, listed by Python's `os.scandir` (one `getdents64` at a time).
 *
 * Runs as root where /dev/fuse exists; skipped otherwise.
 */
import { assert, assertEquals } from "../assert.ts";
import { makeNode } from "../../src/castore/node.ts";
import { encode as nixbase32 } from "../../src/store/nixbase32.ts";
import { SKIP, startMount, tempStore } from "./harness.ts";

const ENTRIES = 2000;
const REMOVED = 60;
const ADDED = 20;

/** A store path digest and name for root number `i` of series `series`. */
function root(series: number, i: number): { digest: Uint8Array; name: string } {
  const digest = new Uint8Array(20);
  const view = new DataView(digest.buffer);
  view.setUint32(0, series * 0x10000000 + i * 7919);
  view.setUint32(16, i);
  return { digest, name: `${nixbase32(digest)}-root-${series}-${i}` };
}

// Reads some entries, says READY, waits for a line, lists the root 40
// times (more root listings than a Worker keeps), then reads the rest.
const LISTER = `
import json, os, sys
it = os.scandir(sys.argv[1])
first = [next(it).name for _ in range(int(sys.argv[2]))]
print("READY", flush=True)
sys.stdin.readline()
for _ in range(40):
    os.listdir(sys.argv[1])
rest = [e.name for e in it]
print(json.dumps(first + rest), flush=True)
`;

Deno.test({
  name:
    "mount: a root listing continued across Workers and dropped snapshots skips and repeats nothing",
  ignore: SKIP,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const store = await tempStore();
  const enc = new TextEncoder();
  const putRoot = (svc: Awaited<ReturnType<typeof store.open>>, r: { name: string }) =>
    svc.pathInfo.put({
      node: { node: makeNode.symlink(enc.encode(r.name), enc.encode("target")) },
      references: [],
      narinfo: undefined,
    });
  const svc = await store.open();
  let mount;
  try {
    const before = Array.from({ length: ENTRIES }, (_, i) => root(1, i));
    for (const r of before) await putRoot(svc, r);
    mount = await startMount({ addrs: store.addrs, args: ["--threads=2", "--list-root"] });
    const lister = new Deno.Command("/usr/bin/python3", {
      args: ["-c", LISTER, mount.mountpoint, "300"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const lines = lister.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let out = "";
    while (!out.includes("READY\n")) {
      const r = await lines.read();
      if (r.done) throw new Error(`lister ended early: ${out}`);
      out += r.value;
    }
    // Paths from all over the listing go, new ones come.
    const removed = before.filter((_, i) => i % Math.floor(ENTRIES / REMOVED) === 0)
      .slice(0, REMOVED);
    for (const r of removed) assert(await svc.pathInfo.delete!(r.digest));
    const added = Array.from({ length: ADDED }, (_, i) => root(2, i));
    for (const r of added) await putRoot(svc, r);
    const w = lister.stdin.getWriter();
    await w.write(enc.encode("go\n"));
    await w.close();
    while (true) {
      const r = await lines.read();
      if (r.done) break;
      out += r.value;
    }
    const status = await lister.status;
    const stderr = new TextDecoder().decode(
      (await new Response(lister.stderr).arrayBuffer()) as ArrayBuffer,
    );
    assert(status.success, `lister failed: ${stderr}`);
    const listed: string[] = JSON.parse(out.slice(out.indexOf("READY\n") + 6));

    const counts = new Map<string, number>();
    for (const name of listed) counts.set(name, (counts.get(name) ?? 0) + 1);
    const repeated = [...counts].filter(([, n]) => n > 1).map(([name]) => name);
    assertEquals(repeated, [], "listed twice");
    const gone = new Set(removed.map((r) => r.name));
    const kept = before.filter((r) => !gone.has(r.name));
    const missing = kept.filter((r) => !counts.has(r.name)).map((r) => r.name);
    assertEquals(missing, [], "present throughout, yet not listed");
    const known = new Set([...before, ...added].map((r) => r.name));
    assertEquals(listed.filter((name) => !known.has(name)), [], "names never stored");
  } finally {
    await svc.close();
    await mount?.stop();
    await store.remove();
  }
});
