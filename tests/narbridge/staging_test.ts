/** Staged NAR uploads: expiry and the bound on their number. */
import { assertEquals } from "../assert.ts";
import { type StagedNar, Staging } from "../../src/narbridge/staging.ts";

const nar = (size: number): StagedNar => ({
  node: { $case: "symlink", value: { name: new Uint8Array(0), target: new Uint8Array([0x61]) } },
  narSize: BigInt(size),
  narSha256: new Uint8Array(32),
  fileSize: BigInt(size),
  fileSha256: new Uint8Array(32),
});

// Explicit clocks far in the past: the lease timer (real time) is closed before it could fire.

Deno.test("staged uploads expire after the lease", () => {
  const s = new Staging({ leaseMs: 1000, maxEntries: 10 });
  s.put("/nar/a.nar", nar(1), 0);
  assertEquals(s.get("/nar/a.nar", 999)?.narSize, 1n);
  assertEquals(s.get("/nar/a.nar", 1000), undefined);
  assertEquals(s.size, 0);
  s.close();
});

Deno.test("re-uploading replaces and refreshes; the oldest go first past the bound", () => {
  const s = new Staging({ leaseMs: 1000, maxEntries: 2 });
  s.put("/a", nar(1), 0);
  s.put("/b", nar(2), 1);
  s.put("/a", nar(3), 2); // refreshed: now the newest
  s.put("/c", nar(4), 3); // over the bound: /b (oldest) is dropped
  assertEquals(s.size, 2);
  assertEquals(s.get("/b", 3), undefined);
  assertEquals(s.get("/a", 3)?.narSize, 3n);
  assertEquals(s.get("/c", 3)?.narSize, 4n);
  // Expired entries are swept on the next put.
  s.put("/d", nar(5), 1002);
  assertEquals(s.size, 2);
  assertEquals(s.get("/a", 1002)?.narSize, undefined);
  assertEquals(s.get("/c", 1002)?.narSize, 4n);
  s.close();
});
