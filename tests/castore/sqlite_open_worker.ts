/// <reference lib="deno.worker" />
// Test helper: waits on a shared barrier, then opens the database file at
// the same moment as its siblings and does one write.
import { openDatabase } from "../../src/castore/sqlite_db.ts";

self.onmessage = (e: MessageEvent<{ path: string; barrier: SharedArrayBuffer; id: number }>) => {
  const { path, barrier, id } = e.data;
  const flag = new Int32Array(barrier);
  Atomics.wait(flag, 0, 0);
  try {
    const db = openDatabase(path);
    db.exec("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)");
    db.prepare("INSERT INTO t (id) VALUES (?)").run(id);
    const mode = db.prepare("PRAGMA journal_mode").get() as { journal_mode: string };
    db.close();
    self.postMessage({ ok: mode.journal_mode });
  } catch (err) {
    self.postMessage({ error: String(err) });
  }
};
self.postMessage({ loaded: true });
