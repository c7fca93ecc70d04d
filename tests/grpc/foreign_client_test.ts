/**
 * The daemon process against a foreign client (Python grpcio, stubs
 * generated from protos/ at test time): every RPC and every status row of
 * docs/compatibility.md#status-codes that the memory and embedded backends
 * can produce, reflection,
 * Unix sockets, and data surviving a restart.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { b3Display, blake3, bytesEqual } from "../../src/castore/digest.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import { makeNode } from "../../src/castore/node.ts";
import { encode as nixbase32 } from "../../src/store/nixbase32.ts";
import { NARInfo_CA_Hash } from "../../src/proto/tvix/store/protos/pathinfo.ts";
import { assert, assertEquals } from "../assert.ts";
import * as F from "../fixtures.ts";
import { MEMORY_BACKENDS, withDaemon, withWorkDirAndStubs } from "./daemon_harness.ts";
import { assertStatus, Calls, Code, concat, Directory, PathInfo, split } from "./requests.ts";

const MiB = 1024 * 1024;
const sha256 = (data: Uint8Array) => new Uint8Array(createHash("sha256").update(data).digest());

/** A store path basename with a digest made of `fill`. */
function basename(fill: number, name: string): { digest: Uint8Array; name: string } {
  const digest = new Uint8Array(20).fill(fill);
  return { digest, name: `${nixbase32(digest)}-${name}` };
}

/** A PathInfo with a COMPLICATED directory root and a narinfo referring to itself. */
function complicatedPathInfo(): PathInfo {
  const self = basename(0x21, "complicated");
  return {
    node: {
      node: makeNode.directory(
        F.b(self.name),
        directoryDigest(F.DIRECTORY_COMPLICATED),
        5n,
      ),
    },
    references: [self.digest],
    narinfo: {
      narSize: 840n,
      narSha256: new Uint8Array(32).fill(7),
      signatures: [{ name: "cache.example.org-1", data: new Uint8Array(64).fill(9) }],
      referenceNames: [self.name],
      deriver: { name: "complicated", digest: new Uint8Array(20).fill(0x33) },
      ca: { type: NARInfo_CA_Hash.NAR_SHA256, digest: new Uint8Array(32).fill(1) },
      upload: undefined,
    },
  };
}

function symlinkPathInfo(): PathInfo {
  const self = basename(0x42, "link");
  return {
    node: { node: makeNode.symlink(F.b(self.name), F.b("/nix/store/somewhereelse")) },
    references: [],
    narinfo: undefined,
  };
}

/** NAR size and SHA-256 of a local path, by `nix-store --dump` (the oracle). */
async function nixDump(path: string): Promise<{ size: bigint; sha256: Uint8Array }> {
  const out = await new Deno.Command("nix-store", { args: ["--dump", path], stdout: "piped" })
    .output();
  assert(out.success, "nix-store --dump failed");
  return { size: BigInt(out.stdout.length), sha256: sha256(out.stdout) };
}

/** DIRECTORY_COMPLICATED on disk: `.keep`, `aa -> /nix/store/somewhereelse`, `keep/.keep`. */
async function complicatedOnDisk(dir: string): Promise<string> {
  const root = join(dir, "complicated");
  await Deno.mkdir(join(root, "keep"), { recursive: true });
  await Deno.writeFile(join(root, ".keep"), new Uint8Array(0));
  await Deno.writeFile(join(root, "keep", ".keep"), new Uint8Array(0));
  await Deno.symlink("/nix/store/somewhereelse", join(root, "aa"));
  return root;
}

