/**
 * PathInfoService conformance suite (docs/architecture.md#the-three-services,
 * docs/compatibility.md#pathinfo-validation): the same cases run
 * against every backend. A backend's test file calls
 * {@linkcode pathInfoServiceConformance} with a factory for fresh services.
 *
 * @module
 */
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { digestKey } from "../../src/castore/digest.ts";
import { InvalidRequestError } from "../../src/errors.ts";
import {
  type PathInfo,
  type PathInfoService,
  StillReferencedError,
} from "../../src/store/pathinfo/service.ts";
import { StorePath } from "../../src/store/store_path.ts";
import * as F from "../fixtures.ts";
import {
  pathInfoWithNarinfo,
  pathInfoWithoutNarinfo,
  referringPathInfo,
  symlinkPathInfo,
} from "../store/pathinfo_fixtures.ts";
import { collect, type ServiceFactory, withService } from "./harness.ts";

/** What a backend does differently, so the suite checks only what it promises. */
export interface PathInfoSuiteOptions {
  /**
   * The error class an invalid put rejects with (default
   * `InvalidRequestError`); a client may only see a generic failure.
   */
  // deno-lint-ignore no-explicit-any
  invalidPutError?: abstract new (...args: any[]) => Error;
}

const digestOf = (basename: string) => StorePath.parseBasename(basename).digest;
const sortByDigest = (infos: PathInfo[]) =>
  [...infos].sort((x, y) => {
    const kx = digestKey(StorePath.parseBasenameBytes(x.node!.node!.value.name).digest);
    const ky = digestKey(StorePath.parseBasenameBytes(y.node!.node!.value.name).digest);
    return kx < ky ? -1 : kx > ky ? 1 : 0;
  });

