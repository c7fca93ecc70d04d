import { zstdCompressSync } from "node:zlib";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import {
  closurePath,
  encodeFrames,
  ObjectStoreDirectoryService,
} from "../../src/castore/directory/objectstore.ts";
import { toHex } from "../../src/castore/digest.ts";
import {
  type Directory,
  directoryDigest,
  directorySize,
  encodeDirectory,
} from "../../src/castore/directory.ts";
import { InvalidRequestError, StorageError } from "../../src/errors.ts";
import { FileObjectStore } from "../../src/castore/objectstore/file.ts";
import { directoryServiceConformance, putAll } from "../conformance/directory_suite.ts";
import { collect, tempDirFactory } from "../conformance/harness.ts";
import * as F from "../fixtures.ts";

directoryServiceConformance(
  "objectstore+file",
  tempDirFactory((dir) => directoryServiceFromUrl(`objectstore+file://${dir}`), "objectstore-dir-"),
  { onlyRootsRetrievable: true },
);

directoryServiceConformance("objectstore+memory", async () => {
  const service = await directoryServiceFromUrl("objectstore+memory:///");
  return { service, cleanup: () => service.close() };
}, { onlyRootsRetrievable: true });

/** A tree: ROOT → {a: MID → {c: C}, b: KEEP}; LEAF (empty) is uploaded but unreferenced by it. */
const LEAF = F.DIRECTORY_A;
const KEEP = F.DIRECTORY_WITH_KEEP;
const MID: Directory = {
  directories: [{
    name: F.b("c"),
    digest: directoryDigest(F.DIRECTORY_C),
    size: directorySize(F.DIRECTORY_C),
  }],
  files: [],
  symlinks: [],
};
const ROOT: Directory = {
  directories: [
    { name: F.b("a"), digest: directoryDigest(MID), size: directorySize(MID) },
    { name: F.b("b"), digest: directoryDigest(KEEP), size: directorySize(KEEP) },
  ],
  files: [],
  symlinks: [],
};
const UPLOAD = [LEAF, F.DIRECTORY_C, KEEP, MID, ROOT];
const ROOT_DIGEST = directoryDigest(ROOT);

async function withFileService(
  body: (service: ObjectStoreDirectoryService, dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "objectstore-dir-" });
  const service = new ObjectStoreDirectoryService(new FileObjectStore(dir));
  try {
    await body(service, dir);
  } finally {
    await service.close();
    await Deno.remove(dir, { recursive: true });
  }
}

async function filesBelow(dir: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(rel ? `${dir}/${rel}` : dir)) {
    const path = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await filesBelow(dir, path));
    else out.push(path);
  }
  return out.sort();
}

/** Splits uncompressed closure bytes into frames. */
function frames(data: Uint8Array): Uint8Array[] {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out: Uint8Array[] = [];
  for (let pos = 0; pos < data.length;) {
    const n = view.getUint32(pos);
    out.push(data.subarray(pos + 4, pos + 4 + n));
    pos += 4 + n;
  }
  return out;
}

