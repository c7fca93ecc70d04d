/**
 * Child process for objectstore_flush_test.ts: puts `n` objects into a
 * FileObjectStore at `dir`, then calls `sync()` `syncs` times at once and
 * once more after those.
 *
 * Usage: deno run [perms] flush_child.ts DIR N SYNCS
 */
import { FileObjectStore } from "../../src/castore/objectstore/file.ts";

const [dir, n, syncs] = [Deno.args[0], Number(Deno.args[1]), Number(Deno.args[2])];
const store = new FileObjectStore(dir);
for (let i = 0; i < n; i++) {
  await store.put(`o/${i % 7}/${i}`, new TextEncoder().encode(`object ${i}`));
}
await Promise.all(Array.from({ length: syncs }, () => store.sync()));
await store.sync();
console.log("synced");
