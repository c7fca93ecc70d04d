/**
 * What `import` and `copy` show on a terminal (a pseudo-terminal, see
 * pty.ts): a progress line in bytes, of how many, with rate and time left,
 * erased when done; nothing with `--quiet` or when stderr is no terminal;
 * and after Ctrl-C one line `interrupted`, exit status 130, and no store
 * path for the interrupted import.
 *
 * The workload is a sparse file of zeros: reading and chunking it takes
 * seconds, storing it takes almost no space (its chunks are all the same).
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../assert.ts";
import { childEnv, localStoreArgs, MAIN, tvixStore } from "./helpers.ts";
import { runOnPty, screenLines } from "./pty.ts";
import { run } from "../store/tree_gen.ts";

const GiB = 1 << 30;
const td = new TextDecoder();

/** A sparse file of `size` zero bytes. */
async function zeros(path: string, size: number): Promise<string> {
  await Deno.writeFile(path, new Uint8Array());
  await Deno.truncate(path, size);
  return path;
}

const STORE_PATH = /^\/nix\/store\/[0-9a-z]{32}-[^/]+$/;
/** A drawn progress line: bytes of the total (percent), rate, time left. */
const PROGRESS =
  /(importing|copying) [\d.]+ (B|KiB|MiB|GiB) of [\d.]+ (MiB|GiB) \(\d+%\), [\d.]+ (B|KiB|MiB|GiB)\/s, \d+:\d\d left/;

Deno.test("import on a terminal: bytes, rate and time left, erased at the end; --quiet: none", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-progress-" });
  try {
    const file = await zeros(join(tmp, "zeros"), GiB);
    const cmd = [Deno.execPath(), "run", "-A", MAIN, "import", "--no-stat-cache"];
    const r = await runOnPty([...cmd, ...localStoreArgs(join(tmp, "a")), file]);
    assertEquals(r.code, 0, r.output);
    assertMatch(r.output, PROGRESS);
    assert(r.output.includes(" of 1.0 GiB ("), r.output);
    // Erased: the screen shows the store path alone.
    const screen = screenLines(r.output).filter((l) => l.trim() !== "");
    assertEquals(screen.length, 1, JSON.stringify(r.output));
    assertMatch(screen[0], STORE_PATH);

    // Half the size still takes long enough to draw, were it not for --quiet.
    const half = await zeros(join(tmp, "half"), GiB / 2);
    const quiet = await runOnPty([...cmd, "--quiet", ...localStoreArgs(join(tmp, "b")), half]);
    assertEquals(quiet.code, 0, quiet.output);
    assert(!quiet.output.includes("importing"), quiet.output);
    const quietScreen = screenLines(quiet.output).filter((l) => l.trim() !== "");
    assertEquals(quietScreen.length, 1, JSON.stringify(quiet.output));
    assertMatch(quietScreen[0], STORE_PATH);

    // stderr into a pipe: nothing but errors.
    const piped = await tvixStore([
      "import",
      "--no-stat-cache",
      ...localStoreArgs(join(tmp, "c")),
      half,
    ]);
    assertEquals([piped.code, piped.stderr, piped.stdout], [0, "", `${quietScreen[0]}\n`]);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("Ctrl-C during an import: one line 'interrupted', status 130, no store path", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-progress-" });
  try {
    const file = await zeros(join(tmp, "zeros"), 4 * GiB);
    const store = localStoreArgs(join(tmp, "store"));
    const r = await runOnPty(
      [Deno.execPath(), "run", "-A", MAIN, "import", "--no-stat-cache", ...store, file],
      { ctrlCAfter: / left/ },
    );
    assert(r.pressed, `no progress line before the end:\n${r.output}`);
    assertEquals(r.code, 130, r.output);
    assertEquals(screenLines(r.output).filter((l) => l.trim() !== ""), ["interrupted"]);
    const listed = await tvixStore(["list", ...store]);
    assertEquals([listed.code, listed.stdout], [0, ""], listed.stderr);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("copy on a terminal: progress, then a summary; SIGTERM half-way: 143, nothing stored", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-progress-" });
  const local = await zeros(join(tmp, `zeros-${crypto.randomUUID()}`), GiB / 2);
  const path = td.decode(await run("nix-store", ["--add", local])).trim();
  try {
    const json = join(tmp, "closure.json");
    await Deno.writeFile(
      json,
      await run("nix", [
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--json",
        path,
      ]),
    );
    // On a terminal: progress in bytes of the closure's NAR size, then the summary.
    const store = localStoreArgs(join(tmp, "a"));
    const r = await runOnPty([Deno.execPath(), "run", "-A", MAIN, "copy", ...store, json]);
    assertEquals(r.code, 0, r.output);
    assertMatch(r.output, PROGRESS);
    assertEquals(screenLines(r.output).filter((l) => l.trim() !== ""), [
      "copied 1 path (512.0 MiB), 0 already present",
    ]);

    // Stopped half-way by SIGTERM: the shell's status for it, and nothing stored.
    const fresh = localStoreArgs(join(tmp, "b"));
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, "--log-level", "debug", "copy", ...fresh, json],
      env: childEnv(),
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // The debug line comes once the lookups are done and ingesting starts.
    const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let stderr = "";
    while (!/ DEBUG copy /.test(stderr)) {
      const { value, done } = await reader.read();
      if (done) break;
      stderr += value;
    }
    child.kill("SIGTERM");
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      stderr += chunk.value;
    }
    const status = await child.status;
    assertEquals(status.code, 143, stderr);
    assertEquals(stderr.trimEnd().split("\n").pop(), "interrupted");
    const listed = await tvixStore(["list", ...fresh]);
    assertEquals([listed.code, listed.stdout], [0, ""], listed.stderr);
  } finally {
    await new Deno.Command("nix-store", {
      args: ["--delete", path],
      stdout: "null",
      stderr: "null",
    })
      .output();
    await Deno.remove(tmp, { recursive: true });
  }
});
