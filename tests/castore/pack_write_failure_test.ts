import { assert, assertEquals, assertMatch } from "../assert.ts";

const CHILD = new URL("./pack_write_failure_child.ts", import.meta.url).pathname;

/** Runs the child under a 1 MiB file size limit; returns its JSON report. */
async function runLimited(scenario: string): Promise<Record<string, unknown>> {
  const dir = await Deno.makeTempDir({ prefix: "pack-efbig-" });
  try {
    const out = await new Deno.Command("sh", {
      args: [
        "-c",
        'ulimit -f 1024; trap "" XFSZ; exec "$0" run -A "$1" "$2" "$3"',
        Deno.execPath(),
        CHILD,
        dir,
        scenario,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert(out.success, `child failed (${out.code}): ${stderr}`);
    return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("a failed pack write fails only its own upload; records staged with it and commits go on", async () => {
  const r = await runLimited("same-turn");
  assertMatch(String(r.big), /^failed: StorageError/);
  assertMatch(String(r.big), /File too large/);
  assertEquals(r.other, "ok");
  assertEquals(r.sync, "ok");
  assertEquals(r.syncAfter, "ok");
  assertEquals(r.otherStored, true);
  assertEquals(r.firstStored, true);
  assertEquals(r.close, "ok");
  assertEquals(r.unhandled, []);
});

Deno.test("a failed write to a pack garbage collection removed leaves the process running", async () => {
  const r = await runLimited("removed-pack");
  assertMatch(String(r.big), /^failed: StorageError/);
  assertMatch(String(r.sync), /^failed: StorageError/);
  assertMatch(String(r.sync), /garbage collected/);
  assertEquals(r.unhandled, []);
});
