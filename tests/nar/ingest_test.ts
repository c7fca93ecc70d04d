/**
 * Strict NAR ingestion: upstream's fixtures
 * (docs/compatibility.md#test-vectors), round trips through the
 * renderer, and a corpus of malformed NARs that must be refused without
 * making any directory reachable.
 */
import { assert, assertEquals, assertRejects } from "../assert.ts";
import {
  b,
  DIRECTORY_COMPLICATED,
  DIRECTORY_WITH_KEEP,
  EMPTY_BLOB_DIGEST,
  HELLOWORLD_BLOB_CONTENTS,
  HELLOWORLD_BLOB_DIGEST,
  NAR_CONTENTS_HELLOWORLD,
  NAR_CONTENTS_SYMLINK,
} from "../fixtures.ts";
import { NAR_CONTENTS_COMPLICATED } from "./nar_fixtures.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import { makeNode } from "../../src/castore/node.ts";
import { ingestNar, NarParseError } from "../../src/nar/ingest.ts";
import { calculateNar, renderNar } from "../../src/nar/render.ts";
import { concat, str, u64 } from "../../src/nar/wire.ts";
import { createHash } from "node:crypto";
import { collectBytes } from "../conformance/harness.ts";
import { StorageError } from "../../src/errors.ts";

/** Feeds `bytes` in pieces of `piece` bytes (exercises reads across piece boundaries). */
async function* pieces(bytes: Uint8Array, piece = 7): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += piece) yield bytes.slice(i, i + piece);
}

const sha256 = (x: Uint8Array) => new Uint8Array(createHash("sha256").update(x).digest());

/** A NAR from words (`str()`-encoded) and raw byte strings (inserted as they are). */
function nar(...parts: (string | Uint8Array)[]): Uint8Array {
  return concat(parts.map((p) => typeof p === "string" ? str(p) : p));
}
const raw = (s: string | Uint8Array) => str(s); // a str() of arbitrary bytes
const entry = (name: string | Uint8Array, ...node: (string | Uint8Array)[]) => [
  "entry",
  "(",
  "name",
  raw(name),
  "node",
  "(",
  "type",
  ...node, // ends with the node's ")"
  ")",
];
const file = (contents = "") => ["regular", "contents", raw(contents), ")"];
const link = (target: string | Uint8Array) => ["symlink", "target", raw(target), ")"];
const dirNar = (...entries: (string | Uint8Array)[][]) =>
  nar("nix-archive-1", "(", "type", "directory", ...entries.flat(), ")");

Deno.test("ingests the symlink fixture", async () => {
  const blob = new MemoryBlobService(), dir = new MemoryDirectoryService();
  const r = await ingestNar(pieces(NAR_CONTENTS_SYMLINK), blob, dir);
  assertEquals(r.node, makeNode.symlink(new Uint8Array(0), b("/nix/store/somewhereelse")));
  assertEquals(r.narSize, 136n);
  assertEquals(r.narSha256, sha256(NAR_CONTENTS_SYMLINK));
});

Deno.test("ingests the helloworld fixture and stores the blob", async () => {
  const blob = new MemoryBlobService(), dir = new MemoryDirectoryService();
  const r = await ingestNar(pieces(NAR_CONTENTS_HELLOWORLD, 3), blob, dir);
  assertEquals(r.node, makeNode.file(new Uint8Array(0), HELLOWORLD_BLOB_DIGEST, 12n, false));
  assertEquals(r.narSize, 128n);
  assert(await blob.has(HELLOWORLD_BLOB_DIGEST));
  assertEquals(
    await collectBytes((await blob.openRead(HELLOWORLD_BLOB_DIGEST))!),
    HELLOWORLD_BLOB_CONTENTS,
  );
});

Deno.test("ingests the complicated fixture and stores its closure", async () => {
  const blob = new MemoryBlobService(), dir = new MemoryDirectoryService();
  const r = await ingestNar(pieces(NAR_CONTENTS_COMPLICATED, 840), blob, dir);
  assertEquals(
    r.node,
    makeNode.directory(new Uint8Array(0), directoryDigest(DIRECTORY_COMPLICATED), 4n),
  );
  assert(await blob.has(EMPTY_BLOB_DIGEST));
  const closure = [];
  for await (const d of dir.getRecursive(directoryDigest(DIRECTORY_COMPLICATED))) closure.push(d);
  assertEquals(closure, [DIRECTORY_COMPLICATED, DIRECTORY_WITH_KEEP]);
});

