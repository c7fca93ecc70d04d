/**
 * What `gc` shows on a terminal (a pseudo-terminal, see pty.ts), in-process
 * and through a daemon's AdminService: a progress line in NAR bytes and
 * paths, with rate and time left, erased at the end so the report alone
 * stays; nothing with `--quiet`, and nothing on stderr that is no terminal.
 * Also: a daemon runs one collection at a time, refusing another with
 * ABORTED while one runs.
 *
 * The workload is a store of many small paths that share a subtree (see
 * `manyPaths`).
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../assert.ts";
import { localStoreArgs, MAIN, remoteStoreArgs, startServer, tvixStore } from "./helpers.ts";
import { runOnPty, screenLines } from "./pty.ts";
import { ok, tree } from "./gc_helpers.ts";
import { constructServices, embeddedAddrs } from "../../src/store/services.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { toNode } from "../../src/castore/node.ts";
import { directorySize } from "../../src/castore/directory.ts";
import type { Directory } from "../../src/proto/tvix/castore/protos/castore.ts";
import { pseudoRandom } from "../fixtures.ts";
import { AdminClient } from "../../src/store/admin_client.ts";
import { Code, RpcError } from "../../src/grpc/status.ts";

const PATHS = 1000;
/** Directories below the subtree every path holds: marking walks it once per path. */
const SHARED_DIRECTORIES = 60;
const te = new TextEncoder();

/** A drawn gc progress line: bytes of the total (percent), rate, time left, paths. */
const PROGRESS = new RegExp(
  String.raw`gc \(marking\) [\d.]+ (B|KiB|MiB|GiB) of [\d.]+ (MiB|GiB|TiB) \(\d+%\), ` +
    String.raw`[\d.]+ (B|KiB|MiB|GiB|TiB)/s, \d+:\d\d left, \d+/${PATHS + 1} paths`,
);

/**
 * Fills the embedded store at `home` with {@linkcode PATHS} paths, each a
 * directory of its own holding one file and a subtree of
 * {@linkcode SHARED_DIRECTORIES} directories that all of them share (gc
 * reads a path's whole closure, so marking reads that subtree once per
 * path: long enough to draw on any machine, quick to build).
 */
async function manyPaths(work: string, home: string): Promise<void> {
  const seed = await tree(join(work, "seed"), { "f": te.encode("one small file\n") });
  const seedPath = (await ok(["import", ...localStoreArgs(home), seed])).trim();
  const s = await constructServices(embeddedAddrs(home));
  try {
    const info = (await s.pathInfo.get(StorePath.parseAbsolute(seedPath).digest))!;
    const root = info.node!.node!;
    assert(root.$case === "directory");
    const file = (await s.directory.get(root.value.digest))!.files[0];
    const leaves: Directory[] = [];
    for (let i = 0; i < SHARED_DIRECTORIES; i++) {
      leaves.push({
        directories: [],
        files: [{ ...file, name: te.encode(`l${i}`) }],
        symlinks: [],
      });
    }
    const shared: Directory = { directories: [], files: [], symlinks: [] };
    for (const [i, leaf] of leaves.entries()) {
      shared.directories.push({
        name: te.encode(`d${String(i).padStart(4, "0")}`),
        digest: await s.directory.put(leaf),
        size: directorySize(leaf),
      });
    }
    const sharedNode = {
      name: te.encode("shared"),
      digest: await s.directory.put(shared),
      size: directorySize(shared),
    };
    for (let i = 0; i < PATHS; i++) {
      const top: Directory = {
        directories: [sharedNode],
        files: [{ ...file, name: te.encode(`f${i}`) }],
        symlinks: [],
      };
      const digest = await s.directory.put(top);
      const path = StorePath.fromParts(pseudoRandom(20, 1000 + i), `p${i}`);
      await s.pathInfo.put({
        ...info,
        node: toNode({
          $case: "directory",
          value: { name: te.encode(path.basename()), digest, size: directorySize(top) },
        }),
        // Claimed NAR sizes: only the progress line reads them.
        narinfo: { ...info.narinfo!, narSize: 1n << 20n },
      });
    }
  } finally {
    await s.close();
  }
}

Deno.test("gc on a terminal: progress in bytes and paths with rate and time left, erased at the end; --quiet and pipes: none", async () => {
  const work = await Deno.makeTempDir({ prefix: "tvix-gc-progress-" });
  const home = join(work, "home");
  try {
    await manyPaths(work, home);
    const local = localStoreArgs(home);
    const gc = [Deno.execPath(), "run", "-A", MAIN, "gc", "--dry-run"];

    // stderr into a pipe: nothing there; stdout is the report.
    const piped = await tvixStore(["gc", "--dry-run", ...local]);
    assertEquals([piped.code, piped.stderr], [0, ""]);
    const report = piped.stdout.trim().split("\n");
    assertMatch(
      report[0],
      new RegExp(`^${PATHS + 1} store paths reach ${PATHS + SHARED_DIRECTORIES + 2} directories`),
    );

    const r = await runOnPty([...gc, ...local]);
    assertEquals(r.code, 0, r.output);
    assertMatch(r.output, PROGRESS);
    assertEquals(screenLines(r.output).filter((l) => l.trim() !== ""), report);

    const quiet = await runOnPty([...gc, "--quiet", ...local]);
    assertEquals(quiet.code, 0, quiet.output);
    assert(!quiet.output.includes("gc ("), quiet.output);
    assertEquals(screenLines(quiet.output).filter((l) => l.trim() !== ""), report);

    // Through a daemon: its AdminService streams the progress.
    const daemon = await startServer(["daemon", "--listen-address", "127.0.0.1:0"], {
      name: "daemon",
      env: { TVIX_STORE_HOME: home },
    });
    try {
      const remote = remoteStoreArgs(`grpc+http://${daemon.address}`);
      const viaDaemon = await runOnPty([...gc, ...remote]);
      assertEquals(viaDaemon.code, 0, viaDaemon.output);
      assertMatch(viaDaemon.output, PROGRESS);
      assertEquals(screenLines(viaDaemon.output).filter((l) => l.trim() !== ""), report);

      // Two collections asked for at once: one runs, the other is ABORTED.
      const client = await AdminClient.fromUrl(`grpc+http://${daemon.address}`);
      try {
        const outcome = async () => {
          try {
            let reports = 0;
            for await (
              const e of client.collectGarbage({
                dryRun: true,
                olderThanMs: 0n,
                maxSizeBytes: 0n,
              })
            ) {
              if (e.event?.$case === "report") reports++;
            }
            return reports === 1 ? "report" : `${reports} reports`;
          } catch (err) {
            assert(err instanceof RpcError, String(err));
            return `${Code[err.code]}: ${err.message}`;
          }
        };
        const both = await Promise.all([outcome(), outcome()]);
        assertEquals(both.sort(), [
          "ABORTED: a garbage collection is already running",
          "report",
        ]);
      } finally {
        client.close();
      }
      assertMatch(daemon.log(), / gc dry run done source=request /);
    } finally {
      await daemon.stop();
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
