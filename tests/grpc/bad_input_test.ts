/**
 * Bad input against the daemon process, from the foreign Python client:
 * every malformed directory closure and PathInfo gets its status, nothing of
 * a rejected put is stored, and the daemon keeps serving.
 */
import { join } from "node:path";
import { directoryDigest } from "../../src/castore/directory.ts";
import { makeNode, U64_MAX } from "../../src/castore/node.ts";
import { encode as nixbase32 } from "../../src/store/nixbase32.ts";
import type { DirectoryNode } from "../../src/proto/tvix/castore/protos/castore.ts";
import { assertEquals } from "../assert.ts";
import * as F from "../fixtures.ts";
import { MEMORY_BACKENDS, withDaemon, withWorkDirAndStubs } from "./daemon_harness.ts";
import { assertStatus, Code, type Directory, type PathInfo } from "./requests.ts";

const empty = (): Directory => ({ directories: [], files: [], symlinks: [] });

/** A valid directory unique to case `i`, sent before the bad one. */
function leaf(i: number): Directory {
  return { ...empty(), symlinks: [{ name: F.b("leaf"), target: F.b(`/leaf/${i}`) }] };
}

/** A DirectoryNode pointing at `leaf(i)` with the right size. */
function leafNode(name: string, i: number): DirectoryNode {
  return { name: F.b(name), digest: directoryDigest(leaf(i)), size: 1n };
}

function file(name: string | Uint8Array, digest = F.EMPTY_BLOB_DIGEST) {
  return { name: typeof name === "string" ? F.b(name) : name, digest, size: 0n, executable: false };
}

const BAD_NAMES: [string, Uint8Array][] = [
  ["empty", new Uint8Array(0)],
  [".", F.b(".")],
  ["..", F.b("..")],
  ["slash", F.b("a/b")],
  ["NUL", F.b("a\0b")],
];

interface DirCase {
  name: string;
  /** The stream, given the case's leaf index. */
  stream: (i: number) => Directory[];
  code: Code;
  details?: RegExp | string;
}

const DIR_CASES: DirCase[] = [
  {
    name: "files unsorted",
    stream: (i) => [leaf(i), { ...empty(), files: [file("b"), file("a")] }],
    code: Code.INTERNAL,
    details: /not sorted/,
  },
  {
    name: "directories unsorted",
    stream: (i) => [leaf(i), { ...empty(), directories: [leafNode("b", i), leafNode("a", i)] }],
    code: Code.INTERNAL,
    details: /not sorted/,
  },
  {
    name: "name duplicated across lists",
    stream: (i) => [leaf(i), { ...empty(), directories: [leafNode("a", i)], files: [file("a")] }],
    code: Code.INTERNAL,
    details: /duplicate/,
  },
  {
    name: "name duplicated within a list",
    stream: (i) => [leaf(i), { ...empty(), files: [file("a"), file("a")] }],
    code: Code.INTERNAL,
    details: /duplicate/,
  },
  ...BAD_NAMES.flatMap(([label, name]): DirCase[] => [
    {
      name: `file name ${label}`,
      stream: (i) => [leaf(i), { ...empty(), files: [file(name)] }],
      code: Code.INTERNAL,
      details: /[Ii]nvalid name/,
    },
    {
      name: `directory name ${label}`,
      stream: (i) => [leaf(i), {
        ...empty(),
        directories: [{ ...leafNode("x", i), name }],
      }],
      code: Code.INTERNAL,
      details: /[Ii]nvalid name/,
    },
    {
      name: `symlink name ${label}`,
      stream: (i) => [leaf(i), { ...empty(), symlinks: [{ name, target: F.b("t") }] }],
      code: Code.INTERNAL,
      details: /[Ii]nvalid name/,
    },
  ]),
  {
    name: "symlink target empty",
    stream: (i) => [leaf(i), { ...empty(), symlinks: [{ name: F.b("l"), target: F.b("") }] }],
    code: Code.INTERNAL,
    details: /symlink target/,
  },
  {
    name: "symlink target with NUL",
    stream: (i) => [leaf(i), { ...empty(), symlinks: [{ name: F.b("l"), target: F.b("a\0") }] }],
    code: Code.INTERNAL,
    details: /symlink target/,
  },
  {
    name: "wrong size",
    stream: (i) => [leaf(i), { ...empty(), directories: [{ ...leafNode("x", i), size: 42n }] }],
    code: Code.INTERNAL,
    details: /wrong size/,
  },
  {
    name: "size overflow",
    stream: (i) => [leaf(i), { ...empty(), directories: [{ ...leafNode("x", i), size: U64_MAX }] }],
    code: Code.INTERNAL,
  },
  {
    // docs/compatibility.md#q8-short-child-digests-crash-directory-put
    name: "short child directory digest (upstream panics)",
    stream: (i) => [leaf(i), {
      ...empty(),
      directories: [{ ...leafNode("x", i), digest: directoryDigest(leaf(i)).subarray(0, 31) }],
    }],
    code: Code.INVALID_ARGUMENT,
  },
  {
    name: "long child directory digest",
    stream: (i) => [leaf(i), {
      ...empty(),
      directories: [{ ...leafNode("x", i), digest: new Uint8Array(33) }],
    }],
    code: Code.INVALID_ARGUMENT,
  },
  {
    name: "short file digest",
    stream: (i) => [leaf(i), { ...empty(), files: [file("f", new Uint8Array(31))] }],
    code: Code.INVALID_ARGUMENT,
  },
  {
    name: "dangling reference",
    stream: (i) => [leaf(i), {
      ...empty(),
      directories: [{ ...leafNode("x", i), digest: F.DUMMY_DIGEST }],
    }],
    code: Code.INTERNAL,
    details: /unknown directory/,
  },
  {
    name: "child sent after its parent",
    stream: (i) => [{ ...empty(), directories: [leafNode("x", i)] }, leaf(i)],
    code: Code.INTERNAL,
    details: /unknown directory/,
  },
  {
    name: "disconnected roots",
    stream: (i) => [leaf(i), { ...empty(), files: [file(`unrelated-${i}`)] }],
    code: Code.INTERNAL,
    details: /disconnected roots/,
  },
  {
    name: "bad directory after a valid parent",
    stream: (i) => [
      leaf(i),
      { ...empty(), directories: [leafNode("ok", i)] },
      { ...empty(), files: [file("z"), file("y")] },
    ],
    code: Code.INTERNAL,
    details: /not sorted/,
  },
];

