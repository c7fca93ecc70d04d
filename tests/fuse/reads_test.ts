/**
 * Reads through the mount of a file spanning many chunks: whole and at
 * scattered offsets, by two Workers sharing a chunk cache too small for the
 * file (so slots are evicted and refilled while others are being sent
 * from), and again after the kernel dropped its pages (served from our
 * cache). Every byte must match the source. Also the `--cache-size` flag.
 */
import { pseudoRandom } from "../fixtures.ts";
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { blake3, toHex } from "../../src/castore/digest.ts";
import { parseCacheSize } from "../../src/cli/mount.ts";
import { addrFlags, run, runTvix, SKIP, startMount, tempStore } from "./harness.ts";

Deno.test("--cache-size parses sizes and rejects nonsense", () => {
  assertEquals(parseCacheSize("64M"), 64 << 20);
  assertEquals(parseCacheSize("2G"), 2 * 2 ** 30);
  assertEquals(parseCacheSize("1.5GiB"), 1.5 * 2 ** 30);
  assertEquals(parseCacheSize("1048576"), 1 << 20);
  for (const bad of ["", "abc", "-1G", "12X", "1K", "0"]) {
    let message = "";
    try {
      parseCacheSize(bad);
    } catch (err) {
      message = (err as Error).message;
    }
    assert(message.includes("invalid cache size"), `${bad}: ${message}`);
  }
});

Deno.test(
  { name: "mount: reads of a many-chunk file with a small shared cache", ignore: SKIP },
  async () => {
    const store = await tempStore();
    const src = await Deno.makeTempDir({ prefix: "tvix-fuse-reads-" });
    try {
      const data = pseudoRandom(24 << 20, 7); // ~96 chunks of ~256 KiB
      const file = join(src, "big");
      await Deno.writeFile(file, data);
      const imported = await runTvix(["import", file, ...addrFlags(store.addrs)]);
      assertEquals(imported.code, 0, imported.stderr);
      const name = imported.stdout.trim().slice("/nix/store/".length);

      const bad = await startMount({ addrs: store.addrs, args: ["--cache-size=lots"] }).then(
        (m) => m.stop().then(() => ""),
        (err) => (err as Error).message,
      );
      assert(bad.includes("invalid cache size"), bad);

      // 8 MiB shared: a third of the file, so the second pass evicts and refills.
      const m = await startMount({ addrs: store.addrs, args: ["--threads=2", "--cache-size=8M"] });
      try {
        const path = join(m.mountpoint, name);
        const want = toHex(blake3(data));
        for (let pass = 0; pass < 2; pass++) {
          assertEquals(toHex(blake3(await Deno.readFile(path))), want, `pass ${pass}`);
          // Drop the kernel's pages: the next pass asks us again.
          const drop = await run("dd", [`if=${path}`, "iflag=nocache", "count=0", "status=none"]);
          assertEquals(drop.code, 0, drop.stderr);
        }
        // Scattered reads, crossing chunk boundaries, from both ends.
        const f = await Deno.open(path);
        try {
          for (let i = 0; i < 64; i++) {
            const off = (i * 7919 * 4099) % (data.length - 300_000);
            const len = 1 + ((i * 104_729) % 300_000);
            const buf = new Uint8Array(len);
            await f.seek(off, Deno.SeekMode.Start);
            let got = 0;
            while (got < len) {
              const n = await f.read(buf.subarray(got));
              if (n === null) break;
              got += n;
            }
            assertEquals(got, len);
            assert(
              buf.every((b, j) => b === data[off + j]),
              `bytes differ at offset ${off} (+${len})`,
            );
          }
        } finally {
          f.close();
        }
        assertEquals((await m.stop()).code, 0, m.log());
      } finally {
        await m.stop();
      }
    } finally {
      await Deno.remove(src, { recursive: true });
      await store.remove();
    }
  },
);
