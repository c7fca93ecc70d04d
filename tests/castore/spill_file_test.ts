import { assert, assertEquals } from "../assert.ts";
import { SpillFile } from "../../src/castore/blob/spill_file.ts";
import { concat } from "../conformance/harness.ts";
import { pseudoRandom } from "../fixtures.ts";

Deno.test("spill file: what is appended reads back from any offset, and no file is left behind", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tvix-spill-" });
  const before = Deno.env.get("TMPDIR");
  Deno.env.set("TMPDIR", dir);
  try {
    const spill = SpillFile.create();
    // Unlinked at once: the directory shows nothing even while it is in use.
    assertEquals([...Deno.readDirSync(dir)].length, 0);
    const data = pseudoRandom((3 << 20) + 12345, 5);
    for (let at = 0; at < data.length; at += 700_000) spill.append(data.subarray(at, at + 700_000));
    assertEquals(spill.size, data.length);
    for (const offset of [0, 1, 1 << 20, data.length - 1, data.length]) {
      const pieces = await Array.fromAsync(spill.readFrom(offset));
      assert(pieces.every((p) => p.length <= 1 << 20), "pieces of at most 1 MiB");
      assertEquals(concat(pieces), data.subarray(offset), `from ${offset}`);
    }
    spill.close();
    spill.close();
  } finally {
    if (before === undefined) Deno.env.delete("TMPDIR");
    else Deno.env.set("TMPDIR", before);
    await Deno.remove(dir, { recursive: true });
  }
});
