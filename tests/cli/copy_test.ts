/**
 * `tvix-store copy` as a real process: an exportReferencesGraph JSON over
 * real `/nix/store` paths (added with `nix-store --add`, removed again
 * afterwards), against the embedded backends in a temp dir.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { localStoreArgs, tvixStore } from "./helpers.ts";
import { run, writeEdgeCaseTree } from "../store/tree_gen.ts";
import { pathInfoServiceFromUrl } from "../../src/store/pathinfo/from_url.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { renderNar } from "../../src/nar/render.ts";
import { compareStorePaths, StorePath } from "../../src/store/store_path.ts";
import * as nixbase32 from "../../src/store/nixbase32.ts";
import { collectBytes } from "../conformance/harness.ts";

const td = new TextDecoder();

interface Added {
  path: string;
  narHash: string;
  narSize: number;
}

/** Adds `local` to the real /nix/store and asks Nix for its hash and size. */
async function nixAdd(local: string): Promise<Added> {
  const path = td.decode(await run("nix-store", ["--add", local])).trim();
  const narHash = td.decode(await run("nix-store", ["-q", "--hash", path])).trim();
  const narSize = Number(td.decode(await run("nix-store", ["-q", "--size", path])).trim());
  return { path, narHash, narSize };
}

function graphJson(entries: (Added & { references: string[] })[]): string {
  return JSON.stringify({
    closure: entries.map((e) => ({
      closureSize: e.narSize,
      narHash: e.narHash,
      narSize: e.narSize,
      path: e.path,
      references: e.references,
      valid: true,
    })),
    outputs: { out: "/nix/store/ignored" },
  });
}

