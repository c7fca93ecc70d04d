/**
 * The V8 setting `tvix-store` ships with (PRODUCT_V8_FLAGS in
 * scripts/support.ts; why: docs/architecture.md#runtime-settings): every
 * deno.json task that starts or packages the command passes it to Deno
 * (before main.ts, so Deno takes it, not the program), and this Deno
 * accepts it and caps the young generation with it.
 */
import { assert, assertEquals } from "../assert.ts";
import { PRODUCT_V8_FLAGS } from "../../scripts/support.ts";

const CONFIG = new URL("../../deno.json", import.meta.url);

Deno.test("v8 flags: start, install and compile pass the product's V8 setting to Deno", () => {
  const tasks = JSON.parse(Deno.readTextFileSync(CONFIG)).tasks as Record<string, string>;
  for (const name of ["start", "install", "compile"]) {
    const words = tasks[name].split(/\s+/);
    const flag = words.indexOf(`--v8-flags=${PRODUCT_V8_FLAGS}`);
    assert(flag > 0, `task ${name} lacks --v8-flags=${PRODUCT_V8_FLAGS}: ${tasks[name]}`);
    assert(flag < words.indexOf("main.ts"), `task ${name} passes the flag to main.ts, not Deno`);
  }
});

Deno.test("v8 flags: this Deno accepts the setting and it bounds the young generation", async () => {
  const newSpaceBytes = async (v8Flags: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        ...v8Flags,
        `import v8 from "node:v8";
         const keep = [];
         for (let i = 0; i < 200000; i++) keep.push({ i, s: "x" + i });
         const space = v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space");
         console.log(space.space_size, keep.length);`,
      ],
      // Overrides a DENO_V8_FLAGS in the environment (benchmarks set it),
      // which would cap the run without the flag too: 0 is V8's default.
      env: { DENO_V8_FLAGS: "--max-semi-space-size=0" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    return Number(new TextDecoder().decode(out.stdout).split(" ")[0]);
  };
  const capped = await newSpaceBytes([`--v8-flags=${PRODUCT_V8_FLAGS}`]);
  const uncapped = await newSpaceBytes([]);
  // Semi-spaces of 1 MiB: V8 reported 1.8-4.75 MiB of new space over 40
  // runs here (a bound of 4 MiB failed one CI run), where its default grows
  // it to 15 MiB for this much short-lived allocation.
  assert(capped > 0 && capped <= 6 << 20, `new space ${capped} bytes with the setting`);
  assert(uncapped > 2 * capped, `new space ${uncapped} bytes without it, ${capped} with`);
});