Deno.test("ingest then render is byte-identical, also for large and executable files", async () => {
  const big = new Uint8Array(2 * 1024 * 1024 + 5);
  for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
  const cases = [
    NAR_CONTENTS_SYMLINK,
    NAR_CONTENTS_HELLOWORLD,
    NAR_CONTENTS_COMPLICATED,
    dirNar(
      entry("a b ü", ...file("x")),
      entry("big", "regular", "executable", "", "contents", raw(big), ")"),
      entry("d", "directory", ...entry("e", "directory", ")"), ")"),
      entry("z", ...link("../a b ü")),
    ),
  ];
  for (const bytes of cases) {
    const blob = new MemoryBlobService(), dir = new MemoryDirectoryService();
    const r = await ingestNar(pieces(bytes, 4096), blob, dir);
    assertEquals(r.narSize, BigInt(bytes.length));
    assertEquals(r.narSha256, sha256(bytes));
    assertEquals(await collectBytes(renderNar(r.node, blob, dir)), bytes);
    assertEquals(await calculateNar(r.node, blob, dir), {
      narSize: r.narSize,
      narSha256: r.narSha256,
    });
  }
});

/** Every malformed NAR must be refused, and no directory made reachable. */
async function refuse(bytes: Uint8Array, what: string, includes?: string): Promise<void> {
  const blob = new MemoryBlobService(), dir = new MemoryDirectoryService();
  const err = await assertRejects(() => ingestNar(pieces(bytes, 5), blob, dir), NarParseError);
  if (includes) assert(err.message.includes(includes), `${what}: ${err.message}`);
  for (
    const d of [DIRECTORY_COMPLICATED, DIRECTORY_WITH_KEEP, {
      directories: [],
      files: [],
      symlinks: [],
    }]
  ) {
    assertEquals(await dir.get(directoryDigest(d)), undefined, `${what}: directory stored`);
  }
  let n = 0;
  for await (const _ of dir.getRecursive(directoryDigest(DIRECTORY_COMPLICATED))) n++;
  assertEquals(n, 0, what);
}

Deno.test("refuses every truncation of the fixtures", async () => {
  for (const fixture of [NAR_CONTENTS_SYMLINK, NAR_CONTENTS_HELLOWORLD, NAR_CONTENTS_COMPLICATED]) {
    for (let len = 0; len < fixture.length; len++) {
      await refuse(fixture.subarray(0, len), `truncated at ${len}`, "truncated");
    }
  }
});

Deno.test("refuses trailing data", async () => {
  await refuse(concat([NAR_CONTENTS_COMPLICATED, new Uint8Array(8)]), "trailing", "trailing");
  await refuse(concat([NAR_CONTENTS_HELLOWORLD, new Uint8Array(1)]), "trailing", "trailing");
});

Deno.test("refuses unsorted and duplicate entries", async () => {
  await refuse(dirNar(entry("b", ...file()), entry("a", ...file())), "unsorted", "does not sort");
  await refuse(
    dirNar(entry("a", ...file()), entry("a", ...link("x"))),
    "duplicate",
    "does not sort",
  );
  await refuse(
    dirNar(entry("d", "directory", ...entry("y", ...file()), ...entry("x", ...file()), ")")),
    "unsorted nested",
    "does not sort",
  );
});

Deno.test("refuses bad entry names", async () => {
  const cases: [string, string | Uint8Array][] = [
    ["..", ".."],
    [".", "."],
    ["empty", ""],
    ["slash", "a/b"],
    ["NUL", new Uint8Array([0x61, 0x00, 0x62])],
  ];
  for (const [what, name] of cases) {
    await refuse(dirNar(entry(name, ...file())), what, "invalid entry name");
  }
  await refuse(dirNar(entry("x".repeat(256), ...file())), "long name", "too long");
  // 255 bytes is fine.
  const ok = dirNar(entry("x".repeat(255), ...file()));
  await ingestNar(pieces(ok), new MemoryBlobService(), new MemoryDirectoryService());
});

Deno.test("refuses bad symlink targets", async () => {
  await refuse(nar("nix-archive-1", "(", "type", ...link("")), "empty target", "empty");
  await refuse(nar("nix-archive-1", "(", "type", ...link(new Uint8Array([0x61, 0]))), "NUL", "NUL");
  await refuse(nar("nix-archive-1", "(", "type", ...link("t".repeat(4096))), "long", "too long");
  const ok = nar("nix-archive-1", "(", "type", ...link("t".repeat(4095)));
  await ingestNar(pieces(ok), new MemoryBlobService(), new MemoryDirectoryService());
});

