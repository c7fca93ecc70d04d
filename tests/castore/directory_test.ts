import { assertEquals, assertThrows } from "../assert.ts";
import { b3Display, blake3, fromHex, toHex } from "../../src/castore/digest.ts";
import {
  directoryDigest,
  directoryNodes,
  directorySize,
  encodeDirectory,
  validateDirectory,
  ValidateDirectoryError,
} from "../../src/castore/directory.ts";
import { U64_MAX } from "../../src/castore/node.ts";
import * as F from "../fixtures.ts";

const { b } = F;

Deno.test("blob fixtures hash to the contract's digests", () => {
  assertEquals(toHex(blake3(F.HELLOWORLD_BLOB_CONTENTS)), toHex(F.HELLOWORLD_BLOB_DIGEST));
  assertEquals(toHex(blake3(F.BLOB_B)), toHex(F.BLOB_B_DIGEST));
  assertEquals(b3Display(F.BLOB_A_DIGEST), "b3:e3AVu5LPCzGAN3AqbN2B3uQSJPc0aEwsEizWNZyx7mM=");
  assertEquals(b3Display(F.EMPTY_BLOB_DIGEST), "b3:rxNJufX5oaagQE3qNtzJSZvLJcmtwRK3zJqTyuQfMmI=");
});

Deno.test("canonical encoding and digests match the contract", () => {
  assertEquals(encodeDirectory(F.DIRECTORY_A).length, 0);
  assertEquals(
    toHex(encodeDirectory(F.DIRECTORY_B)),
    "0a250a01611220af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
  );
  assertEquals(
    toHex(directoryDigest(F.DIRECTORY_C)),
    "78eb200ae0cc95d4ea954655fbcf91e285013a261310e161927f2401d2bca803",
  );
  assertEquals(
    b3Display(directoryDigest(F.DIRECTORY_WITH_KEEP)),
    "b3:i1tdZCtka7jtUEsIYsOUE+h+V0kUl9570HWVP3uDgQ4=",
  );
  assertEquals(
    toHex(encodeDirectory(F.DIRECTORY_COMPLICATED)),
    "0a2a0a046b65657012208b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e180112290a052e6b6565701220af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f32621a1e0a02616112182f6e69782f73746f72652f736f6d657768657265656c7365",
  );
  assertEquals(
    toHex(directoryDigest(F.DIRECTORY_COMPLICATED)),
    "3f951a15afd586fb3121ef4d13d582e811ce0e5a7f21c0497fd87490e9e2355a",
  );
});

Deno.test("directory size, checked and saturating", () => {
  const dir = (sizes: bigint[]) => ({
    directories: sizes.map((size, i) => ({ name: b(`d${i}`), digest: F.DUMMY_DIGEST, size })),
    files: [],
    symlinks: [],
  });
  assertEquals(directorySize(F.DIRECTORY_A), 0n);
  assertEquals(directorySize(dir([0n])), 1n);
  assertEquals(directorySize(dir([4n])), 5n);
  assertEquals(directorySize(F.DIRECTORY_WITH_KEEP), 1n);
  assertEquals(directorySize(dir([U64_MAX - 1n])), U64_MAX);
  assertEquals(directorySize(dir([U64_MAX])), U64_MAX);
  validateDirectory(dir([U64_MAX - 1n]));
  for (const sizes of [[U64_MAX], [U64_MAX / 2n, U64_MAX / 2n]]) {
    const err = assertThrows(() => validateDirectory(dir(sizes)), ValidateDirectoryError);
    assertEquals(err.kind, "SizeOverflow");
  }
});

Deno.test("directory validation: names, digests, sorting, duplicates", () => {
  const kindOf = (d: Parameters<typeof validateDirectory>[0]) =>
    assertThrows(() => validateDirectory(d), ValidateDirectoryError).kind;
  const dn = (name: Uint8Array, digest = F.DUMMY_DIGEST) => ({ name, digest, size: 0n });
  const fn = (name: Uint8Array) => ({ name, digest: F.DUMMY_DIGEST, size: 0n, executable: false });
  const sn = (name: Uint8Array) => ({ name, target: b("x") });
  const empty = { directories: [], files: [], symlinks: [] };
  assertEquals(kindOf({ ...empty, directories: [dn(b(""))] }), "InvalidNode");
  assertEquals(kindOf({ ...empty, directories: [dn(b("."))] }), "InvalidNode");
  assertEquals(kindOf({ ...empty, files: [fn(b(".."))] }), "InvalidNode");
  assertEquals(kindOf({ ...empty, symlinks: [sn(new Uint8Array([0]))] }), "InvalidNode");
  assertEquals(kindOf({ ...empty, symlinks: [sn(b("foo/bar"))] }), "InvalidNode");
  const short = assertThrows(
    () => validateDirectory({ ...empty, directories: [dn(b("a"), new Uint8Array(2))] }),
    ValidateDirectoryError,
  );
  assertEquals(short.nodeError?.kind, "InvalidDigestLen");
  assertEquals(kindOf({ ...empty, directories: [dn(b("b")), dn(b("a"))] }), "WrongSorting");
  assertEquals(kindOf({ ...empty, directories: [dn(b("a")), dn(b("a"))] }), "DuplicateName");
  assertEquals(
    kindOf({ ...empty, directories: [dn(b("a"))], files: [fn(b("a"))] }),
    "DuplicateName",
  );
  validateDirectory({ ...empty, directories: [dn(b("a")), dn(b("b"))] });
  validateDirectory({ ...empty, directories: [dn(b("b")), dn(b("c"))], symlinks: [sn(b("a"))] });
  validateDirectory(F.DIRECTORY_COMPLICATED);
  assertEquals(fromHex("00").length, 1);
});

Deno.test("children are merged in bytewise name order", () => {
  const dn = (n: string) => ({ name: b(n), digest: F.DUMMY_DIGEST, size: 0n });
  const fn = (n: string) => ({ name: b(n), digest: F.DUMMY_DIGEST, size: 0n, executable: false });
  const sn = (n: string) => ({ name: b(n), target: b("x") });
  const d = {
    directories: ["c", "d", "h", "l"].map(dn),
    files: ["b", "e", "g", "j"].map(fn),
    symlinks: ["a", "f", "i", "k"].map(sn),
  };
  const names = [...directoryNodes(d)].map((n) => new TextDecoder().decode(n.value.name));
  assertEquals(names.join(""), "abcdefghijkl");
});
