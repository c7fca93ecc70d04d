/**
 * The churn client of `churn_test.ts`, run as its own process: ROUNDS times,
 * open a grpc-js channel to TARGET, make CALLS unary `Stat` calls on it,
 * then `close()` it (which sends GOAWAY, the trigger of denoland/deno#36788
 * in the server). Prints one JSON line `{ calls, failures, firstFailure }`.
 *
 * Usage: deno run -A churn_client.ts TARGET ROUNDS CALLS
 */
import "../../src/grpc/h2_goaway_workaround.ts";
import * as grpc from "@grpc/grpc-js";
import {
  BlobServiceClient,
  type StatBlobRequest,
} from "../../src/proto/tvix/castore/protos/rpc_blobstore.ts";

const [target, rounds, calls] = [Deno.args[0], Number(Deno.args[1]), Number(Deno.args[2])];
/** Calls in flight at once; the bug depends on the number of streams, not on concurrency. */
const CONCURRENCY = 16;

let done = 0;
let failures = 0;
let firstFailure = "";
const request: StatBlobRequest = { digest: new Uint8Array(32), sendChunks: false, sendBao: false };

for (let round = 0; round < rounds; round++) {
  const client = new BlobServiceClient(target, grpc.credentials.createInsecure());
  let next = 0;
  const worker = async () => {
    while (next < calls) {
      next++;
      const code = await new Promise<number>((resolve) =>
        client.stat(request, (err) => resolve(err?.code ?? grpc.status.OK))
      );
      // The digest is unknown: NOT_FOUND is the expected, complete answer.
      if (code === grpc.status.NOT_FOUND) done++;
      else {
        failures++;
        firstFailure ||= grpc.status[code];
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  client.close();
}
console.log(JSON.stringify({ calls: done, failures, firstFailure }));
