/**
 * Test helper process: writes `count` small closures tagged `tag` into the
 * SQLite directory database at `path`, then prints their root digests (hex),
 * one per line. Used to check that processes can share a database file.
 *
 * Usage: deno run -A sqlite_writer.ts <path> <tag> <count>
 *
 * @module
 */
import { toHex } from "../../src/castore/digest.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import { SqliteDirectoryService } from "../../src/castore/directory/sqlite.ts";
import type { Directory } from "../../src/castore/directory.ts";

/** A two-level closure unique to (tag, i): a leaf and its parent, leaves first. */
export function taggedClosure(tag: string, i: number): Directory[] {
  const te = new TextEncoder();
  const leaf: Directory = {
    directories: [],
    files: [],
    symlinks: [{ name: te.encode("l"), target: te.encode(`${tag}-${i}`) }],
  };
  const root: Directory = {
    directories: [{ name: te.encode("leaf"), digest: directoryDigest(leaf), size: 1n }],
    files: [],
    symlinks: [],
  };
  return [leaf, root];
}

if (import.meta.main) {
  const [path, tag, count] = Deno.args;
  const service = new SqliteDirectoryService(path);
  const roots: string[] = [];
  for (let i = 0; i < Number(count); i++) {
    const putter = service.putMultiple();
    for (const d of taggedClosure(tag, i)) await putter.put(d);
    roots.push(toHex(await putter.close()));
  }
  await service.close();
  console.log(roots.join("\n"));
}
