/**
 * narinfo parsing, rendering, fingerprint and PathInfo conversion against
 * upstream's vectors (docs/compatibility.md#narinfo and
 * docs/compatibility.md#test-vectors).
 */
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { b } from "../fixtures.ts";
import { fromHex } from "../../src/castore/digest.ts";
import * as nixbase32 from "../../src/store/nixbase32.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { NARInfo_CA_Hash, type PathInfo } from "../../src/proto/tvix/store/protos/pathinfo.ts";
import {
  fingerprint,
  NarInfoError,
  narInfoFingerprint,
  narInfoToPathInfo,
  parseContentAddress,
  parseNarInfo,
  pathInfoToNarInfo,
  renderNarInfo,
} from "../../src/narbridge/narinfo.ts";
import { PublicKey } from "../../src/narbridge/signing.ts";

const CACHE_NIXOS_ORG_KEY = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
const FOD_SIG =
  "cache.nixos.org-1:ywnIG629nQZQhEr6/HLDrLT/mUEp5J1LC6NmWSlJRWL/nM7oGItJQUYWGLvYGhSQvHrhIuvMpjNmBNh/WWqCDg==";

// The FOD narinfo as a cache serves it. URL/Compression/FileHash/FileSize are
// of the compressed file and are dropped by the conversion, so their values
// here only need to be well-formed.
const FOD_NARINFO = `StorePath: /nix/store/pa10z4ngm0g83kx9mssrqzz30s84vq7k-hello-2.12.1.tar.gz
URL: nar/1zjrhzhaizsrlsvdkqfl073vivmxcqnzkff4s50i0cdf541ary1r.nar.xz
Compression: xz
FileHash: sha256:1zjrhzhaizsrlsvdkqfl073vivmxcqnzkff4s50i0cdf541ary1r
FileSize: 1033524
NarHash: sha256:1lvqpbk2k1sb39z8jfxixf7p7v8sj4z6mmpa44nnmff3w1y6h8lh
NarSize: 1033416
References: 
Deriver: dyivpmlaq2km6c11i0s6bi6mbsx0ylqf-hello-2.12.1.tar.gz.drv
Sig: ${FOD_SIG}
CA: fixed:sha256:086vqwk2wl8zfs47sq2xpjc9k066ilmb8z6dn0q6ymwjzlm196cd
`;

// Upstream's PathInfo → narinfo example, byte for byte
// (docs/compatibility.md#conversion-to-and-from-pathinfo).
const FOD_EXPECTED = `StorePath: /nix/store/pa10z4ngm0g83kx9mssrqzz30s84vq7k-hello-2.12.1.tar.gz
URL: some.nar
Compression: none
NarHash: sha256:1lvqpbk2k1sb39z8jfxixf7p7v8sj4z6mmpa44nnmff3w1y6h8lh
NarSize: 1033416
References: 
Deriver: dyivpmlaq2km6c11i0s6bi6mbsx0ylqf-hello-2.12.1.tar.gz.drv
Sig: ${FOD_SIG}
CA: fixed:sha256:086vqwk2wl8zfs47sq2xpjc9k066ilmb8z6dn0q6ymwjzlm196cd
`;

// 64 arbitrary signature bytes (well-formed, not a real signature).
const DUMMY_SIG = "cache.nixos.org-1:" + btoa(String.fromCharCode(...new Uint8Array(64).fill(7)));

const HELLO_NARINFO = `StorePath: /nix/store/s66mzxpvicwk07gjbjfw9izjfa797vsw-hello-2.12.1
URL: nar/1nhgq6wcggx0plpy4991h3ginj6hipsdslv4fd4zml1n707j26yq.nar.xz
Compression: xz
FileHash: sha256:1nhgq6wcggx0plpy4991h3ginj6hipsdslv4fd4zml1n707j26yq
FileSize: 50088
NarHash: sha256:0yzhigwjl6bws649vcs2asa4lbs8hg93hyix187gc7s7a74w5h80
NarSize: 226488
References: 3n58xw4373jp0ljirf06d8077j15pc4j-glibc-2.37-8 s66mzxpvicwk07gjbjfw9izjfa797vsw-hello-2.12.1
Deriver: ib3sh3pcz10wsmavxvkdbayhqivbghlq-hello-2.12.1.drv
Sig: ${DUMMY_SIG}
`;

