/**
 * Fixture constants shared by the tests (upstream's values,
 * docs/compatibility.md#test-vectors), so every suite speaks about the same
 * data.
 *
 * @module
 */
import { blake3, EMPTY_DIGEST, fromHex } from "../src/castore/digest.ts";
import { type Directory, directoryDigest } from "../src/castore/directory.ts";

const te = new TextEncoder();
/** UTF-8 bytes of a string. */
export const b = (s: string): Uint8Array => te.encode(s);

export const HELLOWORLD_BLOB_CONTENTS = b("Hello World!");
export const HELLOWORLD_BLOB_DIGEST = fromHex(
  "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c",
);
export const EMPTY_BLOB_CONTENTS = new Uint8Array(0);
export const EMPTY_BLOB_DIGEST = EMPTY_DIGEST;
export const BLOB_A = new Uint8Array([0x00, 0x01]);
export const BLOB_A_DIGEST = fromHex(
  "7b7015bb92cf0b318037702a6cdd81dee41224f734684c2c122cd6359cb1ee63",
);
/** Bytes 0..=254 repeated 4096 times (1 044 480 bytes). */
export const BLOB_B = (() => {
  const out = new Uint8Array(255 * 4096);
  for (let i = 0; i < out.length; i++) out[i] = i % 255;
  return out;
})();
export const BLOB_B_DIGEST = fromHex(
  "a82c5154a7a0c262c6fdb929a317585646f8fbcf80326d0a7b8747edaf2d99d2",
);
export const DUMMY_DIGEST = new Uint8Array(32);
export const DUMMY_DIGEST_2 = (() => {
  const d = new Uint8Array(32);
  d[0] = 0x10;
  return d;
})();

export const DIRECTORY_A: Directory = { directories: [], files: [], symlinks: [] };
export const DIRECTORY_B: Directory = {
  directories: [{ name: b("a"), digest: directoryDigest(DIRECTORY_A), size: 0n }],
  files: [],
  symlinks: [],
};
export const DIRECTORY_C: Directory = {
  directories: [
    { name: b("a"), digest: directoryDigest(DIRECTORY_A), size: 0n },
    { name: b("a'"), digest: directoryDigest(DIRECTORY_A), size: 0n },
  ],
  files: [],
  symlinks: [],
};
export const DIRECTORY_WITH_KEEP: Directory = {
  directories: [],
  files: [{ name: b(".keep"), digest: EMPTY_BLOB_DIGEST, size: 0n, executable: false }],
  symlinks: [],
};
export const DIRECTORY_COMPLICATED: Directory = {
  directories: [{ name: b("keep"), digest: directoryDigest(DIRECTORY_WITH_KEEP), size: 1n }],
  files: [{ name: b(".keep"), digest: EMPTY_BLOB_DIGEST, size: 0n, executable: false }],
  symlinks: [{ name: b("aa"), target: b("/nix/store/somewhereelse") }],
};

export const NAR_CONTENTS_SYMLINK = fromHex(
  "0d000000000000006e69782d617263686976652d310000000100000000000000280000000000000004000000000000007479706500000000070000000000000073796d6c696e6b000600000000000000746172676574000018000000000000002f6e69782f73746f72652f736f6d657768657265656c736501000000000000002900000000000000",
);
export const NAR_CONTENTS_HELLOWORLD = fromHex(
  "0d000000000000006e69782d617263686976652d3100000001000000000000002800000000000000040000000000000074797065000000000700000000000000726567756c6172000800000000000000636f6e74656e74730c0000000000000048656c6c6f20576f726c64210000000001000000000000002900000000000000",
);

/**
 * Deterministic pseudo-random bytes (xorshift32): incompressible, and the
 * same for the same seed, so failures reproduce.
 */
export function pseudoRandom(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1; // xorshift never leaves 0
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/**
 * A copy of an encoded blob index (`BlobIndex`/`StatBlobResponse`, entries
 * under 128 bytes) with its last entry's tag, field 1, turned into field
 * 9 by one flipped bit: damage that still decodes, since decoding skips
 * the unknown field, to a list one chunk shorter.
 */
export function damageLastIndexEntry(index: Uint8Array): Uint8Array {
  let last = 0;
  for (let at = 0; at < index.length; at += 2 + index[at + 1]) last = at;
  const damaged = index.slice();
  damaged[last] ^= 0x40;
  return damaged;
}

/** 20 zero bytes: the digest of DUMMY_PATH. */
export const DUMMY_PATH_DIGEST = new Uint8Array(20);
export const DUMMY_PATH = "00000000000000000000000000000000-dummy";

/** Sanity: the fixtures hash to what the contract says (checked in directory_test). */
export const selfCheck = (): boolean => blake3(BLOB_A).every((x, i) => x === BLOB_A_DIGEST[i]);
