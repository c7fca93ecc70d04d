/**
 * Child of pack_writeback_test.ts: writes one blob of `MIB` MiB of
 * incompressible bytes into a pack store at `DIR` and commits it, then
 * prints the blob's digest in hex.
 *
 * Usage: `pack_writeback_child.ts DIR MIB`
 */
import { PackBlobService } from "../../src/castore/blob/pack.ts";
import { toHex } from "../../src/castore/digest.ts";

const [dir, mib] = [Deno.args[0], Number(Deno.args[1])];
const store = new PackBlobService(dir);
const writer = store.openWrite();
// Incompressible, so the pack grows by as many bytes as are written.
const piece = new Uint8Array(1024 * 1024);
for (let i = 0; i < mib; i++) {
  // (getRandomValues fills at most 64 KiB per call.)
  for (let o = 0; o < piece.length; o += 65536) {
    crypto.getRandomValues(piece.subarray(o, o + 65536));
  }
  await writer.write(piece);
}
const digest = await writer.close();
await store.sync([digest]);
await store.close();
console.log(toHex(digest));
