/**
 * Store management with real processes on the embedded store's layout
 * (pack blobs, SQLite metadata): `list`, `info`, `delete`, `gc` and
 * `verify`, including gc running while imports and copies stream in
 * (in-process, and through a daemon with gc both through its AdminService
 * and on its files) and gc killed with SIGKILL. Every kept path is checked
 * against `nix-store --dump`.
 */
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { assert, assertEquals, assertMatch, assertRejects } from "../assert.ts";
import {
  childEnv,
  localStoreArgs,
  MAIN,
  remoteStoreArgs,
  startServer,
  tvixStore,
} from "./helpers.ts";
import { constructServices, embeddedAddrs } from "../../src/store/services.ts";
import {
  collectGarbage,
  deletePaths,
  type ManagedServices,
  PathReferencedError,
  storePathOf,
  verifyStore,
} from "../../src/store/gc.ts";
import { SqlitePathInfoService } from "../../src/store/pathinfo/sqlite.ts";
import type { PathInfo, PathInfoService } from "../../src/store/pathinfo/service.ts";
import { StorageError, UnavailableError } from "../../src/errors.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { pseudoRandom } from "../fixtures.ts";
import { blake3, bytesEqual } from "../../src/castore/digest.ts";
import { checkNars, expected, ok, packBytes, tree } from "./gc_helpers.ts";
import { run } from "../store/tree_gen.ts";
import { referringPathInfo } from "../store/pathinfo_fixtures.ts";
import { renameNode, toNode } from "../../src/castore/node.ts";
import { calculateNar } from "../../src/nar/render.ts";

const te = new TextEncoder();

/**
 * A store with one imported path, and the PathInfo of a path "c" referring
 * to it, as a build output refers to its dependency (not stored).
 */
async function storeWithDependency(work: string, seed: number): Promise<{
  store: string;
  dep: StorePath;
  referrer: StorePath;
  referrerInfo: PathInfo;
}> {
  const a = await tree(join(work, "a"), { "f": te.encode("dependency\n") });
  const store = join(work, "store");
  const dep = StorePath.parseAbsolute((await ok(["import", ...localStoreArgs(store), a])).trim());
  const referrer = StorePath.fromParts(pseudoRandom(20, seed), "c");
  const infos = new SqlitePathInfoService(join(store, "store.sqlite"));
  try {
    const infoA = (await infos.get(dep.digest))!;
    const referrerInfo = {
      ...infoA,
      node: toNode(renameNode(infoA.node!.node!, te.encode(referrer.basename()))),
      references: [dep.digest],
      narinfo: { ...infoA.narinfo!, referenceNames: [dep.basename()] },
    };
    return { store, dep, referrer, referrerInfo };
  } finally {
    await infos.close();
  }
}