/** A PathInfo for case `i` whose key is a digest filled with `i`; `edit` breaks it. */
function pathInfoCase(i: number, edit: (p: PathInfo, self: string) => void): {
  info: PathInfo;
  key: Uint8Array;
} {
  const key = new Uint8Array(20).fill(i);
  const self = `${nixbase32(key)}-case-${i}`;
  const info: PathInfo = {
    node: { node: makeNode.symlink(F.b(self), F.b("/nix/store/x")) },
    references: [key.slice()],
    narinfo: {
      narSize: 1n,
      narSha256: new Uint8Array(32),
      signatures: [],
      referenceNames: [self],
      deriver: undefined,
      ca: undefined,
      upload: undefined,
    },
  };
  edit(info, self);
  return { info, key };
}

const setName = (p: PathInfo, name: string) => (p.node!.node!.value.name = F.b(name));

const PATHINFO_CASES: [string, (p: PathInfo, self: string) => void][] = [
  ["name too short", (p) => setName(p, "invalid")],
  ["name empty", (p) => setName(p, "")],
  ["name without a dash", (p, self) => setName(p, self.replace("-", "x"))],
  ["digest part not nixbase32", (p, self) => setName(p, "e" + self.slice(1))],
  ["name part with a slash", (p, self) => setName(p, self + "/x")],
  ["name part with a space", (p, self) => setName(p, self + " x")],
  ["reference of 19 bytes", (p) => (p.references[0] = p.references[0].subarray(0, 19))],
  ["reference of 21 bytes", (p) => (p.references[0] = new Uint8Array(21))],
  ["fewer reference names than references", (p) => (p.narinfo!.referenceNames = [])],
  ["reference name of another path", (p) => {
    p.narinfo!.referenceNames = [`${nixbase32(new Uint8Array(20).fill(0xee))}-other`];
  }],
  ["reference name not a store path", (p) => (p.narinfo!.referenceNames = ["not-a-path"])],
  ["nar_sha256 of 31 bytes", (p) => (p.narinfo!.narSha256 = new Uint8Array(31))],
  ["deriver with a bad digest", (p) => {
    p.narinfo!.deriver = { name: "foo", digest: new Uint8Array(3) };
  }],
  ["no root node", (p) => (p.node = undefined)],
  ["root node with an empty oneof", (p) => (p.node = { node: undefined })],
  ["root node with a short digest", (p, self) => {
    p.node = { node: makeNode.file(F.b(self), new Uint8Array(31), 0n) };
  }],
  ["root symlink with an empty target", (p, self) => {
    p.node = { node: makeNode.symlink(F.b(self), new Uint8Array(0)) };
  }],
];

for (const backend of ["memory", "embedded"] as const) {
  Deno.test(`daemon (${backend}): bad input is rejected and stores nothing`, async (t) => {
    await withWorkDirAndStubs("tvix-bad-input-", async (work, stubs) => {
      const args = backend === "memory" ? MEMORY_BACKENDS : [];
      await withDaemon(join(work, "home"), args, stubs, async (c) => {
        await t.step("directory closures", async () => {
          for (const [i, kase] of DIR_CASES.entries()) {
            const stream = kase.stream(i);
            assertStatus(await c.dirPut(stream), kase.code, kase.details, kase.name);
            for (const d of stream) {
              const digest = directoryDigest(d);
              assertStatus(await c.dirGet(digest, false), Code.NOT_FOUND, undefined, kase.name);
              assertEquals(await c.dirGetOk(digest, true), [], `${kase.name}: nothing stored`);
            }
          }
          assertStatus(await c.dirPut([]), Code.INVALID_ARGUMENT, "got no directories");
        });

        await t.step("path infos", async () => {
          for (const [n, [name, edit]] of PATHINFO_CASES.entries()) {
            const { info, key } = pathInfoCase(n + 1, edit);
            assertStatus(await c.pathInfoPut(info), Code.INVALID_ARGUMENT, undefined, name);
            assertStatus(await c.pathInfoGet(key), Code.NOT_FOUND, undefined, name);
          }
          assertEquals(await c.pathInfoList(), [], "no PathInfo stored");
        });

        await t.step("still serving: valid puts succeed afterwards", async () => {
          const root = await c.dirPutOk([leaf(0), {
            ...empty(),
            directories: [leafNode("ok", 0)],
          }]);
          assertEquals((await c.dirGetOk(root, true)).length, 2);
          const { info, key } = pathInfoCase(0x7f, () => {});
          assertStatus(await c.pathInfoPut(info), Code.OK);
          assertStatus(await c.pathInfoGet(key), Code.OK);
          assertEquals(await c.blobPutOk([F.BLOB_A]), F.BLOB_A_DIGEST);
        });
      });
    });
  });
}
