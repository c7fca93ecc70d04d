/**
 * Store management through a running daemon (docs/gc.md): `delete`, `gc`
 * and `verify` sent to its AdminService with no local URLs; the policies
 * `--older-than` and `--max-size` over access times recorded as the daemon
 * serves paths (gRPC PathInfo Get, the binary cache's narinfo); and
 * `daemon --gc-interval` collecting an orphan by itself. Every path left is
 * checked against `nix-store --dump`.
 */
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { assert, assertEquals, assertMatch, assertRejects } from "../assert.ts";
import {
  localStoreArgs,
  remoteStoreArgs,
  type ServerProcess,
  startServer,
  tvixStore,
} from "./helpers.ts";
import { checkNars, expected, ok, packBytes, tree } from "./gc_helpers.ts";
import { constructServices, embeddedAddrs } from "../../src/store/services.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { GrpcPathInfoService } from "../../src/store/pathinfo/grpc.ts";
import { AdminClient } from "../../src/store/admin_client.ts";
import { Code, RpcError } from "../../src/grpc/status.ts";
import { pseudoRandom } from "../fixtures.ts";
import { memoryServices, startServer as startInProcessServer } from "../grpc/client_harness.ts";
import { toHex } from "../../src/castore/digest.ts";

/** Re-stores `path`'s PathInfo with `refs` as its references (as a build output's would be). */
async function setReferences(home: string, path: string, refs: string[]): Promise<void> {
  const s = await constructServices(embeddedAddrs(home));
  try {
    const info = (await s.pathInfo.get(StorePath.parseAbsolute(path).digest))!;
    const refPaths = refs.map((r) => StorePath.parseAbsolute(r));
    await s.pathInfo.put({
      ...info,
      references: refPaths.map((r) => r.digest),
      narinfo: { ...info.narinfo!, referenceNames: refPaths.map((r) => r.basename()) },
    });
  } finally {
    await s.close();
  }
}

/** Imports one tree per entry of `files` (name → one file's contents) into `home`; returns name → store path and NAR. */
async function importTrees(
  work: string,
  home: string,
  files: Record<string, Uint8Array>,
): Promise<Map<string, { path: string; nar: Uint8Array }>> {
  const out = new Map<string, { path: string; nar: Uint8Array }>();
  const dirs: string[] = [];
  for (const [name, data] of Object.entries(files)) {
    dirs.push(await tree(join(work, name), { [`${name}.bin`]: data }));
  }
  const paths = (await ok(["import", "--no-stat-cache", ...localStoreArgs(home), ...dirs]))
    .trim().split("\n");
  for (const [i, name] of Object.keys(files).entries()) {
    const want = await expected(dirs[i]);
    assertEquals(paths[i], want.storePath);
    out.set(name, { path: want.storePath, nar: want.nar });
  }
  return out;
}

/** The daemon on `home`, on a free loopback port, with `args`. */
function daemonOn(home: string, args: string[] = []): Promise<ServerProcess> {
  return startServer(["daemon", "--listen-address", "127.0.0.1:0", ...args], {
    name: "daemon",
    env: { TVIX_STORE_HOME: home },
  });
}

/** Store paths the daemon lists. */
async function listed(remote: string[]): Promise<string[]> {
  return (await ok(["list", ...remote])).trim().split("\n").filter((l) => l !== "");
}

/** Lines of `gc` output that name deleted (or would-be deleted) paths. */
function deletedLines(out: string, verb: string): string[] {
  return out.split("\n").filter((l) => l.startsWith(`${verb} `)).map((l) =>
    l.slice(verb.length + 1)
  ).sort();
}

