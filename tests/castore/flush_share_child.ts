/**
 * Child process for objectstore_flush_test.ts, run without FFI: puts an
 * object, then asks for two commits at once (two writers relying on it).
 * Prints which commit returned first, one per line.
 *
 * Usage: deno run [perms without --allow-ffi] flush_share_child.ts DIR
 */
import { FileObjectStore } from "../../src/castore/objectstore/file.ts";

const store = new FileObjectStore(Deno.args[0]);
const order: string[] = [];
await store.put("chunks/b3/abcd/x", new Uint8Array(1000));
// The second is asked for while the first flushes: it must not return
// before a flush that started after it.
const first = store.sync().then(() => order.push("first"));
const second = store.sync().then(() => order.push("second"));
await Promise.all([first, second]);
await store.close();
console.log(order.join("\n"));
