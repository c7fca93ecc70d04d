/**
 * What the read-path tests share: a tree with a blob of many chunks (raw and
 * zstd-compressed ones) and many small files, imported into an embedded pack
 * store by a real `tvix-store import`, its `nix-store --dump` bytes, and a
 * way to damage one chunk in the pack files behind the store's back.
 *
 * @module
 */
import { join } from "node:path";
import { blake3, bytesEqual, type Digest } from "../../src/castore/digest.ts";
import { chunkLengths } from "../../src/castore/blob/fastcdc.ts";
import { RECORD_HEADER, RECORD_MAGIC } from "../../src/castore/blob/pack.ts";
import { localStoreArgs } from "../cli/helpers.ts";
import { tvixStore } from "../narbridge/harness.ts";
import { pseudoRandom } from "../fixtures.ts";
import { assert } from "../assert.ts";

/** Files of the many-small-files part of the tree. */
export const SMALL_FILES = 600;

/** An imported tree and what to compare reads against. */
export interface ReadPathTree {
  /** Temp dir holding the tree (`tree/`) and the embedded store (`store/`). */
  dir: string;
  /** The embedded store's home (pass to `localStoreArgs`). */
  store: string;
  /** Path of the source tree. */
  tree: string;
  /** The imported store path. */
  storePath: string;
  /** `nix-store --dump` of the tree. */
  nar: Uint8Array;
  /** `big.bin`: 6 MiB, half random (raw chunks), half compressible (zstd chunks). */
  big: Uint8Array;
  /** Contents of `small/fNNN` by index. */
  small: Uint8Array[];
  /** Removes the temp dir. */
  remove(): Promise<void>;
}

function compressible(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  const words = new TextEncoder().encode("lorem ipsum dolor sit amet consectetur ");
  let x = seed;
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = (x >>> 28) === 0 ? 48 + (x >>> 20) % 10 : words[i % words.length];
  }
  return out;
}

/** Builds the tree, imports it into a fresh pack store and dumps it with Nix. */
export async function importedTree(): Promise<ReadPathTree> {
  const dir = await Deno.makeTempDir({ prefix: "readpath-" });
  const tree = join(dir, "tree");
  const store = join(dir, "store");
  await Deno.mkdir(join(tree, "small"), { recursive: true });
  await Deno.mkdir(join(tree, "sub", "empty"), { recursive: true });
  await Deno.writeTextFile(join(tree, "a.txt"), "first file\n");
  const big = new Uint8Array(6 << 20);
  big.set(pseudoRandom(3 << 20, 7), 0);
  big.set(compressible(3 << 20, 11), 3 << 20);
  await Deno.writeFile(join(tree, "big.bin"), big);
  const small: Uint8Array[] = [];
  for (let i = 0; i < SMALL_FILES; i++) {
    const data = pseudoRandom(100 + (i * 37) % 3000, 1000 + i);
    small.push(data);
    await Deno.writeFile(join(tree, "small", `f${String(i).padStart(3, "0")}`), data);
  }
  await Deno.writeTextFile(join(tree, "sub", "run.sh"), "#!/bin/sh\necho hi\n", { mode: 0o755 });
  await Deno.symlink("../a.txt", join(tree, "sub", "link"));
  const storePath = (await tvixStore(["import", ...localStoreArgs(store), tree])).trim();
  const dump = await new Deno.Command("nix-store", { args: ["--dump", tree] }).output();
  assert(dump.success, new TextDecoder().decode(dump.stderr));
  return {
    dir,
    store,
    tree,
    storePath,
    nar: dump.stdout,
    big,
    small,
    remove: () => Deno.remove(dir, { recursive: true }),
  };
}

/** The FastCDC chunks of `data` as the store cuts them: offset, length and digest. */
export function chunksOf(data: Uint8Array): { offset: number; length: number; digest: Digest }[] {
  const out = [];
  let offset = 0;
  for (const length of chunkLengths(data)) {
    out.push({ offset, length, digest: blake3(data.subarray(offset, offset + length)) });
    offset += length;
  }
  return out;
}

/**
 * Flips one byte of the stored bytes of chunk `digest` in the pack files
 * under `store` (behind the store's back: the index still points there).
 */
export async function corruptChunk(store: string, digest: Digest): Promise<void> {
  const packs = join(store, "packs");
  for await (const e of Deno.readDir(packs)) {
    if (!e.name.endsWith(".pack")) continue;
    const path = join(packs, e.name);
    const bytes = await Deno.readFile(path);
    for (
      let at = bytes.indexOf(RECORD_MAGIC[0]);
      at >= 0;
      at = bytes.indexOf(RECORD_MAGIC[0], at + 1)
    ) {
      if (!bytesEqual(bytes.subarray(at, at + 4), RECORD_MAGIC)) continue;
      if (!bytesEqual(bytes.subarray(at + 16, at + 48), digest)) continue;
      const stored = new DataView(bytes.buffer, at + 12, 4).getUint32(0, true);
      const pos = at + RECORD_HEADER + Math.floor(stored / 2);
      const f = await Deno.open(path, { write: true });
      try {
        await f.seek(pos, Deno.SeekMode.Start);
        await f.write(new Uint8Array([bytes[pos] ^ 0x55]));
      } finally {
        f.close();
      }
      return;
    }
  }
  throw new Error(`chunk ${digest} not found in any pack under ${packs}`);
}

/** Where `needle` first occurs in `haystack` (for locating file contents in a NAR). */
export function indexOfBytes(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = haystack.indexOf(needle[0]); i >= 0; i = haystack.indexOf(needle[0], i + 1)) {
    for (let j = 1; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
