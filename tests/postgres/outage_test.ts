/**
 * The database going away under a serving daemon: calls in flight and
 * calls made meanwhile end with UNAVAILABLE (none hangs, none claims data
 * loss), the daemon
 * keeps running, and it serves again once PostgreSQL is back, without a
 * restart. In a file of its own: it stops this file's cluster.
 */
import { join } from "node:path";
import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { assert, assertEquals } from "../assert.ts";
import { startServer, tvixStore } from "../cli/helpers.ts";
import { serviceAddrArgs } from "../../src/cli/common.ts";
import { Code } from "../../src/grpc/status.ts";
import { DirectoryServiceClient } from "../../src/proto/tvix/castore/protos/rpc_directory.ts";
import { PathInfoServiceClient } from "../../src/proto/tvix/store/protos/rpc_pathinfo.ts";
import type { Node } from "../../src/proto/tvix/castore/protos/castore.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { pgTest, postgresStoreArgs } from "./harness.ts";

interface Outcome {
  code: Code;
  details: string;
  /** Directories received (Directory Get). */
  count?: number;
}

async function writeTree(root: string, files: Record<string, string>): Promise<string> {
  for (const [name, text] of Object.entries(files)) {
    await Deno.mkdir(join(root, name, ".."), { recursive: true });
    await Deno.writeTextFile(join(root, name), text);
  }
  return root;
}

