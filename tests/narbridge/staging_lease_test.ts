/**
 * Staged NAR uploads are released when their lease ends, by a timer: no
 * later request is needed to sweep them, and closing the staging area
 * releases everything.
 */
import { assertEquals } from "../assert.ts";
import { type StagedNar, Staging } from "../../src/narbridge/staging.ts";

const nar = (size: number): StagedNar => ({
  node: { $case: "symlink", value: { name: new Uint8Array(0), target: new Uint8Array([0x61]) } },
  narSize: BigInt(size),
  narSha256: new Uint8Array(32),
  fileSize: BigInt(size),
  fileSha256: new Uint8Array(32),
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("expired uploads leave the index without any further call", async () => {
  const released: string[] = [];
  const s = new Staging({ leaseMs: 300, onRelease: (path) => released.push(path) });
  try {
    s.put("/nar/a.nar", nar(1));
    await sleep(150);
    s.put("/nar/b.nar", nar(2));
    assertEquals(s.size, 2);
    await sleep(225); // a's lease ended 75 ms ago, b's ends in 75 ms
    assertEquals(s.size, 1);
    assertEquals(released, ["/nar/a.nar"]);
    await sleep(225);
    assertEquals(s.size, 0);
    assertEquals(released, ["/nar/a.nar", "/nar/b.nar"]);
  } finally {
    s.close();
  }
});

Deno.test("close() releases all and stops the timer", () => {
  const s = new Staging({ leaseMs: 60_000 });
  s.put("/a", nar(1));
  s.put("/b", nar(2));
  assertEquals(s.get("/b")?.narSize, 2n);
  s.close();
  assertEquals(s.size, 0);
  // A timer left running would fail this test (Deno's leak check).
});
