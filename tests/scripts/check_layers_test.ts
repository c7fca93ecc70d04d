/**
 * The layering check of `deno task check` (scripts/check_layers.ts): the
 * real tree passes, and a fixture that adds one import closing a cycle
 * between two folders makes the script fail, naming that import.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { checkLayers, relativeSpecifiers } from "../../scripts/check_layers.ts";

const SCRIPT = new URL("../../scripts/check_layers.ts", import.meta.url).pathname;
const SRC = new URL("../../src", import.meta.url).pathname;

async function runCheck(dir: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", SCRIPT, dir],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("check_layers: finds static, type, re-export, side-effect, dynamic and Worker imports", () => {
  const source = [
    `import { a } from "./a.ts";`,
    `import type {`,
    `  B,`,
    `} from "../b/b.ts";`,
    `export { c } from "../c.ts";`,
    `import "../d/side.ts";`,
    `const e = await import("../e/lazy.ts");`,
    `new Worker(new URL("../f/worker.ts", import.meta.url), { type: "module" });`,
    `import { g } from "npm:g";`,
    ` * import { h } from "../h/in_a_comment.ts";`,
  ].join("\n");
  assertEquals(relativeSpecifiers(source).sort(), [
    "../b/b.ts",
    "../c.ts",
    "../d/side.ts",
    "../e/lazy.ts",
    "../f/worker.ts",
    "./a.ts",
  ]);
});

Deno.test("check_layers: src/ is layered", async () => {
  const report = checkLayers(SRC);
  assertEquals(report.cycles, []);
  // The layers the docs describe, bottom-up.
  const pos = (u: string) => report.order.indexOf(u);
  for (const [lower, upper] of [["castore", "nar"], ["nar", "store"], ["store", "cli"]]) {
    assert(pos(lower) < pos(upper), `${lower} should be below ${upper}: ${report.order}`);
  }
  const r = await runCheck(SRC);
  assertEquals(r.code, 0, r.stderr);
  assert(r.stdout.includes("layers ok"), r.stdout);
});

Deno.test("check_layers: one import closing a cycle between folders fails the check", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tvix-layers-" });
  try {
    const copy = join(dir, "src");
    await new Deno.Command("cp", { args: ["-r", SRC, copy] }).output();
    // castore is the bottom layer; cli sits on top and imports it.
    await Deno.writeTextFile(
      join(copy, "castore", "cycle_fixture.ts"),
      `import { registerSubcommands } from "../cli/subcommands.ts";\nexport const x = registerSubcommands;\n`,
    );
    const r = await runCheck(copy);
    assertEquals(r.code, 1, r.stdout);
    assert(r.stderr.includes("import cycle between"), r.stderr);
    assert(
      r.stderr.includes(`castore → cli: castore/cycle_fixture.ts imports "../cli/subcommands.ts"`),
      r.stderr,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