Deno.test("copy ingests a closure, verifies NAR hashes, skips present paths, refuses mismatches", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "h3-cli-copy-" });
  const added: Added[] = [];
  try {
    const tag = crypto.randomUUID(); // unique content: these store paths are ours alone
    const tree = join(tmp, "tree");
    await writeEdgeCaseTree(tree);
    await Deno.writeTextFile(join(tree, "tag"), tag);
    const lib = join(tmp, "lib");
    await Deno.writeTextFile(lib, `lib ${tag}`);
    const link = join(tmp, "link");
    await Deno.symlink(`/nix/store/${tag}`, link);
    const bad = join(tmp, "bad");
    await Deno.writeTextFile(bad, `bad ${tag}`);
    const [a, b, c, d] = [
      await nixAdd(tree),
      await nixAdd(lib),
      await nixAdd(link),
      await nixAdd(bad),
    ];
    added.push(a, b, c, d);

    const store = join(tmp, "store");
    const json = join(tmp, "attrs.json");
    // a → {c, b, a}, b → {c}, c → {}: references deliberately unsorted.
    await Deno.writeTextFile(
      json,
      graphJson([
        { ...a, references: [c.path, b.path, a.path] },
        { ...b, references: [c.path] },
        { ...c, references: [] },
      ]),
    );
    const r = await tvixStore(["copy", ...localStoreArgs(store), json]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.stdout, "");

    const args = localStoreArgs(store);
    const check = async (
      fn: (p: Awaited<ReturnType<typeof pathInfoServiceFromUrl>>) => Promise<void>,
    ) => {
      const pi = await pathInfoServiceFromUrl(args[5]);
      try {
        await fn(pi);
      } finally {
        await pi.close();
      }
    };
    const blob = await blobServiceFromUrl(args[1]);
    const dir = await directoryServiceFromUrl(args[3]);
    try {
      await check(async (pi) => {
        for (const [e, refs] of [[a, [a, b, c]], [b, [c]], [c, []]] as const) {
          const sp = StorePath.parseAbsolute(e.path);
          const info = await pi.get(sp.digest);
          assert(info?.narinfo && info.node?.node, `missing ${e.path}`);
          const sorted = refs.map((x) => StorePath.parseAbsolute(x.path)).sort(compareStorePaths);
          assertEquals(info.references, sorted.map((s) => s.digest));
          assertEquals(info.narinfo.referenceNames, sorted.map((s) => s.basename()));
          assertEquals(info.narinfo.narSize, BigInt(e.narSize));
          assertEquals("sha256:" + nixbase32.encode(info.narinfo.narSha256), e.narHash);
          assertEquals(info.narinfo.ca, undefined);
          assertEquals(td.decode(info.node.node.value.name), sp.basename());
          const nar = await run("nix-store", ["--dump", e.path]);
          assertEquals(await collectBytes(renderNar(info.node.node, blob, dir)), nar);
        }
      });
    } finally {
      await Promise.all([blob.close(), dir.close()]);
    }

    // Present paths are skipped: a wrong hash for `a` goes unnoticed, `d` is new and fine.
    const wrongA = { ...a, narHash: d.narHash, references: [] };
    await Deno.writeTextFile(json, graphJson([wrongA, { ...d, references: [] }]));
    const r2 = await tvixStore(["copy", ...localStoreArgs(store)], { NIX_ATTRS_JSON_FILE: json });
    assertEquals(r2.code, 0, r2.stderr);
    await check(async (pi) => assert(await pi.get(StorePath.parseAbsolute(d.path).digest)));

    // A mismatching narHash (or narSize) is refused, and nothing of that closure is stored.
    for (const mismatch of [{ narHash: b.narHash }, { narSize: d.narSize + 8 }]) {
      const fresh = join(tmp, `store-${crypto.randomUUID()}`);
      await Deno.writeTextFile(
        json,
        graphJson([{ ...c, references: [] }, { ...d, ...mismatch, references: [c.path] }]),
      );
      const r3 = await tvixStore(["copy", ...localStoreArgs(fresh), json]);
      assertEquals(r3.code, 1);
      assertEquals(r3.stdout, "");
      assert(r3.stderr.includes(d.path), r3.stderr);
      assert(r3.stderr.includes("mismatch"), r3.stderr);
      const freshArgs = localStoreArgs(fresh);
      const pi = await pathInfoServiceFromUrl(freshArgs[5]);
      try {
        for await (const info of pi.list()) {
          throw new Error(`stored ${info.node?.node?.value.name}`);
        }
      } finally {
        await pi.close();
      }
    }

    // A reference neither in the input nor in the store is refused before anything is stored...
    const partial = join(tmp, `store-${crypto.randomUUID()}`);
    await Deno.writeTextFile(json, graphJson([{ ...b, references: [c.path] }]));
    const r5 = await tvixStore(["copy", ...localStoreArgs(partial), json]);
    assertEquals(r5.code, 1);
    assert(
      r5.stderr.includes(`${b.path} refers to ${c.path}, which is neither in the input nor in`),
      r5.stderr,
    );
    const partialPi = await pathInfoServiceFromUrl(localStoreArgs(partial)[5]);
    try {
      for await (const info of partialPi.list()) {
        throw new Error(`stored ${info.node?.node?.value.name}`);
      }
    } finally {
      await partialPi.close();
    }
    // ...and one the store holds already is fine.
    await Deno.writeTextFile(json, graphJson([{ ...c, references: [] }]));
    assertEquals((await tvixStore(["copy", ...localStoreArgs(partial), json])).code, 0);
    await Deno.writeTextFile(json, graphJson([{ ...b, references: [c.path] }]));
    const r6 = await tvixStore(["copy", ...localStoreArgs(partial), json]);
    assertEquals(r6.code, 0, r6.stderr);

    // Malformed JSON is a clear error.
    await Deno.writeTextFile(json, JSON.stringify({ closure: [{ path: "/tmp/x" }] }));
    const r4 = await tvixStore(["copy", ...localStoreArgs(store), json]);
    assertEquals(r4.code, 1);
    assert(r4.stderr.includes("invalid exportReferencesGraph JSON"), r4.stderr);
  } finally {
    for (const x of added) {
      await new Deno.Command("nix-store", {
        args: ["--delete", x.path],
        stdout: "null",
        stderr: "null",
      })
        .output();
    }
    await Deno.remove(tmp, { recursive: true });
  }
});
