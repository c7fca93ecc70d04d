/**
 * HTTP/2 frames go out in one write per tick (`src/grpc/h2_write_batching.ts`),
 * counted with strace: an 8 MiB blob up and down through our server and
 * client is 1,024 DATA frames of 16 KiB, which took a system call each
 * before.
 */
import { assert } from "../assert.ts";
import { countSyscalls } from "../strace.ts";

const CHILD = new URL("./write_batching_child.ts", import.meta.url).pathname;
const CALLS = ["sendto", "write", "writev", "sendmsg"];

async function socketWrites(batching: boolean): Promise<number> {
  const r = await countSyscalls([Deno.execPath(), "run", "-A", CHILD], CALLS, {
    env: { TVIX_H2_WRITE_BATCHING: batching ? "on" : "off" },
  });
  assert(r.code === 0, `child failed:\n${r.stderr}`);
  return CALLS.reduce((n, c) => n + r.calls(c), 0);
}

Deno.test("HTTP/2 frames of one tick go out in one write", async () => {
  const batched = await socketWrites(true);
  const unbatched = await socketWrites(false);
  // Unbatched, each of the 1,024 DATA frames (and each header) is a write.
  assert(unbatched >= 1024, `without batching only ${unbatched} writes: the test shows nothing`);
  assert(batched * 4 < unbatched, `${batched} writes batched against ${unbatched} without`);
});
