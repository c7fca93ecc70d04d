/**
 * Store-layer fixtures (upstream's tvix/store/src/tests/fixtures.rs; see
 * docs/compatibility.md#test-vectors), shared by the
 * PathInfo validation tests and the PathInfoService conformance suite.
 *
 * @module
 */
import { NARInfo_CA_Hash, type PathInfo } from "../../src/proto/tvix/store/protos/pathinfo.ts";
import { b, DUMMY_DIGEST, DUMMY_PATH, DUMMY_PATH_DIGEST } from "../fixtures.ts";
import { StorePath } from "../../src/store/store_path.ts";

/** A directory root node named DUMMY_PATH, one reference to itself, no narinfo. */
export function pathInfoWithoutNarinfo(): PathInfo {
  return {
    node: {
      node: {
        $case: "directory",
        value: { name: b(DUMMY_PATH), digest: DUMMY_DIGEST.slice(), size: 0n },
      },
    },
    references: [DUMMY_PATH_DIGEST.slice()],
    narinfo: undefined,
  };
}

/** The above plus a narinfo naming the reference. */
export function pathInfoWithNarinfo(): PathInfo {
  return {
    ...pathInfoWithoutNarinfo(),
    narinfo: {
      narSize: 0n,
      narSha256: new Uint8Array(32),
      signatures: [],
      referenceNames: [DUMMY_PATH],
      deriver: undefined,
      ca: { type: NARInfo_CA_Hash.NAR_SHA256, digest: new Uint8Array(32) },
      upload: undefined,
    },
  };
}

/** A PathInfo with a symlink root named `<digest text>-<name>` (as the upstream put_get test). */
export function symlinkPathInfo(
  basename = "00000000000000000000000000000000-foo",
  target = "doesntmatter",
): PathInfo {
  return {
    node: { node: { $case: "symlink", value: { name: b(basename), target: b(target) } } },
    references: [],
    narinfo: undefined,
  };
}

/**
 * A PathInfo with a symlink root named `basename` that refers to the store
 * paths `references` (basenames), named in its narinfo too.
 */
export function referringPathInfo(basename: string, references: string[]): PathInfo {
  return {
    ...symlinkPathInfo(basename),
    references: references.map((r) => StorePath.parseBasename(r).digest),
    narinfo: {
      narSize: 0n,
      narSha256: new Uint8Array(32),
      signatures: [],
      referenceNames: references,
      deriver: undefined,
      ca: undefined,
      upload: undefined,
    },
  };
}
