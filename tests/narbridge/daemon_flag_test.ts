/**
 * `tvix-store daemon --nar-bridge-listen-address`: one process serves the
 * store over gRPC and as a Nix binary cache over HTTP.
 */
import { assert, assertEquals } from "../assert.ts";
import { MEMORY_BACKENDS, startDaemon } from "../grpc/daemon_harness.ts";
import { tvixStore } from "../cli/helpers.ts";
import { waitFor } from "./harness.ts";

Deno.test("daemon also serves a binary cache of its own store", async () => {
  const home = await Deno.makeTempDir();
  const tree = await Deno.makeTempDir();
  const daemon = await startDaemon({
    home,
    listen: "127.0.0.1:0",
    args: [...MEMORY_BACKENDS, "--nar-bridge-listen-address=127.0.0.1:0"],
  });
  try {
    const http = await waitFor(
      () => /nar-bridge listening address=(\S+)/.exec(daemon.log())?.[1],
      "the nar-bridge address",
    );
    await Deno.mkdir(`${tree}/src/sub`, { recursive: true });
    await Deno.writeTextFile(`${tree}/src/sub/hello.txt`, "hello from the daemon\n");
    await Deno.symlink("sub/hello.txt", `${tree}/src/link`);

    const grpc = `grpc+http://${daemon.address}`;
    const imported = await tvixStore([
      "import",
      `${tree}/src`,
      `--blob-service-addr=${grpc}`,
      `--directory-service-addr=${grpc}`,
      `--path-info-service-addr=${grpc}`,
    ]);
    assertEquals(imported.code, 0, imported.stderr);
    const storePath = imported.stdout.trim();
    const hash = storePath.slice("/nix/store/".length, "/nix/store/".length + 32);

    const info = await fetch(`http://${http}/nix-cache-info`);
    assert((await info.text()).includes("StoreDir: /nix/store"));

    const narinfo = await (await fetch(`http://${http}/${hash}.narinfo`)).text();
    assert(narinfo.startsWith(`StorePath: ${storePath}\n`), narinfo);
    const url = /^URL: (\S+)$/m.exec(narinfo)![1];
    const nar = new Uint8Array(await (await fetch(`http://${http}/${url}`)).arrayBuffer());
    const dump = await new Deno.Command("nix-store", { args: ["--dump", `${tree}/src`] }).output();
    assertEquals(dump.code, 0);
    assertEquals(nar, dump.stdout);
    assertEquals(/^NarSize: (\d+)$/m.exec(narinfo)![1], String(dump.stdout.length));

    const absent = await fetch(`http://${http}/${"0".repeat(32)}.narinfo`);
    await absent.body?.cancel();
    assertEquals(absent.status, 404);
  } finally {
    const { status } = await daemon.stop("SIGTERM");
    assertEquals(status.code, 0, daemon.log());
    await Deno.remove(home, { recursive: true });
    await Deno.remove(tree, { recursive: true });
  }
});