async function zstdDecompressCli(input: Uint8Array): Promise<Uint8Array | undefined> {
  let child;
  try {
    child = new Deno.Command("zstd", {
      args: ["-d", "-q", "-c"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined; // zstd CLI not installed
    throw err;
  }
  const w = child.stdin.getWriter();
  await w.write(input);
  await w.close();
  const out = await child.output();
  assert(out.success, "zstd -d failed");
  return out.stdout;
}

Deno.test("objectstore directory: layout is one zstd object of length-prefixed frames, root first", async () => {
  await withFileService(async (service, dir) => {
    assertEquals(await putAll(service, UPLOAD), ROOT_DIGEST);
    const hex = toHex(ROOT_DIGEST);
    assertEquals(closurePath(ROOT_DIGEST), `dirs/b3/${hex.slice(0, 4)}/${hex}`);
    assertEquals(await filesBelow(dir), [closurePath(ROOT_DIGEST)]);

    const compressed = await Deno.readFile(`${dir}/${closurePath(ROOT_DIGEST)}`);
    const plain = await zstdDecompressCli(compressed);
    if (plain) {
      // Breadth-first from the root: ROOT, MID, KEEP, C, LEAF (each once).
      const expected = [ROOT, MID, KEEP, F.DIRECTORY_C, LEAF].map(encodeDirectory);
      assertEquals(frames(plain), expected);
      assertEquals(plain, encodeFrames([ROOT, MID, KEEP, F.DIRECTORY_C, LEAF]));
    }
    assertEquals(
      (await collect(service.getRecursive(ROOT_DIGEST))).map(directoryDigest),
      [ROOT, MID, KEEP, F.DIRECTORY_C, LEAF].map(directoryDigest),
    );
    // Only the root of the upload is retrievable on its own.
    assertEquals(await service.get(ROOT_DIGEST), ROOT);
    assertEquals(await service.get(directoryDigest(MID)), undefined);
    assertEquals(await collect(service.getRecursive(directoryDigest(MID))), []);
  });
});

Deno.test("objectstore directory: single put only for directories without children", async () => {
  await withFileService(async (service) => {
    assertEquals(await service.put(KEEP), directoryDigest(KEEP));
    assertEquals(await service.get(directoryDigest(KEEP)), KEEP);
    await assertRejects(
      () => service.put(MID),
      InvalidRequestError,
      "only put_multiple_start is supported by the ObjectStoreDirectoryService for directories with children",
    );
  });
});

Deno.test("objectstore directory: a corrupted closure object is a StorageError", async () => {
  await withFileService(async (service, dir) => {
    await putAll(service, UPLOAD);
    const file = `${dir}/${closurePath(ROOT_DIGEST)}`;
    const good = await Deno.readFile(file);
    const compress = (dirs: Directory[]) => new Uint8Array(zstdCompressSync(encodeFrames(dirs)));
    const plain = encodeFrames([ROOT, MID, KEEP, F.DIRECTORY_C, LEAF]);
    const flipped = plain.slice();
    flipped[plain.length - 3] ^= 0x01;

    const damaged: [string, Uint8Array][] = [
      [
        "flipped compressed byte",
        (() => {
          const d = good.slice();
          d[Math.floor(d.length / 2)] ^= 0x40;
          return d;
        })(),
      ],
      ["truncated compressed object", good.slice(0, good.length - 8)],
      ["not zstd at all", F.b("definitely not zstd")],
      ["flipped byte in a frame", new Uint8Array(zstdCompressSync(flipped))],
      ["truncated frame", new Uint8Array(zstdCompressSync(plain.slice(0, plain.length - 2)))],
      ["missing directory", compress([ROOT, MID, KEEP, F.DIRECTORY_C])],
      ["wrong root", compress([MID, F.DIRECTORY_C])],
      ["children before parent", compress([ROOT, F.DIRECTORY_C, MID, KEEP, LEAF])],
      [
        "unreferenced extra directory",
        compress([ROOT, MID, KEEP, F.DIRECTORY_C, LEAF, F.DIRECTORY_B]),
      ],
      ["no frames", new Uint8Array(zstdCompressSync(new Uint8Array(0)))],
      [
        "oversized frame length",
        new Uint8Array(zstdCompressSync(new Uint8Array([0xff, 0xff, 0xff, 0xff]))),
      ],
    ];
    for (const [what, bytes] of damaged) {
      await Deno.writeFile(file, bytes);
      await assertRejects(() => collect(service.getRecursive(ROOT_DIGEST)), StorageError, undefined)
        .catch((err) => {
          throw new Error(`${what}: ${err.message}`);
        });
    }
    // get() checks the root frame.
    await Deno.writeFile(file, compress([MID, F.DIRECTORY_C]));
    await assertRejects(() => service.get(ROOT_DIGEST), StorageError);
  });
});

Deno.test("objectstore directory: no temp files are left; storing a closure twice writes once", async () => {
  await withFileService(async (service, dir) => {
    await putAll(service, UPLOAD);
    const { mtime } = await Deno.stat(`${dir}/${closurePath(ROOT_DIGEST)}`);
    await putAll(service, UPLOAD);
    assertEquals((await Deno.stat(`${dir}/${closurePath(ROOT_DIGEST)}`)).mtime, mtime);
    await service.put(F.DIRECTORY_A);
    const files = await filesBelow(dir);
    assertEquals(files.filter((f) => f.split("/").pop()!.startsWith(".")), []);
    assertEquals(files.length, 2);
  });
});

Deno.test("objectstore directory: a rejected upload stores nothing", async () => {
  await withFileService(async (service, dir) => {
    const putter = service.putMultiple();
    await putter.put(LEAF);
    await putter.put(KEEP);
    // Two roots: LEAF and KEEP are unconnected.
    await assertRejects(() => putter.close(), InvalidRequestError);
    assertEquals(await filesBelow(dir), []);
  });
});