Deno.test("gc: delete then gc reclaims a path's own bytes, keeps what another path shares", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-gc-" });
  try {
    const shared = pseudoRandom(2 << 20, 1);
    const a = await tree(join(work, "a"), {
      "shared.bin": shared,
      "own.bin": pseudoRandom(4 << 20, 2),
    });
    const b = await tree(join(work, "b"), { "copy.bin": shared, "x.txt": te.encode("hi\n") });
    const store = join(work, "store");
    const S = localStoreArgs(store);
    const pa = (await ok(["import", ...S, a])).trim();
    const pb = (await ok(["import", ...S, b])).trim();
    const ea = await expected(a), eb = await expected(b);
    assertEquals([pa, pb], [ea.storePath, eb.storePath]);
    assertEquals((await ok(["list", ...S])).trim().split("\n"), [pa, pb].sort());
    const listed = JSON.parse(await ok(["list", "--json", ...S]));
    assertEquals(listed.find((p: { path: string }) => p.path === pa).narSize, ea.nar.length);

    const info = await ok(["info", ...S, pa]);
    assertMatch(info, /shared: +2097152 bytes/);

    const before = packBytes(store);
    assertMatch(await ok(["delete", ...S, pa]), new RegExp(`deleted ${pa}`));
    // A dry run reports and changes nothing.
    assertMatch(await ok(["gc", "--dry-run", "--grace", "0", ...S]), /would remove/);
    assertEquals(packBytes(store), before);
    assertMatch(await ok(["gc", "--grace", "0", ...S]), /reclaimed \d+ bytes on disk/);
    const freed = before - packBytes(store);
    // a's own file (random, stored raw) is gone, its pack rewritten (under
    // half of it was live); the shared file is kept.
    assert(freed >= 4 << 20 && freed < (4 << 20) + 100_000, `freed ${freed} bytes`);
    assertEquals(await checkNars(store, new Map([[pb, eb.nar]])), 1);
    assertMatch(await ok(["verify", ...S]), /1 store paths checked, 0 damaged/);
    // Deleting what is not (or no longer) there is an error naming it.
    const gone = await tvixStore(["delete", ...S, pa]);
    assert(gone.code !== 0);
    assertMatch(gone.stderr, new RegExp(`${pa} is not in the store`));
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("gc: deleting a path another path refers to is refused unless --recursive", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-gc-" });
  try {
    const { store, dep, referrer: pc, referrerInfo } = await storeWithDependency(work, 7);
    const S = localStoreArgs(store);
    const pa = dep.absolute();
    const s = new SqlitePathInfoService(join(store, "store.sqlite"));
    await s.put(referrerInfo).finally(() => s.close());
    const refused = await tvixStore(["delete", ...S, pa]);
    assert(refused.code !== 0, "delete of a referenced path must fail");
    assertMatch(refused.stderr, new RegExp(`still referenced by ${pc.absolute()}`));
    assertEquals((await ok(["list", ...S])).trim().split("\n").length, 2);
    const info = await ok(["info", ...S, pa]);
    assertMatch(info, new RegExp(`referrers: +${pc.absolute()}`));
    const out = await ok(["delete", "--recursive", ...S, pa]);
    assertEquals(
      out.trim().split("\n").sort(),
      [`deleted ${pa}`, `deleted ${pc.absolute()}`].sort(),
    );
    assertEquals((await ok(["list", ...S])).trim(), "");
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("gc --older-than keeps an old path that a path stored while the policies ran refers to", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-gc-" });
  try {
    const { store, dep, referrer: pc, referrerInfo: infoC } = await storeWithDependency(work, 8);
    // Not used for a long time: the policy's victim, as the listing shows it.
    const db = new DatabaseSync(join(store, "store.sqlite"));
    db.prepare("UPDATE pathinfos SET accessed = 0").run();
    db.close();
    const s = await constructServices(embeddedAddrs(store));
    try {
      let stored = false;
      const report = await collectGarbage(s as ManagedServices, {
        olderThanMs: 86_400_000,
        onProgress: (p) => {
          // c is stored after the listing, by another process on the same
          // file (whose put has committed when it returns).
          if (p.phase === "select" && !stored) {
            stored = true;
            const other = new SqlitePathInfoService(join(store, "store.sqlite"));
            other.put(infoC).finally(() => other.close());
          }
        },
      });
      assert(stored);
      assertEquals(report.deletedPaths, []);
      assert(await s.pathInfo.get(dep.digest), "the path c refers to stays");
      assert(await s.pathInfo.get(pc.digest));
    } finally {
      await s.close();
    }
    assertMatch(await ok(["verify", ...localStoreArgs(store)]), /2 store paths checked, 0 damaged/);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("delete refuses a path that a path stored after its listing refers to, naming it", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-gc-" });
  try {
    const { store, dep, referrer: pc, referrerInfo } = await storeWithDependency(work, 9);
    const infos = new SqlitePathInfoService(join(store, "store.sqlite"));
    try {
      await infos.put(referrerInfo);
      // The listing deletePaths reads was taken before c was stored.
      const listedEarlier: PathInfoService = {
        get: (digest) => infos.get(digest),
        put: (info) => infos.put(info),
        delete: (digest, expected) => infos.delete(digest, expected),
        close: () => Promise.resolve(),
        list: async function* () {
          for await (const info of infos.list()) {
            if (!bytesEqual(storePathOf(info).digest, pc.digest)) yield info;
          }
        },
      };
      const err = await assertRejects(() => deletePaths(listedEarlier, [dep]), PathReferencedError);
      assertEquals(err.referrers, [pc.absolute()]);
      assert(await infos.get(dep.digest), "the path stays");
    } finally {
      await infos.close();
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("delete --recursive removes paths that refer to each other", async () => {
  const infos = new SqlitePathInfoService(undefined);
  try {
    const [a, b] = ["00000000000000000000000000000000-a", "11111111111111111111111111111111-b"];
    await infos.put(referringPathInfo(a, [b]));
    await infos.put(referringPathInfo(b, [a]));
    const refused = await assertRejects(
      () => deletePaths(infos, [StorePath.parseBasename(a)]),
      PathReferencedError,
    );
    assertMatch(refused.message, /use --recursive/);
    const deleted = await deletePaths(infos, [StorePath.parseBasename(a)], { recursive: true });
    assertEquals(deleted.map((p) => p.basename()).sort(), [a, b]);
    assertEquals((await infos.list()[Symbol.asyncIterator]().next()).done, true);
  } finally {
    await infos.close();
  }
});

Deno.test("verify reports a PathInfo row that does not decode; --repair removes it, and gc runs again", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-verify-row-" });
  try {
    const trees = await Promise.all(
      [0, 1].map((i) => tree(join(work, `p${i}`), { "f": te.encode(`file ${i}\n`) })),
    );
    const store = join(work, "store");
    const S = localStoreArgs(store);
    const [kept, damaged] = (await ok(["import", ...S, ...trees])).trim().split("\n");
    const db = new DatabaseSync(join(store, "store.sqlite"));
    db.prepare("UPDATE pathinfos SET data = ? WHERE digest = ?")
      .run(new Uint8Array([0xff, 0xff]), StorePath.parseAbsolute(damaged).digest);
    db.close();
    const hash = StorePath.parseAbsolute(damaged).basename().slice(0, 32);
    // gc, list, info and delete refuse to work around it, in one line that
    // names the command that finds and removes it; verify names it.
    for (
      const args of [["gc"], ["list"], ["info", kept], ["delete", damaged]]
    ) {
      const refused = await tvixStore([...args, ...S]);
      assert(refused.code !== 0, args[0]);
      assertMatch(
        refused.stderr.trim(),
        /^error: [^\n]*tvix-store verify --repair` removes them\)$/,
      );
    }
    const checked = await tvixStore(["verify", ...S]);
    assert(checked.code !== 0);
    assertMatch(checked.stdout, new RegExp(`damaged: \\(PathInfo ${hash}\\): .*unable to decode`));
    assertMatch(checked.stdout, /2 store paths checked, 1 damaged/);
    const repaired = await tvixStore(["verify", "--repair", ...S]);
    assertMatch(repaired.stdout, /removed 1 damaged store paths/);
    assertEquals((await ok(["list", ...S])).trim(), kept);
    assertMatch(await ok(["gc", "--grace", "0", ...S]), /reclaimed/);
    assertMatch(await ok(["verify", ...S]), /1 store paths checked, 0 damaged/);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("verify: catches a flipped byte, a missing chunk and a missing directory; --repair removes exactly those", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-verify-" });
  try {
    // Below the smallest chunk: each file is one chunk, its blob digest.
    const data = [0, 1, 2, 3].map((i) => pseudoRandom(100_000 + i, 10 + i));
    const trees = await Promise.all(
      data.map((d, i) => tree(join(work, `p${i}`), { [`sub/f${i}`]: d, "top": te.encode(`${i}`) })),
    );
    const store = join(work, "store");
    const S = localStoreArgs(store);
    const paths = (await ok(["import", ...S, ...trees])).trim().split("\n");
    assertMatch(await ok(["verify", ...S]), /4 store paths checked, 0 damaged/);

    const db = new DatabaseSync(join(store, "packs", "index.sqlite"));
    // p0: flip a byte inside its file's chunk record.
    const row = db.prepare("SELECT pack, offset FROM chunks WHERE digest = ?").get(
      blake3(data[0]),
    )!;
    const pack = join(store, "packs", `${row.pack}.pack`);
    const bytes = Deno.readFileSync(pack);
    bytes[Number(row.offset) + 1000] ^= 0x01;
    Deno.writeFileSync(pack, bytes);
    // p1: its file's chunk is missing from the index.
    db.prepare("DELETE FROM chunks WHERE digest = ?").run(blake3(data[1]));
    db.close();
    // p2: its sub-directory is missing.
    const s = await constructServices(embeddedAddrs(store));
    const root = (await s.pathInfo.get(StorePath.parseAbsolute(paths[2]).digest))!.node!.node!;
    assert(root.$case === "directory");
    const top = (await s.directory.get(root.value.digest))!;
    await s.close();
    const meta = new DatabaseSync(join(store, "store.sqlite"));
    meta.prepare("DELETE FROM directories WHERE digest = ?").run(top.directories[0].digest);
    meta.close();

    const r = await tvixStore(["verify", ...S]);
    assert(r.code !== 0, "verify must fail on damage");
    const damaged = r.stdout.split("\n").filter((l) => l.startsWith("damaged: "));
    assertEquals(damaged.length, 3, r.stdout);
    for (const p of paths.slice(0, 3)) assert(r.stdout.includes(`damaged: ${p}:`), p);
    const repaired = await tvixStore(["verify", "--repair", ...S]);
    assert(repaired.code !== 0);
    assertMatch(repaired.stdout, /removed 3 damaged store paths/);
    assertEquals((await ok(["list", ...S])).trim(), paths[3]);
    assertMatch(await ok(["verify", ...S]), /1 store paths checked, 0 damaged/);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("gc: a path whose root directory is missing stops gc before it removes anything", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-gc-noroot-" });
  try {
    const t = await tree(join(work, "t"), {
      "sub/f": pseudoRandom(100_000, 30),
      "top": te.encode("t"),
    });
    const store = join(work, "store");
    const S = localStoreArgs(store);
    const path = (await ok(["import", ...S, t])).trim();
    const s = await constructServices(embeddedAddrs(store));
    const root = (await s.pathInfo.get(StorePath.parseAbsolute(path).digest))!.node!.node!;
    await s.close();
    assert(root.$case === "directory");
    const meta = new DatabaseSync(join(store, "store.sqlite"));
    meta.prepare("DELETE FROM directories WHERE digest = ?").run(root.value.digest);
    const rows = () => meta.prepare("SELECT count(*) AS n FROM directories").get()!.n;
    const left = rows();
    const before = packBytes(store);
    const r = await tvixStore(["gc", "--grace", "0", ...S]);
    assert(r.code !== 0, "gc must stop");
    assertMatch(r.stderr, /root directory .* does not exist/);
    assertEquals(rows(), left, "the rest of its tree is kept");
    assertEquals(packBytes(store), before, "and its blobs");
    meta.close();
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("verify --repair removes paths with a damaged compressed chunk (decoded inline or in a Worker) or directory row", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-verify-compressed-" });
  try {
    // Text compresses: stored as zstd frames. 20 KB is decoded on the
    // reader's thread, 100 KB (one chunk, above 64 KiB) in a chunk Worker.
    const text = (n: number, seed: number) =>
      te.encode(Array.from({ length: n / 8 }, (_, i) => `w${(i * seed) % 97}`.padEnd(8)).join(""));
    const files = [text(20_000, 3), text(100_000, 5), text(30_000, 7)];
    const trees = await Promise.all(
      files.map((f, i) => tree(join(work, `p${i}`), { [`d${i}/f`]: f, top: te.encode(`${i}`) })),
    );
    const store = join(work, "store");
    const S = localStoreArgs(store);
    const paths = (await ok(["import", ...S, ...trees])).trim().split("\n");
    const index = new DatabaseSync(join(store, "packs", "index.sqlite"));
    for (const f of files.slice(0, 2)) {
      const row = index.prepare("SELECT pack, offset, length, raw FROM chunks WHERE digest = ?")
        .get(blake3(f))!;
      assertEquals(row.raw, 0, "stored compressed");
      const pack = join(store, "packs", `${row.pack}.pack`);
      const bytes = Deno.readFileSync(pack);
      bytes[Number(row.offset) + Math.floor(Number(row.length) / 2)] ^= 0x10;
      Deno.writeFileSync(pack, bytes);
    }
    index.close();
    // p2: a byte of its subdirectory's stored row flipped.
    const s = await constructServices(embeddedAddrs(store));
    const root = (await s.pathInfo.get(StorePath.parseAbsolute(paths[2]).digest))!.node!.node!;
    assert(root.$case === "directory");
    const sub = (await s.directory.get(root.value.digest))!.directories[0].digest;
    await s.close();
    const meta = new DatabaseSync(join(store, "store.sqlite"));
    const data = meta.prepare("SELECT data FROM directories WHERE digest = ?").get(sub)!
      .data as Uint8Array;
    const flipped = data.slice();
    flipped[flipped.length - 1] ^= 0x01;
    meta.prepare("UPDATE directories SET data = ? WHERE digest = ?").run(flipped, sub);
    meta.close();

    const repaired = await tvixStore(["verify", "--repair", ...S]);
    assert(repaired.code !== 0, repaired.stderr);
    assertMatch(repaired.stdout, /removed 3 damaged store paths/);
    assertEquals((await ok(["list", ...S])).trim(), "");
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

/**
 * Imports two small paths into an embedded store at `work`, runs
 * `verifyStore` with repair over the services `open` gives for it, and
 * returns what that threw, once it is checked that both paths are still
 * listed.
 */
async function repairOver(
  work: string,
  open: (store: string) => Promise<{ services: ManagedServices; close(): Promise<void> }>,
): Promise<unknown> {
  const trees = await Promise.all(
    [0, 1].map((i) => tree(join(work, `p${i}`), { f: pseudoRandom(5000 + i, i) })),
  );
  const store = join(work, "store");
  const S = localStoreArgs(store);
  const paths = (await ok(["import", ...S, ...trees])).trim().split("\n");
  const { services, close } = await open(store);
  let failure: unknown;
  try {
    await verifyStore(services, { repair: true });
  } catch (err) {
    failure = err;
  } finally {
    await close();
  }
  assertEquals((await ok(["list", ...S])).trim().split("\n").sort(), [...paths].sort());
  return failure;
}

Deno.test("verify --repair leaves a damaged path that was stored anew, whole, while it ran", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-verify-anew-" });
  try {
    const store = join(work, "store");
    // Two builds of one input-addressed path: same name, other bytes.
    const name = "22222222222222222222222222222222-p";
    const [one, two] = [1, 2].map((i) => pseudoRandom(100_000 + i, 40 + i));
    const s = await constructServices(embeddedAddrs(store));
    try {
      const infoOf = async (data: Uint8Array) => {
        const w = s.blob.openWrite();
        await w.write(data);
        const digest = await w.close();
        const node = toNode({
          $case: "file" as const,
          value: { name: te.encode(name), digest, size: BigInt(data.length), executable: false },
        });
        const nar = await calculateNar(node.node!, s.blob, s.directory);
        return {
          node,
          references: [],
          narinfo: {
            narSize: nar.narSize,
            narSha256: nar.narSha256,
            signatures: [],
            referenceNames: [],
            deriver: undefined,
            ca: undefined,
            upload: undefined,
          },
        };
      };
      const damaged = await infoOf(one);
      const anew = await infoOf(two);
      await s.pathInfo.put(damaged);
      await s.blob.sync?.();
      // The first build's only chunk goes missing.
      const index = new DatabaseSync(join(store, "packs", "index.sqlite"));
      index.prepare("DELETE FROM chunks WHERE digest = ?").run(blake3(one));
      index.close();
      let stored = false;
      const report = await verifyStore(s as ManagedServices, {
        repair: true,
        onProgress: (p) => {
          // Checked and found damaged; stored anew before the repair.
          if (!stored && p.pathsTotal > 0 && p.pathsDone === p.pathsTotal) {
            stored = true;
            s.pathInfo.put(anew);
          }
        },
      });
      assert(stored);
      assertEquals(report.damaged.length, 1);
      assertEquals(report.repaired, 0);
      const digest = StorePath.parseBasenameBytes(te.encode(name)).digest;
      assertEquals((await s.pathInfo.get(digest))?.node, anew.node, "the new build stays");
    } finally {
      await s.close();
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("verify --repair with the blobs out of reach fails and removes nothing", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-verify-down-" });
  try {
    // The same metadata, with the blobs behind a daemon that is not there
    // (the command refuses such a mix, so in process): every read fails
    // with UNAVAILABLE, which says nothing about the paths.
    const failure = await repairOver(work, async (store) => {
      const services = await constructServices({
        ...embeddedAddrs(store),
        blobServiceAddr: "grpc+http://127.0.0.1:1",
      });
      return { services, close: () => services.close() };
    });
    assert(failure instanceof UnavailableError, `failed with ${failure}`);
    assertMatch(
      await ok(["verify", ...localStoreArgs(join(work, "store"))]),
      /2 store paths checked, 0 damaged/,
    );
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("verify --repair: a backend failing for another reason than damage removes nothing", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-verify-refused-" });
  try {
    // The store as it is, with every read refused the way an object store
    // refuses expired credentials: a StorageError that is not damage.
    const failure = await repairOver(work, async (store) => {
      const services = await constructServices(embeddedAddrs(store));
      const refused = () => Promise.reject(new StorageError("access denied (expired credentials)"));
      const blob = Object.assign(Object.create(services.blob), {
        openRead: refused,
        readWhole: refused,
      });
      return { services: { ...services, blob }, close: () => services.close() };
    });
    assert(failure instanceof StorageError, `failed with ${failure}`);
    assertMatch(String(failure), /access denied/);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

/** Adds `path` to the local Nix store; returns its store path and a closure file for `copy`. */
async function nixAdd(path: string, work: string): Promise<{ storePath: string; json: string }> {
  const td = new TextDecoder();
  const storePath = td.decode(await run("nix-store", ["--add", path])).trim();
  const json = join(work, `${storePath.split("/").pop()}.json`);
  await Deno.writeFile(
    json,
    await run("nix", [
      "--extra-experimental-features",
      "nix-command",
      "path-info",
      "--json",
      storePath,
    ]),
  );
  return { storePath, json };
}

/** Runs `tvix-store ARGS…` until it succeeds, retrying (a few times) what gc's races refuse. */
async function retried(args: string[]): Promise<{ stdout: string; retries: number }> {
  for (let attempt = 0;; attempt++) {
    const r = await tvixStore(args);
    if (r.code === 0) return { stdout: r.stdout, retries: attempt };
    assertMatch(r.stderr, /garbage collected|removed by garbage collection/);
    assert(attempt < 3, `tvix-store ${args[0]} kept failing:\n${r.stderr}`);
  }
}

/**
 * Imports trees one after another, and copies closures from /nix/store at
 * the same time, while gc runs in a loop with a short grace period (with
 * `gcArgs` in turn, round after round). Half of the data was stored
 * before by a path that was deleted and has aged past the grace period:
 * unreferenced chunks that the new imports and copies reuse while gc may
 * be deleting them. An import or copy that loses that race must fail and
 * succeed when retried; no path may lose data.
 */
async function importWhileCollecting(work: string, storeArgs: string[], gcArgs: string[][]) {
  const garbage = pseudoRandom(1 << 20, 99);
  const g = await tree(join(work, "g"), { "old.bin": garbage });
  const pg = (await ok(["import", "--no-stat-cache", ...storeArgs, g])).trim();
  await ok(["delete", ...gcArgs[0], pg]);
  await new Promise((r) => setTimeout(r, 1500)); // older than the grace period below
  let stop = false;
  let rounds = 0;
  const loop = (async () => {
    while (!stop) {
      await ok(["gc", "--grace", "1s", ...gcArgs[rounds % gcArgs.length]]);
      rounds++;
    }
  })();
  const nars = new Map<string, Uint8Array>();
  const nixPaths: string[] = [];
  let retries = 0;
  const imports = async () => {
    for (let i = 0; i < 6; i++) {
      const t = await tree(join(work, `t${i}`), {
        "reused.bin": garbage,
        [`own${i}.bin`]: pseudoRandom(400_000, 200 + i),
        "small/a.txt": te.encode(`tree ${i}\n`),
      });
      const want = await expected(t);
      const r = await retried(["import", "--no-stat-cache", ...storeArgs, t]);
      assertEquals(r.stdout.trim(), want.storePath);
      retries += r.retries;
      nars.set(want.storePath, want.nar);
    }
  };
  const copies = async () => {
    for (let i = 0; i < 3; i++) {
      const t = await tree(join(work, `copied-${crypto.randomUUID()}`), {
        "reused.bin": garbage,
        [`copied${i}.bin`]: pseudoRandom(300_000, 400 + i),
      });
      const added = await nixAdd(t, work);
      nixPaths.push(added.storePath);
      const r = await retried(["copy", "--quiet", ...storeArgs, added.json]);
      retries += r.retries;
      nars.set(added.storePath, await run("nix-store", ["--dump", added.storePath]));
    }
  };
  try {
    await Promise.all([imports(), copies()]);
  } finally {
    stop = true;
    await loop;
    for (const p of nixPaths) {
      await new Deno.Command("nix-store", { args: ["--delete", p], stdout: "null", stderr: "null" })
        .output();
    }
  }
  console.log(`gc rounds during the imports and copies: ${rounds}, retried: ${retries}`);
  assert(rounds >= 2, `gc ran only ${rounds} times`);
  return nars;
}

Deno.test("gc in a loop while imports and copies stream in, in-process: nothing is lost", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-gc-loop-" });
  try {
    const store = join(work, "store");
    const S = localStoreArgs(store);
    const nars = await importWhileCollecting(work, S, [S]);
    await ok(["gc", "--grace", "0", ...S]);
    assertEquals(await checkNars(store, nars), nars.size);
    assertMatch(await ok(["verify", ...S]), /0 damaged/);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("gc in a loop on a daemon's store (through its AdminService and on its files) while imports and copies go through the daemon: nothing is lost", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-gc-daemon-" });
  const home = join(work, "home");
  const daemon = await startServer(["daemon", "--listen-address", "127.0.0.1:0"], {
    name: "daemon",
    env: { TVIX_STORE_HOME: home },
  });
  try {
    const url = `grpc+http://${daemon.address}`;
    const remote = remoteStoreArgs(url);
    const nars = await importWhileCollecting(work, remote, [remote, localStoreArgs(home)]);
    assertEquals(daemon.exitStatus(), undefined, "the daemon keeps serving");
    assertMatch(await ok(["verify", ...remote]), /0 damaged/);
    const { status } = await daemon.stop();
    assertEquals(status.code, 0, daemon.log());
    assertEquals(await checkNars(home, nars), nars.size);
    assertMatch(await ok(["verify", ...localStoreArgs(home)]), /0 damaged/);
  } finally {
    await daemon.stop();
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("gc killed with SIGKILL at any moment leaves a store verify finds clean", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-gc-kill-" });
  try {
    const store = join(work, "store");
    const S = localStoreArgs(store);
    const nars = new Map<string, Uint8Array>();
    const doomed: string[] = [];
    for (let i = 0; i < 8; i++) {
      const t = await tree(join(work, `t${i}`), {
        "big.bin": pseudoRandom(3 << 20, 300 + i),
        "common.bin": pseudoRandom(1 << 20, 7),
      });
      const p = (await ok(["import", ...S, t])).trim();
      if (i % 2 === 0) doomed.push(p);
      else nars.set(p, (await expected(t)).nar);
    }
    await ok(["delete", ...S, ...doomed]);
    for (const delayMs of [150, 300, 450, 600, 800]) {
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", MAIN, "gc", "--grace", "0", ...S],
        env: childEnv(),
        clearEnv: true,
        stdout: "null",
        stderr: "null",
      }).spawn();
      await new Promise((r) => setTimeout(r, delayMs));
      try {
        child.kill("SIGKILL");
      } catch { /* finished first */ }
      await child.status;
      assertMatch(await ok(["verify", ...S]), /4 store paths checked, 0 damaged/);
    }
    await ok(["gc", "--grace", "0", ...S]);
    assertMatch(await ok(["verify", ...S]), /orphans: 0 directories, 0 blobs/);
    assertEquals(await checkNars(store, nars), 4);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