Deno.test("FOD narinfo → PathInfo → narinfo renders upstream's example byte for byte (docs/compatibility.md#conversion-to-and-from-pathinfo)", () => {
  const info = narInfoToPathInfo(parseNarInfo(FOD_NARINFO));
  const ca = info.narinfo!.ca!;
  assertEquals(ca.type, NARInfo_CA_Hash.FLAT_SHA256);
  assertEquals(ca.digest, nixbase32.decode("086vqwk2wl8zfs47sq2xpjc9k066ilmb8z6dn0q6ymwjzlm196cd"));
  assertEquals(info.references, []);
  assertEquals(info.narinfo!.deriver!.name, "hello-2.12.1.tar.gz");
  // The conversion needs a root node named after the store path.
  info.node = {
    node: {
      $case: "file",
      value: {
        name: b("pa10z4ngm0g83kx9mssrqzz30s84vq7k-hello-2.12.1.tar.gz"),
        digest: new Uint8Array(32),
        size: 1n,
        executable: false,
      },
    },
  };
  assertEquals(renderNarInfo(pathInfoToNarInfo(info, "some.nar")), FOD_EXPECTED);
});

Deno.test("the FOD narinfo's real cache.nixos.org signature verifies over our fingerprint", () => {
  const ni = parseNarInfo(FOD_NARINFO);
  const key = PublicKey.parse(CACHE_NIXOS_ORG_KEY);
  assert(key.verify(narInfoFingerprint(ni), ni.signatures[0]));
  // Any change to the fingerprint breaks it.
  assert(!key.verify(narInfoFingerprint({ ...ni, narSize: ni.narSize + 1n }), ni.signatures[0]));
});

Deno.test("hello narinfo → PathInfo (docs/compatibility.md#conversion-to-and-from-pathinfo)", () => {
  const ni = parseNarInfo(HELLO_NARINFO);
  assertEquals(ni.compression, "xz");
  assertEquals(ni.fileSize, 50088n);
  const info = narInfoToPathInfo(ni);
  assertEquals(info.node, undefined);
  assertEquals(info.references, [
    nixbase32.decode("3n58xw4373jp0ljirf06d8077j15pc4j"),
    nixbase32.decode("s66mzxpvicwk07gjbjfw9izjfa797vsw"),
  ]);
  assertEquals(info.narinfo!.referenceNames, [
    "3n58xw4373jp0ljirf06d8077j15pc4j-glibc-2.37-8",
    "s66mzxpvicwk07gjbjfw9izjfa797vsw-hello-2.12.1",
  ]);
  assertEquals(info.narinfo!.deriver, {
    name: "hello-2.12.1",
    digest: nixbase32.decode("ib3sh3pcz10wsmavxvkdbayhqivbghlq"),
  });
  assertEquals(info.narinfo!.ca, undefined);
  assertEquals(info.narinfo!.narSize, 226488n);
  assertEquals(
    info.narinfo!.narSha256,
    nixbase32.decode("0yzhigwjl6bws649vcs2asa4lbs8hg93hyix187gc7s7a74w5h80"),
  );
  assertEquals(info.narinfo!.signatures.length, 1);
  assertEquals(info.narinfo!.signatures[0].name, "cache.nixos.org-1");
  assertEquals(info.narinfo!.signatures[0].data, new Uint8Array(64).fill(7));
});

Deno.test("parse → render is the identity on a full narinfo", () => {
  assertEquals(renderNarInfo(parseNarInfo(FOD_NARINFO)), FOD_NARINFO);
  const withSystem = HELLO_NARINFO + "System: x86_64-linux\n";
  // Rendering puts System before Sig, as Nix does.
  const rendered = renderNarInfo(parseNarInfo(withSystem));
  assertEquals(parseNarInfo(rendered).system, "x86_64-linux");
  assert(rendered.indexOf("System:") < rendered.indexOf("Sig:"));
});

