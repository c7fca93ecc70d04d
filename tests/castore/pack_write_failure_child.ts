/**
 * Child of pack_write_failure_test.ts, run with a file size limit
 * (`ulimit -f`, SIGXFSZ ignored) so that a write past it fails with EFBIG.
 * Prints what happened to each upload and to the commits as JSON lines.
 * Usage: `pack_write_failure_child.ts DIR same-turn|removed-pack`
 */
import { PackBlobService } from "../../src/castore/blob/pack.ts";
import { blake3 } from "../../src/castore/digest.ts";
import { errorMessage } from "../../src/errors.ts";

const [dir, scenario] = Deno.args;
const unhandled: string[] = [];
globalThis.addEventListener("unhandledrejection", (e) => {
  unhandled.push(String(e.reason));
  e.preventDefault();
});
const outcome = (p: Promise<unknown>) =>
  p.then(() => "ok", (err) => `failed: ${(err as Error).constructor.name}: ${errorMessage(err)}`);
const record = (n: number, seed: number) => {
  const b = new Uint8Array(n).map((_, i) => (i * seed + 7) & 255);
  return { digest: blake3(b), stored: b, raw: true };
};
const MIB = 1024 * 1024;
const store = new PackBlobService(dir);
const small = record(1000, 3);
await store.append(small, 1000);
const result: Record<string, unknown> = {};
if (scenario === "removed-pack") {
  // What garbage collection does to a pack nothing live is in.
  for (const e of Deno.readDirSync(dir)) {
    if (e.name.endsWith(".pack")) Deno.removeSync(`${dir}/${e.name}`);
  }
  // The commit starts while the failing write is staged; what refers to
  // the chunk in the removed pack is refused.
  const pBig = outcome(store.append(record(2 * MIB, 11), 2 * MIB));
  const pSync = outcome(store.sync([small.digest]));
  result.big = await pBig;
  result.sync = await pSync;
} else {
  // A small record and one past the size limit, staged in the same turn.
  const other = record(2000, 5);
  const pOther = outcome(store.append(other, 2000));
  const pBig = outcome(store.append(record(2 * MIB, 11), 2 * MIB));
  const pSync = outcome(store.sync());
  result.other = await pOther;
  result.big = await pBig;
  result.sync = await pSync;
  // That commit began before the small record was written; the next one has it.
  result.syncAfter = await outcome(store.sync());
  result.otherStored = await new PackBlobService(dir).has(other.digest);
  result.firstStored = await new PackBlobService(dir).has(small.digest);
}
await new Promise((r) => setTimeout(r, 100));
result.close = await outcome(store.close());
result.unhandled = unhandled;
console.log(JSON.stringify(result));
