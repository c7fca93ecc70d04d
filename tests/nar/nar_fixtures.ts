/**
 * NAR fixtures beyond tests/fixtures.ts: NAR_CONTENTS_COMPLICATED
 * (docs/compatibility.md#test-vectors) spelled out from its token sequence.
 *
 * @module
 */
import { concat, str } from "../../src/nar/wire.ts";

/** The tokens of the empty regular file `.keep`, an entry of both directories below. */
const KEEP_ENTRY = [
  "entry",
  "(",
  "name",
  ".keep",
  "node",
  "(",
  "type",
  "regular",
  "contents",
  "",
  ")",
  ")",
];

/**
 * NAR_CONTENTS_COMPLICATED, spelled out from its token sequence
 * (docs/compatibility.md#nar-encoding).
 */
export const NAR_CONTENTS_COMPLICATED = concat(
  [
    "nix-archive-1",
    "(",
    "type",
    "directory",
    ...KEEP_ENTRY,
    "entry",
    "(",
    "name",
    "aa",
    "node",
    "(",
    "type",
    "symlink",
    "target",
    "/nix/store/somewhereelse",
    ")",
    ")",
    "entry",
    "(",
    "name",
    "keep",
    "node",
    "(",
    "type",
    "directory",
    ...KEEP_ENTRY,
    ")",
    ")",
    ")",
  ].map((w) => str(w)),
);
