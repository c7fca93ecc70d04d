import { assert, assertEquals, assertThrows } from "../assert.ts";
import { createHash } from "node:crypto";
import { fromHex, toHex } from "../../src/castore/digest.ts";
import * as nixbase32 from "../../src/store/nixbase32.ts";
import {
  caNarSha256StorePath,
  compareStorePaths,
  fixedOutputStorePath,
  STORE_DIR,
  StorePath,
  StorePathError,
  textStorePath,
} from "../../src/store/store_path.ts";

Deno.test("parses a basename into digest and name", () => {
  const p = StorePath.parseBasename(
    "00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432",
  );
  assertEquals(toHex(p.digest), "8a12321522fd91efbd60ebb2481af88580f61600");
  assertEquals(p.name, "net-tools-1.60_p20170221182432");
  assertEquals(p.basename(), "00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432");
  assertEquals(
    p.absolute(),
    "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432",
  );
  assertEquals(STORE_DIR, "/nix/store");
});

Deno.test("parses absolute paths and requires the store directory", () => {
  const p = StorePath.parseAbsolute("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools");
  assertEquals(p.name, "net-tools");
  for (const bad of ["00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools", "/nix/stor/x", "/gnu/store/x"]) {
    assertEquals(
      assertThrows(() => StorePath.parseAbsolute(bad), StorePathError).kind,
      "MissingStoreDir",
    );
  }
  // A subpath below a store path is not part of it.
  const sub = assertThrows(
    () =>
      StorePath.parseAbsolute(
        "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432/bin/arp",
      ),
    StorePathError,
  );
  assertEquals(sub.kind, "InvalidName");
});

Deno.test("rejects malformed basenames with the matching kind", () => {
  const cases: [string, StorePathError["kind"]][] = [
    ["00bgd045z0d4icpbc2yy-", "InvalidLength"],
    ["00bgd045z0d4icpbc2yyz4gx48ak44la-", "InvalidLength"],
    ["", "InvalidLength"],
    ["00bgd045z0d4icpbc2yy-net-tools-1.60_p20170221182432", "InvalidHashEncoding"],
    ["00bgd045z0d4icpbc2yyz4gx48aku4la-net-tools-1.60_p20170221182432", "InvalidHashEncoding"],
    ["00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432/bin/arp", "InvalidName"],
    ["00bgd045z0d4icpbc2yyz4gx48ak44lanet-tools-1.60_p20170221182432", "MissingDash"],
    ["00bgd045z0d4icpbc2yyz4gx48ak44la-a b", "InvalidName"],
    ["00bgd045z0d4icpbc2yyz4gx48ak44la-é", "InvalidName"],
  ];
  for (const [s, kind] of cases) {
    assertEquals(assertThrows(() => StorePath.parseBasename(s), StorePathError).kind, kind, s);
  }
  const err = assertThrows(
    () => StorePath.parseBasename("00bgd045z0d4icpbc2yyz4gx48ak44la-ab/c"),
    StorePathError,
  );
  assertEquals(err.position, 2);
});

Deno.test("accepts every allowed name character and names starting with a dot", () => {
  assertEquals(
    StorePath.parseBasename("fli4bwscgna7lpm7v5xgnjxrxh0yc7ra-.gitignore").name,
    ".gitignore",
  );
  const all = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-_?=.";
  assertEquals(StorePath.parseBasename(`${"0".repeat(32)}-${all}`).name, all);
  for (const c of "!\"#$%&'()*,/:;<>@[\\]^`{|}~ \t\n\0") {
    assertThrows(() => StorePath.parseBasename(`${"0".repeat(32)}-a${c}`), StorePathError);
  }
});

Deno.test("names may be 211 bytes long, not 212", () => {
  const digest = "0".repeat(32);
  assertEquals(StorePath.parseBasename(`${digest}-${"a".repeat(211)}`).name.length, 211);
  const err = assertThrows(
    () => StorePath.parseBasename(`${digest}-${"a".repeat(212)}`),
    StorePathError,
  );
  assertEquals(err.kind, "InvalidLength");
  assertThrows(() => StorePath.fromParts(new Uint8Array(20), "a".repeat(212)), StorePathError);
});

Deno.test("fromParts checks the digest length and name", () => {
  assertEquals(StorePath.fromParts(new Uint8Array(20), "foo").basename(), `${"0".repeat(32)}-foo`);
  assertEquals(
    assertThrows(() => StorePath.fromParts(new Uint8Array(0), "foo"), StorePathError).kind,
    "InvalidLength",
  );
  assertEquals(
    assertThrows(() => StorePath.fromParts(new Uint8Array(20), ""), StorePathError).kind,
    "InvalidLength",
  );
  assertEquals(
    assertThrows(() => StorePath.fromParts(new Uint8Array(20), "a/b"), StorePathError).kind,
    "InvalidName",
  );
});

