/**
 * A nar-bridge whose path infos and directories live in PostgreSQL, with
 * the database stopped under it: requests get 503 with a short text body
 * (not 500), the bridge keeps running, and it serves again once the
 * database is back. In a file of its own: it stops this file's cluster.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { startServer, tvixStore } from "./harness.ts";
import { pgTest, postgresStoreArgs } from "../postgres/harness.ts";

pgTest("nar-bridge over postgres: 503 while the database is down, 200 once back", async (pg) => {
  const work = await Deno.makeTempDir({ prefix: "narbridge-pg-outage-" });
  const storeArgs = postgresStoreArgs(pg.url(await pg.createDatabase()), join(work, "packs"));
  let pgRunning = true;
  try {
    await Deno.mkdir(join(work, "tree"));
    await Deno.writeTextFile(join(work, "tree", "a.txt"), "served from postgres\n");
    const path = (await tvixStore(["import", ...storeArgs, join(work, "tree")])).trim();
    const bridge = await startServer(["nar-bridge", "--listen-address=127.0.0.1:0", ...storeArgs]);
    try {
      const digest = path.slice("/nix/store/".length, "/nix/store/".length + 32);
      const narinfo = `http://${bridge.address}/${digest}.narinfo`;
      const get = async () => {
        const res = await fetch(narinfo);
        return { status: res.status, text: await res.text() };
      };
      assertEquals((await get()).status, 200);

      await pg.stop();
      pgRunning = false;
      const down = await get();
      assertEquals(down.status, 503, down.text);
      assert(down.text.startsWith("store unavailable: postgres"), down.text);
      assertEquals(down.text.split("\n").length, 2, "one line of text");

      await pg.start();
      pgRunning = true;
      // The pool reconnects on the next query; bounded, so a bridge that
      // never recovers fails instead of hanging.
      let status = 0;
      for (let i = 0; i < 60 && status !== 200; i++) {
        status = (await get()).status;
        if (status !== 200) await new Promise((r) => setTimeout(r, 500));
      }
      assertEquals(status, 200);
    } finally {
      await bridge.stop();
    }
  } finally {
    if (!pgRunning) await pg.start();
    await Deno.remove(work, { recursive: true });
  }
});
