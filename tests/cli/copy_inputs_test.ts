/**
 * `tvix-store copy` fed what Nix prints: `nix path-info --json --recursive`
 * (Nix 2.8's array with SRI hashes, from a file and from stdin; the object
 * keyed by path that later Nix prints, with `sha256:` nixbase32 or hex
 * hashes) for a real closure with references (a derivation and the file it
 * refers to, made by `nix-instantiate`, removed afterwards); and input that
 * is none of these, which must fail in one line and write nothing.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../assert.ts";
import { childEnv, localStoreArgs, MAIN, tvixStore } from "./helpers.ts";
import { run } from "../store/tree_gen.ts";
import { pathInfoServiceFromUrl } from "../../src/store/pathinfo/from_url.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { renderNar } from "../../src/nar/render.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { toHex } from "../../src/castore/digest.ts";
import * as nixbase32 from "../../src/store/nixbase32.ts";
import { collectBytes } from "../conformance/harness.ts";

const td = new TextDecoder();
const NIX = ["--extra-experimental-features", "nix-command"];

/** One path object of `nix path-info --json`. */
interface PathInfoJson {
  path: string;
  narHash: string;
  narSize: number;
  references: string[];
  [key: string]: unknown;
}

/** Runs `tvix-store ARGS` with `stdin` as its standard input. */
async function tvixStoreWithStdin(args: string[], stdin: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: childEnv(),
    clearEnv: true,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(stdin));
  await writer.close();
  const out = await child.output();
  return { code: out.code, stdout: td.decode(out.stdout), stderr: td.decode(out.stderr) };
}

/** Checks that `store` holds exactly `closure`, as Nix describes it, with Nix's NARs. */
async function assertStoreHolds(store: string, closure: PathInfoJson[]): Promise<void> {
  const args = localStoreArgs(store);
  const [blob, dir, pi] = await Promise.all([
    blobServiceFromUrl(args[1]),
    directoryServiceFromUrl(args[3]),
    pathInfoServiceFromUrl(args[5]),
  ]);
  try {
    let count = 0;
    for await (const _ of pi.list()) count++;
    assertEquals(count, closure.length);
    for (const e of closure) {
      const info = await pi.get(StorePath.parseAbsolute(e.path).digest);
      assert(info?.narinfo && info.node?.node, `missing ${e.path}`);
      assertEquals(info.narinfo.referenceNames, e.references.map((r) => r.split("/").pop()).sort());
      assertEquals(info.narinfo.narSize, BigInt(e.narSize));
      const nixHash = td.decode(await run("nix-store", ["-q", "--hash", e.path])).trim();
      assertEquals(`sha256:${nixbase32.encode(info.narinfo.narSha256)}`, nixHash);
      const nar = await run("nix-store", ["--dump", e.path]);
      assertEquals(await collectBytes(renderNar(info.node.node, blob, dir)), nar);
    }
  } finally {
    await Promise.all([blob.close(), dir.close(), pi.close()]);
  }
}