Deno.test("admin service: delete, gc and verify run in the daemon, with no local URLs", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-admin-" });
  const home = join(work, "home");
  const t = await importTrees(work, home, {
    a: pseudoRandom(2 << 20, 1),
    b: new TextEncoder().encode("b refers to a\n"),
  });
  const pa = t.get("a")!.path, pb = t.get("b")!.path;
  await setReferences(home, pb, [pa]);
  const daemon = await daemonOn(home);
  const url = `grpc+http://${daemon.address}`;
  const remote = remoteStoreArgs(url);
  const client = await AdminClient.fromUrl(url);
  try {
    // A referenced path is refused, naming its referrer: FAILED_PRECONDITION,
    // and one line from the CLI.
    const refused = await tvixStore(["delete", ...remote, pa]);
    assert(refused.code !== 0, "delete of a referenced path must fail");
    assertEquals(refused.stderr.trim().split("\n").length, 1, refused.stderr);
    assertMatch(refused.stderr, new RegExp(`^error: ${pa} is still referenced by ${pb}`));
    const e1 = await assertRejects(() => client.delete([pa], false), RpcError);
    assertEquals(e1.code, Code.FAILED_PRECONDITION);
    assertMatch(e1.message, new RegExp(`still referenced by ${pb}`));
    // An unknown path: NOT_FOUND.
    const unknown = StorePath.fromParts(pseudoRandom(20, 5), "unknown").absolute();
    const e2 = await assertRejects(() => client.delete([unknown], false), RpcError);
    assertEquals(e2.code, Code.NOT_FOUND);
    // Not a store path at all: INVALID_ARGUMENT.
    const e3 = await assertRejects(() => client.delete(["/nix/store/x"], false), RpcError);
    assertEquals(e3.code, Code.INVALID_ARGUMENT);
    const missing = await tvixStore(["delete", ...remote, unknown]);
    assert(missing.code !== 0);
    assertEquals(missing.stderr.trim(), `error: ${unknown} is not in the store`);
    // Nothing was deleted by the refusals.
    assertEquals(await listed(remote), [pa, pb].sort());

    assertMatch(
      await ok(["verify", ...remote]),
      /orphans: 0 directories, 0 blobs and chunks[^\n]*\n2 store paths checked, 0 damaged/,
    );
    const out = await ok(["delete", "--recursive", ...remote, pa]);
    assertEquals(out.trim().split("\n"), [`deleted ${pa}`, `deleted ${pb}`].sort());
    const before = packBytes(home);
    assertMatch(await ok(["gc", "--grace", "0", ...remote]), /reclaimed \d+ bytes on disk/);
    const freed = before - packBytes(home);
    assert(freed >= 2 << 20, `freed only ${freed} bytes`);
    assertEquals(await listed(remote), []);
    assertMatch(await ok(["verify", ...remote]), /0 store paths checked, 0 damaged/);
    assertEquals(daemon.exitStatus(), undefined, "the daemon keeps serving");
  } finally {
    client.close();
    await daemon.stop();
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("verify through the daemon reports a damaged path; --repair removes exactly it", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-admin-verify-" });
  const home = join(work, "home");
  const dirs = [];
  for (const name of ["good", "bad"]) {
    dirs.push(
      await tree(join(work, name), {
        [`sub/${name}.bin`]: pseudoRandom(10_000, name.length),
        "top": new TextEncoder().encode(name),
      }),
    );
  }
  const [good, bad] = (await ok(["import", ...localStoreArgs(home), ...dirs])).trim().split("\n");
  // The damaged path's sub-directory is missing.
  const s = await constructServices(embeddedAddrs(home));
  const root = (await s.pathInfo.get(StorePath.parseAbsolute(bad).digest))!.node!.node!;
  assert(root.$case === "directory");
  const top = (await s.directory.get(root.value.digest))!;
  await s.close();
  const meta = new DatabaseSync(join(home, "store.sqlite"));
  meta.prepare("DELETE FROM directories WHERE digest = ?").run(top.directories[0].digest);
  meta.close();
  const daemon = await daemonOn(home);
  try {
    const remote = remoteStoreArgs(`grpc+http://${daemon.address}`);
    const r = await tvixStore(["verify", ...remote]);
    assert(r.code !== 0, "verify must fail on damage");
    assertEquals(r.stdout.split("\n").filter((l) => l.startsWith("damaged: ")).length, 1);
    assert(r.stdout.includes(`damaged: ${bad}:`), r.stdout);
    assertEquals(r.stderr.trim(), "error: 1 damaged store paths");
    const repaired = await tvixStore(["verify", "--repair", ...remote]);
    assert(repaired.code !== 0);
    assertMatch(repaired.stdout, /removed 1 damaged store paths/);
    assertEquals(await listed(remote), [good]);
    assertMatch(await ok(["verify", ...remote]), /1 store paths checked, 0 damaged/);
  } finally {
    await daemon.stop();
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("gc --older-than deletes only paths not accessed within the time, keeping what kept paths refer to", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-older-" });
  const home = join(work, "home");
  const t = await importTrees(work, home, {
    old: pseudoRandom(50_000, 1),
    dep: pseudoRandom(50_000, 2),
    recent: pseudoRandom(50_000, 3),
    grpcRead: pseudoRandom(50_000, 4),
  });
  const p = (name: string) => t.get(name)!.path;
  await setReferences(home, p("recent"), [p("dep")]);
  const created = Date.now();
  const daemon = await daemonOn(home, ["--nar-bridge-listen-address", "127.0.0.1:0"]);
  const url = `grpc+http://${daemon.address}`;
  const remote = remoteStoreArgs(url);
  const grpc = await GrpcPathInfoService.fromUrl(url);
  try {
    let bridge: string | undefined;
    for (let i = 0; i < 100 && !bridge; i++) {
      bridge = /nar-bridge listening address=(\S+)/.exec(daemon.log())?.[1];
      if (!bridge) await new Promise((r) => setTimeout(r, 100));
    }
    assert(bridge, daemon.log());
    // Age every path, then use two of them: one through the binary cache,
    // one through PathInfo Get.
    await new Promise((r) => setTimeout(r, Math.max(0, created + 10_000 - Date.now())));
    const accessed = Date.now();
    const hash = p("recent").slice("/nix/store/".length, "/nix/store/".length + 32);
    const narinfo = await fetch(`http://${bridge}/${hash}.narinfo`);
    assertEquals(narinfo.status, 200);
    await narinfo.body?.cancel();
    assert(await grpc.get(StorePath.parseAbsolute(p("grpcRead")).digest));
    // A cutoff half-way between the creation and the accesses, wherever
    // gc starts: slow start-ups on a busy machine keep it in between.
    const olderThan = () => `${Math.round((accessed - created) / 2 + (Date.now() - accessed))}ms`;

    const dry = await ok(["gc", "--dry-run", "--older-than", olderThan(), ...remote]);
    assertEquals(deletedLines(dry, "would delete"), [p("old")]);
    assertEquals((await listed(remote)).length, 4, "a dry run deletes nothing");

    const out = await ok(["gc", "--older-than", olderThan(), ...remote]);
    assertEquals(deletedLines(out, "deleted"), [p("old")]);
    // dep was not accessed either, but recent, which was, refers to it.
    assertEquals(await listed(remote), [p("dep"), p("recent"), p("grpcRead")].sort());
  } finally {
    await grpc.close();
    await daemon.stop();
  }
  try {
    const nars = new Map(["dep", "recent", "grpcRead"].map((n) => [p(n), t.get(n)!.nar]));
    assertEquals(await checkNars(home, nars), 3);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("gc --max-size deletes least recently used paths until under the size, never one a kept path refers to", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-maxsize-" });
  const home = join(work, "home");
  const files: Record<string, Uint8Array> = {};
  for (const [i, name] of ["d1", "d2", "app", "s1", "s2"].entries()) {
    files[name] = pseudoRandom(100_000 + i * 1000, 10 + i);
  }
  const t = await importTrees(work, home, files);
  const p = (name: string) => t.get(name)!.path;
  const refs: Record<string, string[]> = { app: ["d1", "d2"] };
  await setReferences(home, p("app"), refs.app.map(p));
  const daemon = await daemonOn(home);
  const url = `grpc+http://${daemon.address}`;
  const remote = remoteStoreArgs(url);
  const grpc = await GrpcPathInfoService.fromUrl(url);
  const total = Object.values(files).reduce((n, f) => n + f.length, 0);
  const limit = Math.floor(total / 2);
  let kept: string[];
  try {
    // Used in this order: d1 least recently, s1 most.
    for (const name of ["d1", "d2", "s2", "app", "s1"]) {
      assert(await grpc.get(StorePath.parseAbsolute(p(name)).digest));
      await new Promise((r) => setTimeout(r, 20));
    }
    const dry = await ok(["gc", "--dry-run", "--max-size", String(limit), ...remote]);
    assertEquals((await listed(remote)).length, 5, "a dry run deletes nothing");
    const out = await ok(["gc", "--max-size", String(limit), ...remote]);
    const deleted = deletedLines(out, "deleted");
    assertEquals(deletedLines(dry, "would delete"), deleted);
    kept = await listed(remote);
    assertEquals([...kept, ...deleted].sort(), Object.keys(files).map(p).sort());
    const nameOf = (path: string) => Object.keys(files).find((n) => p(n) === path)!;
    const keptSize = kept.reduce((n, path) => n + files[nameOf(path)].length, 0);
    assert(keptSize <= limit, `kept ${keptSize} bytes, over the limit of ${limit}`);
    // No more than needed: one path more would have been over the limit.
    const largest = Math.max(...Object.values(files).map((f) => f.length));
    assert(keptSize > limit - largest, `kept only ${keptSize} bytes of ${limit}`);
    assertMatch(out, new RegExp(`stored size ${total} bytes before, ${keptSize} bytes after`));
    // Every kept path's references are kept.
    for (const path of kept) {
      for (const r of refs[nameOf(path)] ?? []) assert(kept.includes(p(r)), `${path} lost ${r}`);
    }
    assert(kept.includes(p("s1")), "the most recently used path is kept");
    // d1 was used least recently, but went only after app, which refers to it.
    assert(!kept.includes(p("app")) || kept.includes(p("d1")));
    assertMatch(await ok(["verify", ...remote]), /0 damaged/);
  } finally {
    await grpc.close();
    await daemon.stop();
  }
  try {
    const nars = new Map(
      kept.map((path) => [path, [...t.values()].find((v) => v.path === path)!.nar]),
    );
    assertEquals(await checkNars(home, nars), kept.length);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("daemon --gc-interval collects an orphan without being asked", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-gc-interval-" });
  const home = join(work, "home");
  const t = await importTrees(work, home, {
    orphan: pseudoRandom(1 << 20, 21),
    kept: pseudoRandom(100_000, 22),
  });
  await ok(["delete", ...localStoreArgs(home), t.get("orphan")!.path]);
  // Make everything look written two hours ago, beyond the default grace
  // period of the scheduled collections.
  const old = Date.now() - 2 * 3600_000;
  const meta = new DatabaseSync(join(home, "store.sqlite"));
  meta.prepare("UPDATE directories SET touched = ?").run(old);
  meta.close();
  const index = new DatabaseSync(join(home, "packs", "index.sqlite"));
  index.prepare("UPDATE blobs SET touched = ?").run(old);
  index.prepare("UPDATE chunks SET touched = ?").run(old);
  const chunksBefore = Number(index.prepare("SELECT count(*) AS n FROM chunks").get()!.n);
  index.close();
  for (const e of Deno.readDirSync(join(home, "packs"))) {
    if (e.name.endsWith(".pack")) {
      Deno.utimeSync(join(home, "packs", e.name), old / 1000, old / 1000);
    }
  }
  const daemon = await daemonOn(home, ["--gc-interval", "1s"]);
  try {
    const deadline = Date.now() + 60_000;
    while (!/ gc done source=schedule .*removed_blobs=[1-9]/.test(daemon.log())) {
      assert(Date.now() < deadline, `no scheduled gc removed anything:\n${daemon.log()}`);
      assertEquals(daemon.exitStatus(), undefined, daemon.log());
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    await daemon.stop();
  }
  try {
    const index = new DatabaseSync(join(home, "packs", "index.sqlite"));
    const chunksAfter = Number(index.prepare("SELECT count(*) AS n FROM chunks").get()!.n);
    index.close();
    assert(chunksAfter < chunksBefore, `${chunksAfter} chunk rows, as before`);
    assertMatch(
      await ok(["verify", ...localStoreArgs(home)]),
      /orphans: 0 directories, 0 blobs and chunks[^\n]*\n1 store paths checked, 0 damaged/,
    );
    assertEquals(await checkNars(home, new Map([[t.get("kept")!.path, t.get("kept")!.nar]])), 1);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("gc: a bad policy value, or addresses mixing a daemon and local backends, is one line and a failure", async () => {
  const memory = ["--blob-service-addr", "memory://", "--directory-service-addr", "memory://"];
  const cases: [string[], string][] = [
    [["--older-than", "0", ...memory], 'error: invalid --older-than "0" (must be more than 0)'],
    [["--max-size", "10X", ...memory], 'error: invalid --max-size "10X" (use e.g. 10G or 512MiB)'],
    [
      [...memory, "--path-info-service-addr", "grpc+http://127.0.0.1:1"],
      "error: gc runs either in a daemon (all three service addresses the same grpc+… URL) or " +
      "on the store's own backends (none at a daemon), not on a mix: memory://, memory://, " +
      "grpc+http://127.0.0.1:1",
    ],
  ];
  for (const [args, message] of cases) {
    const r = await tvixStore(["gc", ...args]);
    assertEquals([r.code, r.stderr.trim()], [1, message]);
  }
});

Deno.test("nar-bridge on the store's own backends records the narinfos it serves as accesses", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-bridge-access-" });
  const home = join(work, "home");
  const t = await importTrees(work, home, {
    served: pseudoRandom(1000, 31),
    unserved: pseudoRandom(1000, 32),
  });
  const accessTimes = async () => {
    const s = await constructServices(embeddedAddrs(home));
    try {
      const times = new Map<string, number>();
      for await (const a of s.pathInfo.listAccess!()) {
        const name = [...t.keys()].find((n) =>
          toHex(StorePath.parseAbsolute(t.get(n)!.path).digest) === toHex(a.digest)
        )!;
        times.set(name, a.accessedMs);
      }
      return times;
    } finally {
      await s.close();
    }
  };
  try {
    const created = await accessTimes();
    await new Promise((r) => setTimeout(r, 20));
    const bridge = await startServer(
      ["nar-bridge", "--listen-address", "127.0.0.1:0", ...localStoreArgs(home)],
      { name: "nar-bridge" },
    );
    try {
      const hash = t.get("served")!.path.slice("/nix/store/".length, "/nix/store/".length + 32);
      const r = await fetch(`http://${bridge.address}/${hash}.narinfo`);
      assertEquals(r.status, 200);
      await r.body?.cancel();
    } finally {
      // Stopping writes the pending accesses.
      assertEquals((await bridge.stop()).status.code, 0, bridge.log());
    }
    const after = await accessTimes();
    assert(after.get("served")! > created.get("served")!, "the served path's access moved");
    assertEquals(after.get("unserved"), created.get("unserved"));
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("gc through a daemon whose backends cannot be collected: one line, a failure, and the daemon serves on", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-admin-memory-" });
  const daemon = await startServer([
    "daemon",
    "--listen-address",
    "127.0.0.1:0",
    "--blob-service-addr",
    "memory://",
    "--directory-service-addr",
    "memory://",
    "--path-info-service-addr",
    "memory://",
  ], { name: "daemon", env: { TVIX_STORE_HOME: join(work, "home") } });
  try {
    const remote = remoteStoreArgs(`grpc+http://${daemon.address}`);
    const r = await tvixStore(["gc", ...remote]);
    assertEquals(r.code, 1);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    assertMatch(
      r.stderr,
      /^error: the daemon at grpc\+http:\/\/127\.0\.0\.1:\d+: these services cannot be garbage collected: gc needs backends that can enumerate and delete/,
    );
    // Deleting works on any backend that can delete.
    const dir = await tree(join(work, "x"), { "x.txt": new TextEncoder().encode("x\n") });
    const px = (await ok(["import", ...remote, dir])).trim();
    assertEquals((await ok(["delete", ...remote, px])).trim(), `deleted ${px}`);
    assertEquals(daemon.exitStatus(), undefined, "the daemon keeps serving");
  } finally {
    await daemon.stop();
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("against a daemon without the AdminService: verify reads through the upstream services, gc and verify --repair say what is missing", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-no-admin-" });
  // Our gRPC server without the AdminService, as upstream's daemon is.
  const server = await startInProcessServer(memoryServices());
  try {
    const remote = remoteStoreArgs(server.url);
    const dir = await tree(join(work, "x"), { "x.bin": pseudoRandom(70_000, 41) });
    const px = (await ok(["import", ...remote, dir])).trim();
    assertMatch(await ok(["verify", ...remote]), /^1 store paths checked, 0 damaged$/m);
    for (const args of [["verify", "--repair"], ["gc"], ["delete", px]]) {
      const r = await tvixStore([...args, ...remote]);
      assertEquals(r.code, 1, r.stderr);
      assertEquals(
        r.stderr.trim(),
        `error: the daemon at ${server.url} has no AdminService (a tvix-store without store ` +
          "management, or upstream's): point --blob-service-addr, --directory-service-addr and " +
          "--path-info-service-addr at the store's own backends instead",
      );
    }
  } finally {
    await server.stop();
    await Deno.remove(work, { recursive: true });
  }
});