Deno.test("fingerprint of the curl narinfo (docs/compatibility.md#fingerprint-and-signatures)", () => {
  const refs = [
    "0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0",
    "6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115",
    "j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12",
    "yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n",
  ].map((s) => StorePath.parseBasename(s));
  const expected = "1;/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin;" +
    "sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;196040;" +
    "/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0," +
    "/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115," +
    "/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12," +
    "/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n";
  const args = [
    StorePath.parseBasename("syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin"),
    nixbase32.decode("1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0"),
    196040n,
  ] as const;
  assertEquals(fingerprint(...args, refs), expected);
  // Nix signs its sorted reference set, whatever order a narinfo lists them in.
  assertEquals(fingerprint(...args, [...refs].reverse()), expected);
});

Deno.test("NarHash in hex is accepted and flagged", () => {
  const hex = "8a46c4eee4911eb842b1b2f144a9376be45a43d1da6b7af8cffa43a942177587";
  const ni = parseNarInfo(HELLO_NARINFO.replace(/NarHash: .*/, `NarHash: sha256:${hex}`));
  assertEquals(ni.narHash, fromHex(hex));
  assert(ni.flags.narHashHex);
  // Rendered back in nixbase32 (docs/compatibility.md#nixbase32): this hex and
  // this text are one hash in upstream's exportReferencesGraph test vector.
  assert(
    renderNarInfo(ni).includes(
      "NarHash: sha256:11vm2x1ajhzsrzw7lsyss51mmr3b6yll9wdjn51bh7liwkpc8ila\n",
    ),
  );
});

Deno.test("flags: absent Compression, unknown field, out-of-order references", () => {
  const text = HELLO_NARINFO
    .replace(/Compression: .*\n/, "")
    .replace(
      /References: .*/,
      "References: s66mzxpvicwk07gjbjfw9izjfa797vsw-hello-2.12.1 3n58xw4373jp0ljirf06d8077j15pc4j-glibc-2.37-8",
    ) +
    "Foo: bar\n";
  const ni = parseNarInfo(text);
  assertEquals(ni.compression, undefined);
  assertEquals(ni.flags, {
    compressionDefault: true,
    referencesOutOfOrder: true,
    unknownField: true,
  });
});

Deno.test("several Sig lines are kept in order; no trailing newline is fine", () => {
  const other = "other-1:" + btoa(String.fromCharCode(...new Uint8Array(64).fill(1)));
  const ni = parseNarInfo(HELLO_NARINFO + `Sig: ${other}`);
  assertEquals(ni.signatures.map((s) => s.name), ["cache.nixos.org-1", "other-1"]);
});

Deno.test("malformed narinfos are rejected with a NarInfoError", () => {
  const cases: Array<[string, string]> = [
    [HELLO_NARINFO + "NarSize: 1\n", "duplicate field NarSize"],
    [HELLO_NARINFO.replace(/StorePath: .*\n/, ""), "missing StorePath"],
    [HELLO_NARINFO.replace(/URL: .*\n/, ""), "missing URL"],
    [HELLO_NARINFO.replace(/NarHash: .*\n/, ""), "missing NarHash"],
    [HELLO_NARINFO.replace(/NarSize: .*\n/, ""), "missing NarSize"],
    [HELLO_NARINFO.replace(/References: .*\n/, ""), "missing References"],
    [HELLO_NARINFO.replace("StorePath: /nix/store/", "StorePath: /gnu/store/"), "StorePath"],
    [HELLO_NARINFO.replace("StorePath: ", "StorePath:"), "invalid line"],
    [HELLO_NARINFO + "garbage\n", "invalid line"],
    [HELLO_NARINFO + "\n", "invalid line"],
    [HELLO_NARINFO.replace(/URL: .*/, "URL: "), "empty URL"],
    [HELLO_NARINFO.replace(/NarSize: .*/, "NarSize: 12x"), "NarSize"],
    [HELLO_NARINFO.replace(/NarSize: .*/, "NarSize: 18446744073709551616"), "exceeds u64"],
    [HELLO_NARINFO.replace("NarHash: sha256:", "NarHash: md5:"), "NarHash"],
    [HELLO_NARINFO.replace("NarHash: sha256:0", "NarHash: sha256:"), "NarHash"],
    [HELLO_NARINFO.replace("NarHash: sha256:0", "NarHash: sha256:e"), "NarHash"],
    [HELLO_NARINFO.replace(".drv\n", "\n"), "Deriver"],
    [HELLO_NARINFO.replace("glibc-2.37-8", "glibc-2.37-8/bin"), "reference"],
    [HELLO_NARINFO.replace("glibc-2.37-8 ", "glibc-2.37-8  "), "reference"],
    [HELLO_NARINFO.replace("Sig: cache.nixos.org-1:", "Sig: cache nixos:"), "Sig"],
    [HELLO_NARINFO.replace(/Sig: (.*)/, "Sig: $1AAAA"), "Sig"],
    [HELLO_NARINFO + "CA: fixed:r:sha255:0\n", "CA"],
    [HELLO_NARINFO + "CA: text:sha1:0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33\n", "CA"],
    ["", "missing StorePath"],
  ];
  for (const [text, msg] of cases) assertThrows(() => parseNarInfo(text), NarInfoError, msg);
});