async function checkBlobs(c: Calls): Promise<void> {
  // Put: chunking of the upload does not matter; empty stream = empty blob.
  assertEquals(await c.blobPutOk([F.b("Hello "), F.b("World!")]), F.HELLOWORLD_BLOB_DIGEST);
  assertEquals(await c.blobPutOk([F.HELLOWORLD_BLOB_CONTENTS]), F.HELLOWORLD_BLOB_DIGEST);
  assertEquals(await c.blobPutOk([]), F.EMPTY_BLOB_DIGEST);
  assertEquals(await c.blobPutOk(split(F.BLOB_B, 100_000)), F.BLOB_B_DIGEST);

  // Stat: known blob; the chunk list, when there is one, adds up and each
  // chunk is readable by its own digest.
  await c.blobStatOk(F.HELLOWORLD_BLOB_DIGEST);
  const stat = await c.blobStatOk(F.BLOB_B_DIGEST, true);
  if (stat.chunks.length > 0) {
    assertEquals(stat.chunks.reduce((n, ch) => n + ch.size, 0n), BigInt(F.BLOB_B.length));
    const parts = [];
    for (const ch of stat.chunks) {
      assertEquals(ch.digest.length, 32);
      parts.push(concat(await c.blobReadOk(ch.digest)));
    }
    assertEquals(concat(parts), F.BLOB_B);
  }

  // Read: whole blob, messages of at most 1 MiB.
  assertEquals(concat(await c.blobReadOk(F.HELLOWORLD_BLOB_DIGEST)), F.HELLOWORLD_BLOB_CONTENTS);
  assertEquals(concat(await c.blobReadOk(F.EMPTY_BLOB_DIGEST)).length, 0);
  const big = F.pseudoRandom(5 * MiB + 12345, 7);
  assertEquals(await c.blobPutOk(split(big, MiB)), blake3(big));
  const messages = await c.blobReadOk(blake3(big));
  assert(messages.every((m) => m.length <= MiB), "Read messages are at most 1 MiB");
  assertEquals(concat(messages), big);

  // Unknown blob, wrong digest length.
  const unknown = `blob ${b3Display(F.DUMMY_DIGEST)} not found`;
  assertStatus(await c.blobStat(F.DUMMY_DIGEST), Code.NOT_FOUND, unknown, "stat unknown");
  const read = await c.blobRead(F.DUMMY_DIGEST);
  assertStatus(read, Code.NOT_FOUND, unknown, "read unknown");
  assertEquals(read.responses.length, 0);
  const short = F.DUMMY_DIGEST.subarray(0, 31);
  for (const a of [await c.blobStat(short), await c.blobRead(short)]) {
    assertStatus(a, Code.INVALID_ARGUMENT, "invalid digest length");
  }

  // A cancelled upload stores nothing.
  const partial = F.pseudoRandom(3 * 100_000, 11);
  const cancelled = await c.blobPut(split(partial, 100_000), true);
  assert(cancelled.code !== Code.OK, "cancelled put must not succeed");
  assertStatus(await c.blobStat(blake3(partial)), Code.NOT_FOUND);
  assertStatus(await c.blobStat(blake3(partial.subarray(0, 100_000))), Code.NOT_FOUND);
}

async function checkDirectories(c: Calls): Promise<void> {
  const [dA, dB, dC] = [F.DIRECTORY_A, F.DIRECTORY_B, F.DIRECTORY_C].map(directoryDigest);
  assertEquals(await c.dirPutOk([F.DIRECTORY_A]), dA);
  assertEquals(await c.dirGetOk(dA, false), [F.DIRECTORY_A]);
  assertEquals(await c.dirPutOk([F.DIRECTORY_A, F.DIRECTORY_B]), dB);
  assertEquals(await c.dirGetOk(dB, true), [F.DIRECTORY_B, F.DIRECTORY_A]);
  // Duplicates are accepted once; the root is what nothing else references.
  assertEquals(await c.dirPutOk([F.DIRECTORY_A, F.DIRECTORY_A, F.DIRECTORY_C]), dC);
  assertEquals(await c.dirGetOk(dC, true), [F.DIRECTORY_C, F.DIRECTORY_A]);
  const dComplicated = directoryDigest(F.DIRECTORY_COMPLICATED);
  assertEquals(
    await c.dirPutOk([F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]),
    dComplicated,
  );
  assertEquals(await c.dirGetOk(dComplicated, false), [F.DIRECTORY_COMPLICATED]);
  assertEquals(
    await c.dirGetOk(dComplicated, true),
    [F.DIRECTORY_COMPLICATED, F.DIRECTORY_WITH_KEEP],
  );

  // Unknown: NOT_FOUND alone, an empty OK stream recursively
  // (docs/compatibility.md#q6-recursive-directory-get-of-a-missing-root).
  assertStatus(
    await c.dirGet(F.DUMMY_DIGEST, false),
    Code.NOT_FOUND,
    `directory ${b3Display(F.DUMMY_DIGEST)} not found`,
  );
  assertEquals(await c.dirGetOk(F.DUMMY_DIGEST, true), []);
  assertStatus(await c.dirGet(undefined, true), Code.INVALID_ARGUMENT, "invalid by_what");
  for (const recursive of [false, true]) {
    assertStatus(
      await c.dirGet(F.DUMMY_DIGEST.subarray(0, 31), recursive),
      Code.INVALID_ARGUMENT,
      "invalid digest length",
    );
  }

  // Put failures (the full list is in bad_input_test.ts).
  assertStatus(await c.dirPut([]), Code.INVALID_ARGUMENT, "got no directories");
  assertStatus(await c.dirPut([F.DIRECTORY_B]), Code.INTERNAL, /unknown directory/);
  assertStatus(
    await c.dirPut([F.DIRECTORY_A, F.DIRECTORY_C, F.DIRECTORY_B]),
    Code.INTERNAL,
    /disconnected roots/,
  );
}

