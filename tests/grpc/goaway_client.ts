/**
 * Client half of the GOAWAY test (run as its own Deno process, so an abort
 * inside nghttp2 shows up as a non-zero exit): for each round, makes
 * `calls` unary calls on one connection, prints `ready`, waits until the
 * server's GOAWAY has taken the connection down (prints `goaway`), waits
 * for `go` on stdin, then checks that calls work again (prints `ok`).
 *
 * Usage: deno run -A tests/grpc/goaway_client.ts <grpc+… url> <calls> <rounds>
 */
import * as grpc from "@grpc/grpc-js";
import { channelFor } from "../../src/grpc/channel.ts";
import { GrpcBlobService } from "../../src/castore/blob/grpc.ts";
import { BLOB_A_DIGEST } from "../fixtures.ts";

const [url, calls, rounds] = [Deno.args[0], Number(Deno.args[1]), Number(Deno.args[2])];
const lease = await channelFor(url);
const blob = new GrpcBlobService(lease);
const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).values();
const say = (line: string) => console.log(line);

/** Resolves once the channel leaves READY (the server's GOAWAY arrived). */
function leftReady(): Promise<void> {
  return new Promise((resolve) => {
    const wait = () => {
      const state = lease.channel.getConnectivityState(false);
      if (state !== grpc.connectivityState.READY) return resolve();
      lease.channel.watchConnectivityState(state, Infinity, wait);
    };
    wait();
  });
}

for (let round = 0; round < rounds; round++) {
  for (let i = 0; i < calls; i++) {
    if (await blob.has(BLOB_A_DIGEST)) throw new Error("unexpected blob");
  }
  say("ready");
  await leftReady();
  say("goaway");
  let input = "";
  while (!input.includes("go\n")) {
    const next = await lines.next();
    if (next.done) throw new Error("stdin closed");
    input += next.value;
  }
  for (let i = 0; i < 20; i++) {
    if (await blob.has(BLOB_A_DIGEST)) throw new Error("unexpected blob");
  }
  say("ok");
}
await blob.close();