/** Registers the PathInfoService conformance cases, each on a fresh service from `factory`. */
export function pathInfoServiceConformance(
  label: string,
  factory: ServiceFactory<PathInfoService>,
  options: PathInfoSuiteOptions = {},
): void {
  const test = (name: string, fn: (s: PathInfoService) => Promise<void>) =>
    Deno.test(`${label}: pathinfo ${name}`, () => withService(factory, fn));
  const invalidError = options.invalidPutError ?? InvalidRequestError;

  test("get nonexistent is absent", async (s) => {
    assertEquals(await s.get(F.DUMMY_PATH_DIGEST), undefined);
  });

  test("list of an empty store is empty", async (s) => {
    assertEquals(await collect(s.list()), []);
  });

  test("put, get", async (s) => {
    const info = symlinkPathInfo();
    assertEquals(await s.put(info), info);
    assertEquals(await s.get(new Uint8Array(20)), info);
  });

  test("put, get keeps every narinfo field", async (s) => {
    const info = pathInfoWithNarinfo();
    info.narinfo!.narSize = 1n << 60n;
    info.narinfo!.signatures = [{ name: "cache.example-1", data: new Uint8Array(64).fill(7) }];
    info.narinfo!.deriver = { name: "foo", digest: new Uint8Array(20).fill(3) };
    // Where nar-bridge received the NAR (our extension field): kept like the rest.
    info.narinfo!.upload = {
      url: "nar/1wa2b3c4d5e6f7g8h9i0j1k2l3m4n5p6q7r8s9v0w1x2y3z4a5b6.nar.xz",
      compression: "xz",
      fileSha256: new Uint8Array(32).fill(9),
      fileSize: 12345n,
    };
    assertEquals(await s.put(info), info);
    assertEquals(await s.get(F.DUMMY_PATH_DIGEST), info);
    const plain = pathInfoWithoutNarinfo();
    plain.node!.node!.value.name = F.b("11111111111111111111111111111111-dummy");
    await s.put(plain);
    assertEquals(await s.get(digestOf("11111111111111111111111111111111-dummy")), plain);
  });

  test("put overwrites an entry with the same store path", async (s) => {
    await s.put(symlinkPathInfo(undefined, "first"));
    const second = symlinkPathInfo(undefined, "second");
    assertEquals(await s.put(second), second);
    assertEquals(await s.get(new Uint8Array(20)), second);
    assertEquals(await collect(s.list()), [second]);
  });

  test("list returns every entry once", async (s) => {
    const infos = ["0", "1", "a", "z", "5"].map((c) => symlinkPathInfo(`${c.repeat(32)}-p${c}`));
    for (const info of infos) await s.put(info);
    assertEquals(sortByDigest(await collect(s.list())), sortByDigest(infos));
    for (const info of infos) {
      const digest = StorePath.parseBasenameBytes(info.node!.node!.value.name).digest;
      assertEquals(await s.get(digest), info);
    }
  });

  test("invalid PathInfo is rejected and not stored", async (s) => {
    // A valid store path name, so there is a key it could have been stored under.
    const badNarinfo = pathInfoWithNarinfo();
    badNarinfo.narinfo!.narSha256 = new Uint8Array(2);
    await assertRejects(() => s.put(badNarinfo), invalidError);
    const badTarget = symlinkPathInfo(undefined, "");
    await assertRejects(() => s.put(badTarget), invalidError);
    const badName = symlinkPathInfo("invalid");
    await assertRejects(() => s.put(badName), invalidError);
    const noNode: PathInfo = { node: undefined, references: [], narinfo: undefined };
    await assertRejects(() => s.put(noNode), invalidError);
    assertEquals(await s.get(F.DUMMY_PATH_DIGEST), undefined);
    assertEquals(await collect(s.list()), []);
  });

  test("a rejected put keeps the existing entry", async (s) => {
    const good = symlinkPathInfo();
    await s.put(good);
    await assertRejects(() => s.put(symlinkPathInfo(undefined, "a\0b")), invalidError);
    assertEquals(await s.get(new Uint8Array(20)), good);
  });

  test("delete: all of a path, or (given what was checked) only if it is still that", async (s) => {
    if (!s.delete) return;
    const checked = symlinkPathInfo();
    const digest = StorePath.parseBasenameBytes(checked.node!.node!.value.name).digest;
    assertEquals(await s.delete(digest), false, "nothing to delete");
    await s.put(checked);
    // Stored anew meanwhile (another target): the conditional delete leaves it.
    const anew = symlinkPathInfo(undefined, "/nix/store/elsewhere");
    await s.put(anew);
    assertEquals(await s.delete(digest, checked), false);
    assertEquals(await s.get(digest), anew);
    assertEquals(await s.delete(digest, anew), true);
    assertEquals(await s.get(digest), undefined);
    await s.put(checked);
    assertEquals(await s.delete(digest), true);
    assertEquals(await collect(s.list()), []);
  });

  // docs/gc.md#referrers: a path stays while a stored path refers to it.
  const dependency = "00000000000000000000000000000000-dep";
  const referrerOf = (refs: string[], basename = "11111111111111111111111111111111-app") =>
    referringPathInfo(basename, refs);

  test("delete refuses a path a stored path refers to, until the referrer is gone", async (s) => {
    if (!s.delete) return;
    const dep = symlinkPathInfo(dependency);
    const app = referrerOf([dependency]);
    await s.put(dep);
    await s.put(app);
    const err = await assertRejects(() => s.delete!(digestOf(dependency)), StillReferencedError);
    assertEquals(err.referrers.map(digestKey), [
      digestKey(digestOf("11111111111111111111111111111111-app")),
    ]);
    assertEquals(await s.get(digestOf(dependency)), dep, "the refused path stays");
    // Stored again without the reference: it no longer keeps the path.
    await s.put(referrerOf([]));
    assertEquals(await s.delete(digestOf(dependency)), true);
    // A referrer removed: same.
    await s.put(dep);
    await s.put(app);
    assertEquals(await s.delete(digestOf("11111111111111111111111111111111-app")), true);
    assertEquals(await s.delete(digestOf(dependency)), true);
    assertEquals(await collect(s.list()), []);
  });

  test("a path that refers to itself can be deleted; a repair removes a referred path", async (s) => {
    if (!s.delete) return;
    const self = referrerOf([dependency], dependency);
    await s.put(self);
    assertEquals(await s.delete(digestOf(dependency)), true);
    // verify --repair: given the damaged PathInfo it checked, referrers or not.
    const dep = symlinkPathInfo(dependency);
    await s.put(dep);
    await s.put(referrerOf([dependency]));
    assertEquals(await s.delete(digestOf(dependency), dep), true);
    assertEquals(await s.get(digestOf(dependency)), undefined);
  });

  test("paths that refer to each other are deleted together", async (s) => {
    if (!s.delete) return;
    const app = "11111111111111111111111111111111-app";
    await s.put(referrerOf([dependency], app));
    await s.put(referrerOf([app], dependency));
    await assertRejects(() => s.delete!(digestOf(app)), StillReferencedError);
    const both = new Set([app, dependency].map((n) => digestKey(digestOf(n))));
    assertEquals(await s.delete(digestOf(app), undefined, both), true);
    assertEquals(await s.delete(digestOf(dependency), undefined, both), true);
    assertEquals(await collect(s.list()), []);
  });

  test("deleteUnaccessed keeps a path a stored path refers to", async (s) => {
    if (!s.deleteUnaccessed) return;
    const future = Date.now() + 3_600_000;
    await s.put(symlinkPathInfo(dependency));
    await s.put(referrerOf([dependency]));
    assertEquals(await s.deleteUnaccessed(digestOf(dependency), future), false);
    assert(await s.get(digestOf(dependency)), "kept");
    assertEquals(
      await s.deleteUnaccessed(digestOf("11111111111111111111111111111111-app"), future),
      true,
    );
    assertEquals(await s.deleteUnaccessed(digestOf(dependency), future), true);
    assertEquals(await collect(s.list()), []);
  });

  // Backends that keep access times (docs/gc.md#access-times); a remote
  // daemon keeps its own and offers none.
  test("access times: a put is an access, recorded ones only move forward", async (s) => {
    if (!s.recordAccess || !s.listAccess || !s.deleteUnaccessed) return;
    const before = Date.now();
    const info = symlinkPathInfo();
    await s.put(info);
    const digest = StorePath.parseBasenameBytes(info.node!.node!.value.name).digest;
    const [first, ...rest] = await collect(s.listAccess());
    assertEquals([first.digest, rest], [digest, []]);
    assert(first.accessedMs >= before && first.accessedMs <= Date.now(), `${first.accessedMs}`);
    const later = first.accessedMs + 60_000;
    await s.recordAccess([{ digest, accessedMs: later }]);
    await s.recordAccess([{ digest, accessedMs: first.accessedMs + 1000 }]);
    // A path not in the store is not added.
    await s.recordAccess([{ digest: F.DUMMY_PATH_DIGEST, accessedMs: later }]);
    assertEquals(await collect(s.listAccess()), [{ digest, accessedMs: later }]);
    // Putting the path again does not move its access time back.
    await s.put(info);
    assertEquals(await collect(s.listAccess()), [{ digest, accessedMs: later }]);
    // Accessed at the cutoff: kept; before it: deleted.
    assertEquals(await s.deleteUnaccessed(digest, later), false);
    assertEquals(await s.get(digest), info);
    assertEquals(await s.deleteUnaccessed(digest, later + 1), true);
    assertEquals(await s.get(digest), undefined);
    assertEquals(await collect(s.listAccess()), []);
  });
}
