/**
 * What the store management tests share: trees written from contents,
 * what Nix makes of them, the pack bytes of an embedded store, and the
 * check that every stored path renders exactly as `nix-store --dump`.
 *
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { tvixStore } from "./helpers.ts";
import { constructServices, embeddedAddrs } from "../../src/store/services.ts";
import { renderNar } from "../../src/nar/render.ts";
import { caNarSha256StorePath, StorePath } from "../../src/store/store_path.ts";
import { nixOracle } from "../store/tree_gen.ts";
import { collectBytes } from "../conformance/harness.ts";
import { bytesEqual } from "../../src/castore/digest.ts";

/** Writes a tree of `files` (name → contents); returns its path. */
export async function tree(root: string, files: Record<string, Uint8Array>): Promise<string> {
  for (const [name, data] of Object.entries(files)) {
    const path = join(root, name);
    await Deno.mkdir(join(path, ".."), { recursive: true });
    await Deno.writeFile(path, data);
  }
  return root;
}

/** The store path `nix-store --add` gives `path`, and its NAR. */
export async function expected(path: string): Promise<{ storePath: string; nar: Uint8Array }> {
  const nix = await nixOracle(path);
  const name = path.split("/").pop()!;
  return { storePath: caNarSha256StorePath(nix.narSha256, name).absolute(), nar: nix.nar };
}

/** Runs `tvix-store ARGS…`, which must succeed; returns its stdout. */
export async function ok(args: string[]): Promise<string> {
  const r = await tvixStore(args);
  assertEquals(r.code, 0, `tvix-store ${args.join(" ")}:\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Bytes of all pack files of the embedded store at `store`. */
export function packBytes(store: string): number {
  let n = 0;
  for (const e of Deno.readDirSync(join(store, "packs"))) {
    if (e.name.endsWith(".pack")) n += Deno.statSync(join(store, "packs", e.name)).size;
  }
  return n;
}

/** Every stored path renders to exactly `nars[path]`; returns how many paths there are. */
export async function checkNars(store: string, nars: Map<string, Uint8Array>): Promise<number> {
  const s = await constructServices(embeddedAddrs(store));
  try {
    let n = 0;
    for await (const info of s.pathInfo.list()) {
      n++;
      const path = StorePath.parseBasenameBytes(info.node!.node!.value.name).absolute();
      const want = nars.get(path);
      assert(want, `unexpected path ${path}`);
      const got = await collectBytes(renderNar(info.node!.node!, s.blob, s.directory));
      assert(bytesEqual(got, want), `${path} renders differently from nix-store --dump`);
    }
    return n;
  } finally {
    await s.close();
  }
}
