import { join } from "node:path";
import { assertEquals } from "../assert.ts";
import { openDatabase } from "../../src/castore/sqlite_db.ts";

const WORKERS = 6;
const ROUNDS = 8;

Deno.test("many threads opening one fresh SQLite file at once all get it in WAL mode", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sqlite-open-" });
  const workers = Array.from(
    { length: WORKERS },
    () => new Worker(new URL("./sqlite_open_worker.ts", import.meta.url), { type: "module" }),
  );
  const next = (w: Worker) =>
    new Promise<{ ok?: string; error?: string; loaded?: boolean }>((resolve) => {
      w.onmessage = (e) => resolve(e.data);
    });
  try {
    await Promise.all(workers.map(next)); // every Worker is listening
    for (let round = 0; round < ROUNDS; round++) {
      const path = join(dir, `r${round}`, "store.sqlite");
      const barrier = new SharedArrayBuffer(4);
      const answers = workers.map(next);
      workers.forEach((w, id) => w.postMessage({ path, barrier, id }));
      await new Promise((r) => setTimeout(r, 20));
      Atomics.store(new Int32Array(barrier), 0, 1);
      Atomics.notify(new Int32Array(barrier), 0);
      assertEquals(await Promise.all(answers), workers.map(() => ({ ok: "wal" })));
      const db = openDatabase(path);
      const { n } = db.prepare("SELECT count(*) AS n FROM t").get() as { n: number };
      db.close();
      assertEquals(n, WORKERS);
    }
  } finally {
    workers.forEach((w) => w.terminate());
    await Deno.remove(dir, { recursive: true });
  }
});