Deno.test("store path order equals the order of the nixbase32 text", () => {
  const paths: StorePath[] = [];
  for (let i = 0; i < 200; i++) {
    const digest = Uint8Array.from({ length: 20 }, (_, j) => (i * 37 + j * (i % 7) * 11) & 0xff);
    paths.push(StorePath.fromParts(digest, `p${i % 3}`));
  }
  const byOrder = [...paths].sort(compareStorePaths).map((p) => p.basename());
  const byText = paths.map((p) => p.basename()).sort();
  assertEquals(byOrder, byText);
  const a = StorePath.parseBasename(`${"0".repeat(32)}-a`);
  const b = StorePath.parseBasename(`${"0".repeat(32)}-b`);
  assert(
    compareStorePaths(a, b) < 0 && compareStorePaths(b, a) > 0 && compareStorePaths(a, a) === 0,
  );
});

const sha256 = (data: string | Uint8Array) =>
  new Uint8Array(createHash("sha256").update(data).digest());

Deno.test("content-addressed paths: upstream vectors", () => {
  assertEquals(
    textStorePath("foo", sha256("bar")).absolute(),
    "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo",
  );
  assertEquals(
    fixedOutputStorePath("bar", {
      algo: "sha1",
      digest: fromHex("0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33"),
      recursive: true,
    }).absolute(),
    "/nix/store/mp57d33657rf34lzvlbpfa1gjfv5gmpg-bar",
  );
  assertEquals(
    fixedOutputStorePath(
      "baz",
      {
        algo: "sha256",
        digest: nixbase32.decode("1xqkzcb3909fp07qngljr4wcdnrh1gdam1m2n29i6hhrxlmkgkv1"),
        recursive: true,
      },
      [StorePath.parseAbsolute("/nix/store/dxwkwjzdaq7ka55pkk252gh32bgpmql4-foo")],
    ).absolute(),
    "/nix/store/s89y431zzhmdn3k8r96rvakryddkpv2v-baz",
  );
});

Deno.test("content-addressed paths: the import worked examples", () => {
  const cases: [string, string, string][] = [
    [
      "0h40zg6hakjv951nyhdad7mv9za56m3za5gnpiw5s1hbwcxzdrq3",
      "hello",
      "n4hss129xrln71w0nss39bcx6hzsh9bg-hello",
    ],
    [
      "1wcwacrb5q36hpsx1shk0dkm26hwbmqmgi0nm973h9jqkdz3jz89",
      "symlink",
      "11i0w7x0adl6iyydsilpl0nc8v1zc2m4-symlink",
    ],
    [
      "06li2smqgskxxr291x1cgzf61rzm7c8f93bisnglq0nzm1wj5mgb",
      "complicated",
      "pngqdzggfqs4q7fg6iywqnlzcgsp85qr-complicated",
    ],
  ];
  for (const [narHash, name, basename] of cases) {
    assertEquals(caNarSha256StorePath(nixbase32.decode(narHash), name).basename(), basename);
  }
  assertThrows(() => caNarSha256StorePath(new Uint8Array(32), "a b"), StorePathError);
  assertThrows(() => caNarSha256StorePath(new Uint8Array(32), ""), StorePathError);
});

async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout).trim();
}

async function narSha256(path: string): Promise<Uint8Array> {
  const out = await new Deno.Command("nix-store", { args: ["--dump", path], stdout: "piped" })
    .output();
  assert(out.success, "nix-store --dump failed");
  return sha256(out.stdout);
}

Deno.test("content-addressed paths agree with nix-store --add", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const store = `${tmp}/store`;
    const content = `${tmp}/content`;
    await Deno.mkdir(`${content}/tree/sub`, { recursive: true });
    await Deno.writeTextFile(`${content}/tree/sub/file`, "some contents\n");
    await Deno.writeTextFile(`${content}/tree/.keep`, "");
    await Deno.symlink("/nix/store/somewhereelse", `${content}/tree/link`);
    await Deno.writeTextFile(`${content}/flat.txt`, "Hello World!");
    await Deno.chmod(`${content}/tree/sub/file`, 0o755);
    for (const entry of ["tree", "flat.txt"]) {
      const path = `${content}/${entry}`;
      const expected = await run("nix-store", ["--store", store, "--add", path]);
      assertEquals(caNarSha256StorePath(await narSha256(path), entry).absolute(), expected);
    }
    // Flat and non-sha256 fixed-output paths take the "output:out" route.
    const flat = `${content}/flat.txt`;
    const flatSha256 = sha256(await Deno.readFile(flat));
    assertEquals(
      fixedOutputStorePath("flat.txt", { algo: "sha256", digest: flatSha256, recursive: false })
        .absolute(),
      await run("nix-store", ["--store", store, "--add-fixed", "sha256", flat]),
    );
    const sha1 = new Uint8Array(createHash("sha1").update(await Deno.readFile(flat)).digest());
    assertEquals(
      fixedOutputStorePath("flat.txt", { algo: "sha1", digest: sha1, recursive: false }).absolute(),
      await run("nix-store", ["--store", store, "--add-fixed", "sha1", flat]),
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
