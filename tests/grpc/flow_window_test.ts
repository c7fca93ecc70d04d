/**
 * HTTP/2 flow-control windows: the daemon lets a client send 1 MiB per
 * stream before acknowledging (grpc-js's server has no option for it; see
 * `src/grpc/h2_server_window.ts`), checked with a raw HTTP/2 client.
 */
import http2 from "node:http2";
import { assertEquals } from "../assert.ts";
import { SERVER_WINDOW } from "../../src/grpc/h2_server_window.ts";
import { startDaemon } from "./daemon_harness.ts";

Deno.test({
  name: "daemon: advertises a 1 MiB initial stream window",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const home = await Deno.makeTempDir();
  const daemon = await startDaemon({ home });
  try {
    const session = http2.connect(`http://${daemon.address}`);
    try {
      const settings = await new Promise<http2.Settings>((resolve, reject) => {
        session.once("remoteSettings", resolve);
        session.once("error", reject);
      });
      assertEquals(SERVER_WINDOW, 1024 * 1024);
      assertEquals(settings.initialWindowSize, SERVER_WINDOW);
    } finally {
      session.close();
    }
  } finally {
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
});