Deno.test("content addresses: every form parses and renders back", () => {
  for (
    const text of [
      "text:sha256:1xqkzcb3909fp07qngljr4wcdnrh1gdam1m2n29i6hhrxlmkgkv1",
      "fixed:r:sha256:1xqkzcb3909fp07qngljr4wcdnrh1gdam1m2n29i6hhrxlmkgkv1",
      "fixed:r:sha1:" + nixbase32.encode(fromHex("0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33")),
      "fixed:md5:" + nixbase32.encode(new Uint8Array(16).fill(3)),
      "fixed:sha512:" + nixbase32.encode(new Uint8Array(64).fill(9)),
    ]
  ) {
    const ni = parseNarInfo(HELLO_NARINFO + `CA: ${text}\n`);
    assert(renderNarInfo(ni).endsWith(`CA: ${text}\n`), text);
  }
  // Hex digests (which Nix also accepts) are read, rendered in nixbase32.
  const sha1 = parseContentAddress("fixed:r:sha1:0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33");
  assertEquals(sha1.digest, fromHex("0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33"));
});

function pathInfoWithCa(type: NARInfo_CA_Hash, digest: Uint8Array): PathInfo {
  return {
    node: {
      node: {
        $case: "symlink",
        value: { name: b("00000000000000000000000000000000-foo"), target: b("x") },
      },
    },
    references: [],
    narinfo: {
      narSize: 136n,
      narSha256: new Uint8Array(32).fill(1),
      signatures: [],
      referenceNames: [],
      deriver: undefined,
      ca: { type, digest },
      upload: undefined,
    },
  };
}

Deno.test("TEXT_SHA256 converts both ways (docs/compatibility.md#q13-text-content-addresses-cannot-be-converted-back)", () => {
  const digest = new Uint8Array(32).fill(5);
  const ni = pathInfoToNarInfo(pathInfoWithCa(NARInfo_CA_Hash.TEXT_SHA256, digest), "x.nar");
  assertEquals(ni.ca, { method: "text", algo: "sha256", digest });
  const back = narInfoToPathInfo(parseNarInfo(renderNarInfo(ni)));
  assertEquals(back.narinfo!.ca, { type: NARInfo_CA_Hash.TEXT_SHA256, digest });
});

Deno.test("the reference import's 59-byte textual ca.digest is tolerated (docs/compatibility.md#q1-import-stores-the-ca-digest-as-text)", () => {
  const digest = new Uint8Array(32).fill(0xab);
  const textual = b("sha256-" + nixbase32.encode(digest));
  assertEquals(textual.length, 59);
  const ni = pathInfoToNarInfo(pathInfoWithCa(NARInfo_CA_Hash.NAR_SHA256, textual), "x.nar");
  assertEquals(ni.ca, { method: "nar", algo: "sha256", digest });
  assertThrows(
    () => pathInfoToNarInfo(pathInfoWithCa(NARInfo_CA_Hash.NAR_SHA256, b("garbage")), "x"),
    NarInfoError,
    "CA digest",
  );
});

Deno.test("PathInfo without node or narinfo cannot become a narinfo", () => {
  const info = pathInfoWithCa(NARInfo_CA_Hash.NAR_SHA256, new Uint8Array(32));
  assertThrows(() => pathInfoToNarInfo({ ...info, node: undefined }), NarInfoError, "no root node");
  assertThrows(
    () => pathInfoToNarInfo({ ...info, narinfo: undefined }),
    NarInfoError,
    "no NAR metadata",
  );
});