async function checkPathInfos(c: Calls, work: string): Promise<void> {
  const complicated = complicatedPathInfo();
  const symlink = symlinkPathInfo();
  for (const info of [complicated, symlink]) {
    const a = await c.pathInfoPut(info);
    assertStatus(a, Code.OK, undefined, "pathinfo put");
    assertEquals(a.responses[0], PathInfo.encode(info).finish());
  }
  const got = await c.pathInfoGet(complicated.references[0]);
  assertStatus(got, Code.OK);
  assertEquals(
    got.responses[0],
    PathInfo.encode(complicated).finish(),
  );
  const listed = await c.pathInfoList();
  assertEquals(listed.length, 2);
  for (const info of [complicated, symlink]) {
    assert(listed.some((l) => bytesEqual(l.node!.node!.value.name, info.node!.node!.value.name)));
  }

  assertStatus(
    await c.pathInfoGet(new Uint8Array(20).fill(0x11)),
    Code.NOT_FOUND,
    "PathInfo not found",
  );
  assertStatus(
    await c.pathInfoGet(undefined),
    Code.UNIMPLEMENTED,
    "by_what needs to be specified",
  );
  assertStatus(
    await c.pathInfoGet(new Uint8Array(19)),
    Code.INVALID_ARGUMENT,
    "invalid output digest length",
  );
  const invalid = symlinkPathInfo();
  invalid.node!.node!.value.name = F.b("invalid");
  assertStatus(
    await c.pathInfoPut(invalid),
    Code.INVALID_ARGUMENT,
    /^failed to validate PathInfo: /,
  );

  // CalculateNAR, against nix-store --dump; the node name does not matter
  // (docs/compatibility.md#q9-calculatenar-requires-a-valid-root-node-name).
  const hello = await c.calculateNarOk(
    makeNode.file(new Uint8Array(0), F.HELLOWORLD_BLOB_DIGEST, 12n),
  );
  assertEquals(hello.narSize, BigInt(F.NAR_CONTENTS_HELLOWORLD.length));
  assertEquals(hello.narSha256, sha256(F.NAR_CONTENTS_HELLOWORLD));
  const link = await c.calculateNarOk(makeNode.symlink(F.b("."), F.b("/nix/store/somewhereelse")));
  assertEquals(link.narSize, BigInt(F.NAR_CONTENTS_SYMLINK.length));
  assertEquals(link.narSha256, sha256(F.NAR_CONTENTS_SYMLINK));
  const expected = await nixDump(await complicatedOnDisk(work));
  const tree = await c.calculateNarOk(complicated.node!.node!);
  assertEquals(tree.narSize, expected.size);
  assertEquals(tree.narSha256, expected.sha256);

  assertStatus(await c.calculateNar(undefined), Code.INVALID_ARGUMENT, "no root node sent");
  assertStatus(
    await c.calculateNar(makeNode.file(F.b("x"), new Uint8Array(31), 1n)),
    Code.INVALID_ARGUMENT,
    /^invalid root node/,
  );
  for (
    const missing of [
      makeNode.file(F.b("x"), F.DUMMY_DIGEST, 5n),
      makeNode.directory(F.b("x"), F.DUMMY_DIGEST_2, 3n),
    ]
  ) {
    assertStatus(
      await c.calculateNar(missing),
      Code.DATA_LOSS,
      /^storage error: failed rendering nar: /,
    );
  }
}

/** Encodes a ServerReflectionRequest with one string member (4 = file_containing_symbol, 7 = list_services). */
function reflectionRequest(field: number, value: string): Uint8Array {
  return new BinaryWriter().uint32((field << 3) | WireType.LengthDelimited).string(value).finish();
}

