/**
 * Child of log_routing_test.ts. Makes grpc-js log an error of its own
 * (binding a server to a port that is taken) after opening a channel with
 * our factory (`channel`), without one (`none`), or inside a Worker that
 * opens the channel (`worker`). The log level is debug, so routed lines
 * show up in our format.
 */
import * as grpc from "@grpc/grpc-js";
import { channelFor } from "../../src/grpc/channel.ts";
import { setLogLevel } from "../../src/log.ts";

async function provoke(): Promise<void> {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const server = new grpc.Server();
  await new Promise<void>((resolve) =>
    server.bindAsync(
      `127.0.0.1:${taken.addr.port}`,
      grpc.ServerCredentials.createInsecure(),
      () => resolve(),
    )
  );
  server.forceShutdown();
  taken.close();
}

async function run(mode: string): Promise<void> {
  setLogLevel("debug");
  if (mode === "channel") {
    // Never connected: only the channel is made.
    const lease = await channelFor("grpc+http://127.0.0.1:9");
    await provoke();
    lease.release();
  } else {
    await provoke();
  }
}

const self = globalThis as unknown as { postMessage?: (m: unknown) => void; name?: string };
if (self.name === "log-routing-worker") {
  await run("channel");
  self.postMessage!("done");
} else if (Deno.args[0] === "worker") {
  const worker = new Worker(import.meta.url, { type: "module", name: "log-routing-worker" });
  await new Promise((resolve) => worker.onmessage = resolve);
  worker.terminate();
} else {
  await run(Deno.args[0]);
}