pgTest(
  "postgres stopped under a serving daemon: error statuses, no crash, serving resumes",
  async (pg) => {
    const work = await Deno.makeTempDir({ prefix: "tvix-pg-outage-" });
    const sock = join(work, "d.sock");
    const db = await pg.createDatabase();
    const daemon = await startServer(
      ["daemon", "-l", sock, ...postgresStoreArgs(pg.url(db), join(work, "packs"))],
      { name: "daemon" },
    );
    const grpcUrl = `grpc+unix://${sock}`;
    const addrs = {
      blobServiceAddr: grpcUrl,
      directoryServiceAddr: grpcUrl,
      pathInfoServiceAddr: grpcUrl,
    };
    const bridge = await startServer(
      ["nar-bridge", "-l", "127.0.0.1:0", ...serviceAddrArgs(addrs)],
      { name: "nar-bridge" },
    );
    const dirs = new DirectoryServiceClient(`unix:${sock}`, credentials.createInsecure());
    const infos = new PathInfoServiceClient(`unix:${sock}`, credentials.createInsecure());
    let pgRunning = true;
    try {
      const files: Record<string, string> = {};
      for (let i = 0; i < 30; i++) files[`d${i % 6}/sub${i % 3}/f${i}`] = `file ${i}\n`;
      const tree = await writeTree(join(work, "tree"), files);
      const imported = await tvixStore(["import", ...serviceAddrArgs(addrs), tree]);
      assertEquals(imported.code, 0, imported.stderr);
      const path = StorePath.parseAbsolute(imported.stdout.trim());

      const getPathInfo = () =>
        new Promise<Outcome>((resolve) => {
          infos.get(
            { byWhat: { $case: "byOutputHash", value: path.digest } },
            new Metadata(),
            { deadline: Date.now() + 15_000 },
            (err: ServiceError | null) =>
              resolve(
                err ? { code: err.code, details: err.details } : { code: Code.OK, details: "" },
              ),
          );
        });
      const info = await new Promise<{ root: Uint8Array; node: Node }>((resolve, reject) => {
        infos.get({ byWhat: { $case: "byOutputHash", value: path.digest } }, (err, res) => {
          const node = res?.node?.node;
          if (err || node?.$case !== "directory") reject(err ?? new Error("no directory root"));
          else resolve({ root: node.value.digest, node: res!.node! });
        });
      });
      const getDirectories = () =>
        new Promise<Outcome>((resolve) => {
          let count = 0;
          const call = dirs.get(
            { byWhat: { $case: "digest", value: info.root }, recursive: true },
            { deadline: Date.now() + 15_000 },
          );
          call.on("data", () => count++);
          call.on("error", () => {/* reported through "status" */});
          call.on("status", (s) => resolve({ code: s.code, details: s.details, count }));
        });
      const healthy = await getDirectories();
      assertEquals(healthy.code, Code.OK, healthy.details);
      const closureSize = healthy.count!;
      assert(closureSize > 10, `closure of ${closureSize} directories`);

      // Clients keep calling while the server stops (fast shutdown ends the
      // sessions, so queries in flight fail too).
      const outcomes: { at: "before" | "after"; outcome: Outcome }[] = [];
      let phase: "before" | "after" = "before";
      let calling = true;
      const loops = Array.from({ length: 4 }, async () => {
        while (calling) {
          for (const call of [getDirectories, getPathInfo]) {
            const at = phase;
            outcomes.push({ at, outcome: await call() });
          }
        }
      });
      await new Promise((r) => setTimeout(r, 300));
      phase = "after";
      await pg.stop();
      pgRunning = false;
      await new Promise((r) => setTimeout(r, 800));
      calling = false;
      await Promise.all(loops);

      const failed = outcomes.filter(({ outcome }) => outcome.code !== Code.OK);
      assert(failed.length > 0, "calls fail while the database is down");
      for (const { outcome } of failed) {
        // Not DATA_LOSS or INTERNAL: nothing is wrong with the data, a retry may succeed.
        assertEquals(
          Code[outcome.code],
          Code[Code.UNAVAILABLE],
          `status ${Code[outcome.code]} (${outcome.details})`,
        );
        assert(/postgres/.test(outcome.details), `details name the database: ${outcome.details}`);
      }
      for (const { at, outcome } of outcomes) {
        if (at === "before") assertEquals(outcome.code, Code.OK, outcome.details);
        if (outcome.code === Code.OK && outcome.count !== undefined) {
          assertEquals(outcome.count, closureSize, "a call either fails or answers in full");
        }
      }
      assertEquals(daemon.exitStatus(), undefined, "the daemon keeps running");

      // A write while the database is down fails and stores nothing.
      const other = await writeTree(join(work, "other"), { "x/y": "other\n" });
      const refused = await tvixStore(["import", ...serviceAddrArgs(addrs), other]);
      assert(refused.code !== 0, "an import without the database fails");
      assert(/UNAVAILABLE.*postgres/.test(refused.stderr), refused.stderr);
      // So is a NAR calculation, which renders from the store (not asked
      // before, so not answered from the daemon's cache of results).
      const calculated = await new Promise<Outcome>((resolve) =>
        infos.calculateNar(
          info.node,
          new Metadata(),
          { deadline: Date.now() + 15_000 },
          (err) =>
            resolve(
              err ? { code: err.code, details: err.details } : { code: Code.OK, details: "" },
            ),
        )
      );
      assertEquals(Code[calculated.code], Code[Code.UNAVAILABLE], calculated.details);
      assert(/postgres/.test(calculated.details), calculated.details);
      // A binary cache over the daemon answers 503 (Nix retries), not 500 or 404.
      const hash = imported.stdout.trim().slice("/nix/store/".length, "/nix/store/".length + 32);
      const narinfo = await fetch(`http://${bridge.address}/${hash}.narinfo`);
      const body = await narinfo.text();
      assertEquals(narinfo.status, 503, body);
      assert(/store unavailable: .*postgres/.test(body), body);

      await pg.start();
      pgRunning = true;
      // Serving resumes by itself: the pool reconnects.
      let back: Outcome[] = [];
      for (let i = 0;; i++) {
        back = [await getDirectories(), await getPathInfo()];
        if (back.every((o) => o.code === Code.OK)) break;
        assert(i < 100, `serving did not resume: ${JSON.stringify(back)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      assertEquals(back[0].count, closureSize);
      const again = await tvixStore(["import", ...serviceAddrArgs(addrs), other]);
      assertEquals(again.code, 0, again.stderr);
      assertEquals(
        await pg.psql(db, "SELECT count(*) FROM pathinfos"),
        [["2"]],
        "the refused import stored nothing, the retried one its path",
      );
      const served = await fetch(`http://${bridge.address}/${hash}.narinfo`);
      assertEquals(served.status, 200, await served.text());
      const stopped = await daemon.stop();
      assertEquals(stopped.status.code, 0, daemon.log());
    } finally {
      await bridge.stop();
      dirs.close();
      infos.close();
      await daemon.stop();
      if (!pgRunning) await pg.start();
      await Deno.remove(work, { recursive: true });
    }
  },
);