/** The length-delimited members `field` of a message. */
function fields(bytes: Uint8Array, field: number): Uint8Array[] {
  const r = new BinaryReader(bytes);
  const out: Uint8Array[] = [];
  while (r.pos < r.len) {
    const [f, wt] = r.tag();
    if (f === field && wt === WireType.LengthDelimited) out.push(r.bytes());
    else r.skip(wt);
  }
  return out;
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

async function checkReflection(c: Calls): Promise<void> {
  for (const version of ["v1", "v1alpha"]) {
    // ServerReflectionResponse.list_services_response (6) → service (1) → name (1)
    const list = await c.py.call("reflection", { version, request: reflectionRequest(7, "*") });
    assertStatus(list, Code.OK, undefined, `reflection ${version}`);
    const names = fields(list.responses[0], 6).flatMap((l) => fields(l, 1))
      .flatMap((s) => fields(s, 1)).map(text).sort();
    for (
      const svc of [
        "tvix.castore.v1.BlobService",
        "tvix.castore.v1.DirectoryService",
        "tvix.store.v1.PathInfoService",
        // Ours, in a package of its own (docs/gc.md#the-admin-service).
        "tvix_ts.admin.v1.AdminService",
      ]
    ) assert(names.includes(svc), `${version} lists ${svc}: ${names}`);

    // file_descriptor_response (4) → file_descriptor_proto (1) → name (1):
    // the upstream file names, with their imports.
    const file = await c.py.call("reflection", {
      version,
      request: reflectionRequest(4, "tvix.store.v1.PathInfoService"),
    });
    assertStatus(file, Code.OK);
    const files = fields(file.responses[0], 4).flatMap((r) => fields(r, 1))
      .map((fd) => text(fields(fd, 1)[0])).sort();
    assertEquals(files, [
      "tvix/castore/protos/castore.proto",
      "tvix/store/protos/pathinfo.proto",
      "tvix/store/protos/rpc_pathinfo.proto",
    ]);
  }
}

async function checkMessageLimits(c: Calls, limit: number): Promise<void> {
  // Request messages up to the limit pass, bigger ones are refused.
  const fits = F.pseudoRandom(limit - 1024, 3);
  assertEquals(await c.blobPutOk([fits]), blake3(fits));
  assert(
    (await c.blobReadOk(blake3(fits))).every((m) => m.length <= MiB),
    "read back in messages of at most 1 MiB",
  );
  const tooBig = F.pseudoRandom(limit + 1024, 5);
  assertStatus(await c.blobPut([tooBig]), Code.RESOURCE_EXHAUSTED);
  assertStatus(await c.blobStat(blake3(tooBig)), Code.NOT_FOUND);

  // A directory above 4 MiB is stored and served back whole: directories may
  // take up to 64 MiB (docs/compatibility.md#message-size-limits; above that,
  // tests/grpc/large_directory_test.ts).
  const huge: Directory = { directories: [], files: [], symlinks: [] };
  for (let i = 0; i < 70_000; i++) {
    huge.symlinks.push({
      name: F.b(`entry-${String(i).padStart(8, "0")}`),
      target: F.b("/nix/store/00000000000000000000000000000000-target-of-the-link"),
    });
  }
  assert(Directory.encode(huge).finish().length > 4 * MiB, "the directory is above 4 MiB");
  assertEquals(await c.dirPutOk([huge]), directoryDigest(huge));
  assertEquals(await c.dirGetOk(directoryDigest(huge), false), [huge]);
}

for (const backend of ["memory", "embedded"] as const) {
  Deno.test(`daemon (${backend}): every RPC and status through Python grpcio`, async (t) => {
    await withWorkDirAndStubs("tvix-daemon-test-", async (work, stubs) => {
      // The memory daemon keeps the default request limit (4 MiB), the
      // embedded one is given a bigger one.
      const limit = backend === "memory" ? 4 * MiB : 8 * MiB;
      const args = backend === "memory" ? MEMORY_BACKENDS : ["--max-request-size=8MiB"];
      await withDaemon(join(work, "home"), args, stubs, async (c) => {
        await t.step("BlobService", () => checkBlobs(c));
        await t.step("DirectoryService", () => checkDirectories(c));
        await t.step("PathInfoService", () => checkPathInfos(c, work));
        await t.step("reflection v1 and v1alpha", () => checkReflection(c));
        await t.step("message size limits", () => checkMessageLimits(c, limit));
        await t.step("still serving", async () => {
          await c.blobStatOk(F.HELLOWORLD_BLOB_DIGEST);
        });
      });
      if (backend === "embedded") {
        const entries = [...Deno.readDirSync(join(work, "home"))].map((e) => e.name);
        assert(entries.includes("store.sqlite") && entries.includes("packs"), `${entries}`);
      }
    });
  });
}

Deno.test("daemon (embedded): data survives a restart; Unix socket", async () => {
  await withWorkDirAndStubs("tvix-daemon-test-", async (work, stubs) => {
    const home = join(work, "home");
    const info = complicatedPathInfo();
    const big = F.pseudoRandom(2 * MiB, 13);
    await withDaemon(home, [], stubs, async (c) => {
      assertEquals(await c.blobPutOk(split(big, 256 * 1024)), blake3(big));
      await c.dirPutOk([F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]);
      assertStatus(await c.pathInfoPut(info), Code.OK);
    });
    // Second start on a Unix socket, given as a relative path.
    await withDaemon(
      home,
      [],
      stubs,
      async (c, daemon) => {
        assertEquals(daemon.address, "./tvix.sock");
        assertEquals(concat(await c.blobReadOk(blake3(big))), big);
        assertEquals(
          await c.dirGetOk(directoryDigest(F.DIRECTORY_COMPLICATED), true),
          [F.DIRECTORY_COMPLICATED, F.DIRECTORY_WITH_KEEP],
        );
        const got = await c.pathInfoGet(info.references[0]);
        assertStatus(got, Code.OK);
        assertEquals((await c.pathInfoList()).length, 1);
      },
      "./tvix.sock",
      work,
    );
    // Same socket path again (absolute this time): a leftover file must not block it.
    await withDaemon(home, [], stubs, async (c) => {
      assertEquals(concat(await c.blobReadOk(blake3(big))), big);
    }, join(work, "tvix.sock"));
  });
});

Deno.test("daemon (embedded): corrupt storage becomes DATA_LOSS or INTERNAL, never wrong data", async () => {
  await withWorkDirAndStubs("tvix-daemon-test-", async (work, stubs) => {
    const home = join(work, "home");
    const blob = F.pseudoRandom(MiB, 17);
    const info = complicatedPathInfo();
    const dKeep = directoryDigest(F.DIRECTORY_WITH_KEEP);
    const dComplicated = directoryDigest(F.DIRECTORY_COMPLICATED);
    await withDaemon(home, [], stubs, async (c) => {
      await c.blobPutOk([blob]);
      await c.dirPutOk([F.DIRECTORY_WITH_KEEP, F.DIRECTORY_COMPLICATED]);
      assertStatus(await c.pathInfoPut(info), Code.OK);
    });
    // Damage every chunk record, drop a child directory, garble a PathInfo row.
    const packs = join(home, "packs");
    for (const f of Deno.readDirSync(packs)) {
      if (!f.name.endsWith(".pack")) continue;
      const path = join(packs, f.name);
      const bytes = Deno.readFileSync(path);
      // Everything after the first record header (magic 8 + header 48).
      bytes.fill(0x5a, 56);
      Deno.writeFileSync(path, bytes);
    }
    const db = new DatabaseSync(join(home, "store.sqlite"));
    db.prepare("DELETE FROM directories WHERE digest = ?").run(dKeep);
    db.prepare("UPDATE pathinfos SET data = ?").run(F.b("garbage"));
    db.close();

    await withDaemon(home, [], stubs, async (c) => {
      const read = await c.blobRead(blake3(blob));
      assertStatus(read, Code.DATA_LOSS, /^storage error: /, "corrupt blob read");
      assert(!bytesEqual(concat(read.responses), blob), "no full blob from corrupt chunks");
      assertStatus(
        await c.dirGet(dComplicated, true),
        Code.INTERNAL,
        /^internal storage error: .*does not exist/,
        "missing child",
      );
      assertStatus(await c.pathInfoGet(info.references[0]), Code.DATA_LOSS, /^storage error: /);
      const list = await c.py.call("pathinfo.list");
      assertStatus(list, Code.INTERNAL, /^internal storage error: /, "list of garbage");
      await c.dirGetOk(dComplicated, false); // still serving
    });
  });
});
