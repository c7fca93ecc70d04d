/**
 * `Range` requests on NARs served by a real `tvix-store nar-bridge` over an
 * embedded pack store, checked byte for byte against `nix-store --dump`:
 * ranges at the start, middle and end, across chunk and file boundaries,
 * suffix and open ranges, and the RFC 9110 answers to malformed and
 * unsatisfiable ones (docs/compatibility.md#nar-ranges).
 */
import { assert, assertEquals } from "../assert.ts";
import { localStoreArgs } from "../cli/helpers.ts";
import { startServer } from "../narbridge/harness.ts";
import { chunksOf, importedTree, indexOfBytes } from "./fixture.ts";

Deno.test("NAR ranges match nix-store --dump, wherever they start and end", async () => {
  const t = await importedTree();
  const bridge = await startServer(["nar-bridge", "-l", "127.0.0.1:0", ...localStoreArgs(t.store)]);
  try {
    const base = `http://${bridge.address}`;
    const hash = t.storePath.slice("/nix/store/".length, "/nix/store/".length + 32);
    const narinfo = await (await fetch(`${base}/${hash}.narinfo`)).text();
    const url = `${base}/${/^URL: (\S+)$/m.exec(narinfo)![1]}`;
    const nar = t.nar;
    const n = nar.length;
    assertEquals(/^NarSize: (\d+)$/m.exec(narinfo)![1], String(n));

    const get = async (range?: string) => {
      const res = await fetch(url, { headers: range === undefined ? {} : { range } });
      return { res, body: new Uint8Array(await res.arrayBuffer()) };
    };
    const expectRange = async (range: string, start: number, end: number) => {
      const { res, body } = await get(range);
      assertEquals(res.status, 206, range);
      assertEquals(res.headers.get("content-range"), `bytes ${start}-${end}/${n}`, range);
      assertEquals(res.headers.get("content-length"), String(end - start + 1), range);
      assert(body.length === end - start + 1, `${range}: ${body.length} bytes`);
      assertEquals(body, nar.subarray(start, end + 1), range);
    };

    // Start, middle, end of the NAR.
    await expectRange("bytes=0-0", 0, 0);
    await expectRange("bytes=0-99", 0, 99);
    await expectRange(`bytes=${n >> 1}-${(n >> 1) + 5000}`, n >> 1, (n >> 1) + 5000);
    await expectRange(`bytes=${n - 1}-${n - 1}`, n - 1, n - 1);
    // Open and suffix ranges, and ends past the NAR's end (clamped).
    await expectRange(`bytes=${n - 70000}-`, n - 70000, n - 1);
    await expectRange("bytes=-1", n - 1, n - 1);
    await expectRange("bytes=-12345", n - 12345, n - 1);
    await expectRange(`bytes=-${n + 10}`, 0, n - 1);
    await expectRange(`bytes=17-${n + 100}`, 17, n - 1);

    // Inside big.bin: every chunk boundary, crossed by a range starting
    // inside one chunk and ending inside the next (raw and zstd chunks).
    const big = indexOfBytes(nar, t.big.subarray(0, 64));
    assert(big > 0);
    const chunks = chunksOf(t.big);
    assert(chunks.length >= 12, `${chunks.length} chunks`);
    for (const c of chunks.slice(1)) {
      const at = big + c.offset;
      await expectRange(`bytes=${at - 1000}-${at + 999}`, at - 1000, at + 999);
    }
    // Exactly on a boundary, and a range spanning several whole chunks.
    const c5 = big + chunks[5].offset;
    await expectRange(`bytes=${c5}-${c5 + 10}`, c5, c5 + 10);
    await expectRange(`bytes=${big + 5}-${big + (2 << 20)}`, big + 5, big + (2 << 20));
    // From inside big.bin across its padding and the next entries' tokens.
    const bigEnd = big + t.big.length;
    await expectRange(`bytes=${bigEnd - 100}-${bigEnd + 400}`, bigEnd - 100, bigEnd + 400);

    // Across file boundaries in the many-small-files part: from inside one
    // file to inside another several files later, and from a token.
    const f10 = indexOfBytes(nar, t.small[10]);
    const f14 = indexOfBytes(nar, t.small[14]);
    assert(f10 > 0 && f14 > f10);
    await expectRange(`bytes=${f10 + 3}-${f14 + 7}`, f10 + 3, f14 + 7);
    await expectRange(`bytes=${f10 - 40}-${f10 + 1}`, f10 - 40, f10 + 1);
    await expectRange(`bytes=${f10 + t.small[10].length}-`, f10 + t.small[10].length, n - 1);

    // Malformed or multiple ranges are ignored (RFC 9110 §14.2): the whole NAR, 200.
    for (
      const range of [
        "bytes=abc",
        "bytes=5-3",
        "bytes=0-1,5-6",
        "items=0-5",
        "bytes=-",
        "bytes 0-5",
      ]
    ) {
      const { res, body } = await get(range);
      assertEquals(res.status, 200, range);
      assertEquals(res.headers.get("content-range"), null, range);
      assertEquals(body, nar, range);
    }
    // Unsatisfiable: 416 with the length.
    for (const range of [`bytes=${n}-`, `bytes=${n + 5}-${n + 10}`, "bytes=-0"]) {
      const { res, body } = await get(range);
      assertEquals(res.status, 416, range);
      assertEquals(res.headers.get("content-range"), `bytes */${n}`, range);
      assertEquals(body.length, 0, range);
    }
    // HEAD of a range: the headers only.
    const head = await fetch(url, { method: "HEAD", headers: { range: "bytes=10-19" } });
    assertEquals(head.status, 206);
    assertEquals(head.headers.get("content-length"), "10");
    await head.body?.cancel();

    // Compressed NARs have no ranges: the whole zstd body, 200, whatever the header.
    const zst = await fetch(`${url}.zst`, { headers: { range: "bytes=0-9" } });
    assertEquals(zst.status, 200);
    assertEquals(zst.headers.get("accept-ranges"), null);
    assertEquals(zst.headers.get("content-range"), null);
    const z = new Uint8Array(await zst.arrayBuffer());
    const { zstdDecompressSync } = await import("node:zlib");
    assertEquals(new Uint8Array(zstdDecompressSync(z)), nar);
    // xz is not served at all (only .nar and .nar.zst URLs exist).
    const xz = await fetch(`${url}.xz`, { headers: { range: "bytes=0-9" } });
    assertEquals(xz.status, 404);
    await xz.body?.cancel();
  } finally {
    await bridge.stop();
    await t.remove();
  }
});