Deno.test("refuses non-zero padding", async () => {
  // In a name, in file contents, and in a keyword.
  const a = dirNar(entry("abc", ...file()));
  const at = findStr(a, str("abc"));
  const bad1 = a.slice();
  bad1[at + 8 + 3] = 1;
  await refuse(bad1, "name padding", "padding");
  const h = NAR_CONTENTS_HELLOWORLD.slice();
  h[findStr(h, str("Hello World!")) + 8 + 12] = 0xff;
  await refuse(h, "contents padding", "padding");
  const k = NAR_CONTENTS_SYMLINK.slice();
  k[findStr(k, str("type")) + 8 + 4] = 0x20;
  await refuse(k, "keyword padding", "padding");
});

function findStr(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  throw new Error("not found");
}

Deno.test("refuses unknown tokens and bad structure", async () => {
  await refuse(nar("nix-archive-2", "(", "type", ...file()), "magic", "expected");
  await refuse(nar("nix-archive-1", "(", "type", "fifo", ")"), "type", "unknown node type");
  await refuse(
    nar("nix-archive-1", "(", "type", "regular", "executable", "x", "contents", raw(""), ")"),
    "exec",
    "expected",
  );
  await refuse(
    nar("nix-archive-1", "(", "type", "regular", "size", raw(""), ")"),
    "contents",
    "expected",
  );
  await refuse(
    dirNar(["entri", "(", "name", raw("a"), "node", "(", "type", ...file(), ")"]),
    "entry",
    "expected",
  );
  await refuse(nar("nix-archive-1", "(", "type", ...file(), ")"), "extra close", "trailing");
  await refuse(
    nar("nix-archive-1", "(", "type", "symlink", "target", raw("x")),
    "missing close",
    "truncated",
  );
  // A keyword length that cannot be a keyword, and a file length beyond the stream.
  await refuse(concat([u64(1n << 40n)]), "huge keyword", "too long");
  await refuse(
    nar("nix-archive-1", "(", "type", "regular", "contents", u64(1n << 40n)),
    "huge file",
    "truncated",
  );
});

/**
 * A memory blob service whose writers report to `hooks`: `close` may be
 * replaced, and open writers are counted so tests can see the upload bound.
 */
function watchedBlobs(hooks: {
  close?: (inner: () => Promise<Uint8Array>) => Promise<Uint8Array>;
}) {
  const blob = new MemoryBlobService();
  const stats = { open: 0, peak: 0 };
  const openWrite = blob.openWrite.bind(blob);
  blob.openWrite = () => {
    const inner = openWrite();
    stats.open++;
    stats.peak = Math.max(stats.peak, stats.open);
    return {
      write: (data) => inner.write(data),
      close: () => {
        const closing = hooks.close ? hooks.close(() => inner.close()) : inner.close();
        return closing.finally(() => stats.open--);
      },
      abort: () => {
        stats.open--;
        return inner.abort();
      },
    };
  };
  return { blob, stats };
}

const manySmallFiles = (n: number) =>
  dirNar(
    ...Array.from(
      { length: n },
      (_, i) => entry(`f${String(i).padStart(3, "0")}`, ...file(`${i}`)),
    ),
  );

Deno.test("small files upload in the background, at most 64 at once", async () => {
  const { blob, stats } = watchedBlobs({
    close: async (inner) => {
      await new Promise((r) => setTimeout(r, 2));
      return await inner();
    },
  });
  const dir = new MemoryDirectoryService();
  const r = await ingestNar(pieces(manySmallFiles(150), 4096), blob, dir);
  assertEquals(r.node.$case, "directory");
  assertEquals(stats.open, 0, "an upload was still running after ingestNar returned");
  assert(stats.peak > 1 && stats.peak <= 64, `peak ${stats.peak}`);
});

Deno.test("a failed background upload fails the ingestion, and nothing becomes reachable", async () => {
  const { blob } = watchedBlobs({ close: () => Promise.reject(new Error("disk on fire")) });
  const dir = new MemoryDirectoryService();
  const bytes = manySmallFiles(3);
  await assertRejects(() => ingestNar(pieces(bytes), blob, dir), Error, "disk on fire");
  const ok = await ingestNar(pieces(bytes), new MemoryBlobService(), new MemoryDirectoryService());
  assert(ok.node.$case === "directory");
  assertEquals(await dir.get(ok.node.value.digest), undefined, "the root directory was stored");
});

Deno.test("a blob service returning the wrong digest is a StorageError", async () => {
  const { blob } = watchedBlobs({ close: () => Promise.resolve(EMPTY_BLOB_DIGEST) });
  await assertRejects(
    () => ingestNar(pieces(NAR_CONTENTS_HELLOWORLD), blob, new MemoryDirectoryService()),
    StorageError,
    "blob service returned digest",
  );
});
