/**
 * Child process for objectstore_flush_test.ts, run without FFI: one writer
 * puts an object and commits; while that commit flushes, a second writer
 * finds the object present and commits too. Prints which commit returned
 * first, one per line.
 *
 * Usage: deno run [perms without --allow-ffi] flush_share_child.ts DIR
 */
import { FileObjectStore } from "../../src/castore/objectstore/file.ts";

const store = new FileObjectStore(Deno.args[0]);
const order: string[] = [];
await store.put("chunks/b3/abcd/x", new Uint8Array(1000));
const first = store.sync().then(() => order.push("first"));
const present = await store.size("chunks/b3/abcd/x") === 1000;
if (!present) throw new Error("the object is not there");
const second = store.sync().then(() => order.push("second"));
await Promise.all([first, second]);
await store.close();
console.log(order.join("\n"));