Deno.test("copy reads nix path-info JSON in every form Nix prints, from a file or stdin", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-copy-inputs-" });
  const tag = crypto.randomUUID().slice(0, 8); // these store paths are ours alone
  const expr = `derivation { name = "tvix-copy-${tag}"; system = "x86_64-linux"; ` +
    `builder = builtins.toFile "tvix-copy-builder-${tag}" "${tag}"; }`;
  const drv = td.decode(await run("nix-instantiate", ["-E", expr])).trim();
  const builderFile = td.decode(await run("nix-store", ["-q", "--references", drv])).trim();
  try {
    const printed = td.decode(
      await run("nix", [...NIX, "path-info", "--json", "--recursive", "--derivation", drv]),
    );
    const closure: PathInfoJson[] = JSON.parse(printed);
    // A real closure: the derivation refers to the builder file; Nix 2.8 prints SRI hashes.
    assertEquals(closure.length, 2);
    const builder = closure.find((e) => e.path !== drv)!;
    assertEquals(closure.find((e) => e.path === drv)?.references, [builder.path]);
    assert(closure.every((e) => e.narHash.startsWith("sha256-")), printed);

    // From a file.
    const file = join(tmp, "closure.json");
    await Deno.writeTextFile(file, printed);
    const a = join(tmp, "a");
    const r = await tvixStore(["copy", ...localStoreArgs(a), file]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.stdout, "");
    assertMatch(r.stderr, /^copied 2 paths \([\d.]+ (B|KiB)\), 0 already present\n$/);
    await assertStoreHolds(a, closure);
    // Again: nothing to do, and it says so.
    const again = await tvixStore(["copy", ...localStoreArgs(a), file]);
    assertEquals([again.code, again.stderr], [0, "copied 0 paths, 2 already present\n"]);

    // From stdin.
    const b = join(tmp, "b");
    const piped = await tvixStoreWithStdin(["copy", ...localStoreArgs(b), "-"], printed);
    assertEquals(piped.code, 0, piped.stderr);
    await assertStoreHolds(b, closure);

    // Later Nix: an object keyed by path; hashes as sha256:<nixbase32>, or hex.
    for (const encoding of ["nixbase32", "hex"] as const) {
      const keyed: Record<string, unknown> = {};
      for (const { path, ...rest } of closure) {
        const nix32 = td.decode(await run("nix-store", ["-q", "--hash", path])).trim();
        const digest = nixbase32.decode(nix32.slice("sha256:".length));
        keyed[path] = {
          ...rest,
          narHash: encoding === "hex" ? `sha256:${toHex(digest)}` : nix32,
        };
      }
      const store = join(tmp, encoding);
      const out = await tvixStoreWithStdin(
        ["copy", "--quiet", ...localStoreArgs(store), "-"],
        JSON.stringify(keyed),
      );
      assertEquals([out.code, out.stderr], [0, ""], encoding);
      await assertStoreHolds(store, closure);
    }
  } finally {
    for (const p of [drv, builderFile]) {
      await new Deno.Command("nix-store", { args: ["--delete", p], stdout: "null", stderr: "null" })
        .output();
    }
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("copy refuses input that is no closure in one line, and writes nothing", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-copy-inputs-" });
  try {
    const valid = "/nix/store/00000000000000000000000000000000-x";
    const cases: [string, RegExp][] = [
      ["hello, world", /^error: stdin is not JSON \(.*\): expected the output of `nix path-info/],
      ['{"foo": 1}', /^error: not a closure: expected the output of `nix path-info --json/],
      ["42", /^error: not a closure: /],
      ["[1]", /^error: invalid nix path-info JSON: \[0\] is not an object\n$/],
      [
        JSON.stringify([{ path: valid, narHash: "md5:abc", narSize: 1, references: [] }]),
        /^error: invalid nix path-info JSON: \[0\]: narHash "md5:abc" is not a SHA-256/,
      ],
      [
        JSON.stringify({ [valid]: null }),
        /^error: invalid nix path-info JSON: \/nix\/store\/0+-x is not a valid path/,
      ],
      [
        JSON.stringify({ closure: [{ path: "/tmp/x", narSize: 1, references: [] }] }),
        /^error: invalid exportReferencesGraph JSON: closure\[0\]: narHash/,
      ],
    ];
    for (const [input, expected] of cases) {
      const store = join(tmp, "store");
      const r = await tvixStoreWithStdin(["copy", ...localStoreArgs(store), "-"], input);
      assertEquals(r.code, 1, input);
      assertEquals(r.stdout, "");
      assertEquals(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
      assertMatch(r.stderr, expected);
      // Nothing was written: the store was not even created.
      assertEquals(await Deno.stat(store).then(() => true, () => false), false, input);
    }

    // No input named: one line saying what to give.
    const none = await tvixStore(["copy", ...localStoreArgs(join(tmp, "store"))]);
    assertEquals(none.code, 1);
    assertEquals(none.stderr.trimEnd().split("\n").length, 1, none.stderr);
    assert(none.stderr.includes("path-info --json --recursive PATH | tvix-store copy -"));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
