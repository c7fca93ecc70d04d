import { assertEquals, assertThrows } from "../assert.ts";
import { fromHex, toHex } from "../../src/castore/digest.ts";
import { PathInfo } from "../../src/proto/tvix/store/protos/pathinfo.ts";
import {
  validatePathInfo,
  ValidatePathInfoError,
  type ValidatePathInfoErrorKind,
} from "../../src/store/pathinfo/validate.ts";
import * as nixbase32 from "../../src/store/nixbase32.ts";
import { b, DUMMY_DIGEST, DUMMY_PATH } from "../fixtures.ts";
import {
  pathInfoWithNarinfo,
  pathInfoWithoutNarinfo,
  symlinkPathInfo,
} from "./pathinfo_fixtures.ts";

function rejects(info: PathInfo, kind: ValidatePathInfoErrorKind): ValidatePathInfoError {
  const err = assertThrows(() => validatePathInfo(info), ValidatePathInfoError);
  assertEquals(err.kind, kind, err.message);
  return err;
}

Deno.test("fixture encodings match the contract", () => {
  const without = toHex(PathInfo.encode(pathInfoWithoutNarinfo()).finish());
  assertEquals(
    without,
    "0a4c0a4a0a2630303030303030303030303030303030303030303030303030303030303030302d64756d6d7912200000000000000000000000000000000000000000000000000000000000000000" +
      "12140000000000000000000000000000000000000000",
  );
  const withNarinfo = toHex(PathInfo.encode(pathInfoWithNarinfo()).finish());
  const zeros32 = "00".repeat(32);
  assertEquals(
    withNarinfo,
    without + "1a6e" + "1220" + zeros32 + "2226" + toHex(b(DUMMY_PATH)) + "3222" + "1220" + zeros32,
  );
});

Deno.test("a missing node is NoNodePresent", () => {
  rejects({ ...symlinkPathInfo(), node: undefined }, "NoNodePresent");
  rejects({ ...symlinkPathInfo(), node: { node: undefined } }, "NoNodePresent");
});

Deno.test("directory and file root nodes named by a store path are valid", () => {
  for (const $case of ["directory", "file"] as const) {
    const value = $case === "directory"
      ? { name: b(DUMMY_PATH), digest: DUMMY_DIGEST, size: 0n }
      : { name: b(DUMMY_PATH), digest: DUMMY_DIGEST, size: 0n, executable: false };
    const info = {
      node: { node: { $case, value } },
      references: [],
      narinfo: undefined,
    } as PathInfo;
    const path = validatePathInfo(info);
    assertEquals(path.basename(), DUMMY_PATH);
    assertEquals(path.digest, new Uint8Array(20));
  }
});

Deno.test("root node failures: digest length, then the store path name", () => {
  const dir = (name: string, digest: Uint8Array): PathInfo => ({
    node: { node: { $case: "directory", value: { name: b(name), digest, size: 0n } } },
    references: [],
    narinfo: undefined,
  });
  const err = rejects(dir(DUMMY_PATH, new Uint8Array(0)), "InvalidRootNode");
  assertEquals(err.cause?.kind, "InvalidDigestLen");
  // The digest is checked before the name.
  rejects(dir("invalid", new Uint8Array(0)), "InvalidRootNode");
  const nameErr = rejects(dir("invalid", DUMMY_DIGEST), "InvalidNodeName");
  assertEquals(nameErr.cause?.kind, "InvalidLength");
  assertEquals(rejects(symlinkPathInfo("invalid"), "InvalidNodeName").cause?.kind, "InvalidLength");
  // Not a valid node name at all: node validation reports it.
  rejects(symlinkPathInfo(""), "InvalidRootNode");
  rejects(symlinkPathInfo(`${"0".repeat(32)}-a/b`), "InvalidRootNode");
  // A valid node name that is not a store path.
  rejects(symlinkPathInfo(`${"0".repeat(32)}-a b`), "InvalidNodeName");
  rejects(symlinkPathInfo(`${"e".repeat(32)}-foo`), "InvalidNodeName");
});

Deno.test("symlink targets must be non-empty and NUL-free", () => {
  assertEquals(validatePathInfo(symlinkPathInfo()).basename(), `${"0".repeat(32)}-foo`);
  rejects(symlinkPathInfo(undefined, ""), "InvalidRootNode");
  rejects(symlinkPathInfo(undefined, "foo\0bar"), "InvalidRootNode");
});

Deno.test("the contract's PathInfo fixtures are valid", () => {
  assertEquals(validatePathInfo(pathInfoWithoutNarinfo()).basename(), DUMMY_PATH);
  assertEquals(validatePathInfo(pathInfoWithNarinfo()).basename(), DUMMY_PATH);
});

Deno.test("the textual 59-byte ca digest written by the reference import is accepted", () => {
  const info = pathInfoWithNarinfo();
  info.narinfo!.ca!.digest = b("sha256-" + nixbase32.encode(new Uint8Array(32)));
  assertEquals(info.narinfo!.ca!.digest.length, 59);
  validatePathInfo(info);
});

Deno.test("narinfo checks, in order", () => {
  let info = pathInfoWithNarinfo();
  info.narinfo!.narSha256 = fromHex("beef");
  assertEquals(rejects(info, "InvalidNarSha256DigestLen").message.includes("2"), true);

  info = pathInfoWithNarinfo();
  info.narinfo!.referenceNames = [];
  rejects(info, "InconsistentNumberOfReferences");

  info = pathInfoWithNarinfo();
  info.references.push(fromHex("beef"));
  rejects(info, "InvalidReferenceDigestLen");

  info = pathInfoWithNarinfo();
  info.narinfo!.referenceNames = [`/nix/store/${DUMMY_PATH}`];
  const nameErr = rejects(info, "InvalidNarinfoReferenceName");
  assertEquals(nameErr.message.includes(`"/nix/store/${DUMMY_PATH}"`), true);

  info = pathInfoWithNarinfo();
  info.references = [new Uint8Array(20).fill(0xff)];
  rejects(info, "InconsistentNarinfoReferenceNameDigest");

  // Reference checks come before node checks.
  info = pathInfoWithNarinfo();
  info.narinfo!.narSha256 = new Uint8Array(1);
  info.node = undefined;
  rejects(info, "InvalidNarSha256DigestLen");
});

Deno.test("the deriver must form a store path, with or without references (docs/compatibility.md#q10-deriver-unchecked-without-references)", () => {
  for (const withRefs of [true, false]) {
    const base = () => {
      const info = pathInfoWithNarinfo();
      if (!withRefs) {
        info.references = [];
        info.narinfo!.referenceNames = [];
      }
      return info;
    };
    let info = base();
    info.narinfo!.deriver = { name: "foo", digest: new Uint8Array(20) };
    validatePathInfo(info);

    info = base();
    info.narinfo!.deriver = { name: "foo", digest: new Uint8Array(0) };
    rejects(info, "InvalidDeriverField");

    info = base();
    info.narinfo!.deriver = { name: "foo bar", digest: new Uint8Array(20) };
    rejects(info, "InvalidDeriverField");
  }
});
