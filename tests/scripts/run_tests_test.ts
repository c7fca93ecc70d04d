/**
 * The test command itself (scripts/run_tests.sh, run by scripts/test.sh and
 * so by CI) on throw-away test directories: one failing test, or a test
 * file that does not even load, makes it exit non-zero; all passing, zero.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";

const SCRIPT = new URL("../../scripts/run_tests.sh", import.meta.url).pathname;

async function runTests(dir: string) {
  const out = await new Deno.Command("sh", {
    args: [SCRIPT, dir],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, output: dec.decode(out.stdout) + dec.decode(out.stderr) };
}

async function withTests(files: Record<string, string>, fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "tvix-run-tests-" });
  try {
    for (const [name, text] of Object.entries(files)) {
      await Deno.writeTextFile(join(dir, name), text);
    }
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const PASSING = `Deno.test("passes", () => {});\n`;
const FAILING = `Deno.test("fails", () => { throw new Error("deliberate"); });\n`;

Deno.test("run_tests.sh: one failing test makes it exit non-zero", () =>
  withTests({ "a_test.ts": PASSING, "b_test.ts": FAILING }, async (dir) => {
    const r = await runTests(dir);
    assertEquals(r.code, 1, r.output);
    assert(r.output.includes("tests: 1 passed, 1 failed"), r.output);
  }));

Deno.test("run_tests.sh: all passing exits 0", () =>
  withTests({ "a_test.ts": PASSING, "b_test.ts": PASSING }, async (dir) => {
    const r = await runTests(dir);
    assertEquals(r.code, 0, r.output);
    assert(r.output.includes("tests: 2 passed, 0 failed"), r.output);
  }));

Deno.test("run_tests.sh: a test file that does not load exits non-zero", () =>
  withTests({ "a_test.ts": PASSING, "b_test.ts": `Deno.test("x", () => {\n` }, async (dir) => {
    const r = await runTests(dir);
    assert(r.code !== 0, r.output);
  }));

Deno.test("run_tests.sh: a directory without tests exits non-zero", () =>
  withTests({ "not_a_test.ts": "export const x = 1;\n" }, async (dir) => {
    const r = await runTests(dir);
    assert(r.code !== 0, r.output);
  }));
