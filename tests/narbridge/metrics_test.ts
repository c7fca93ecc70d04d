/**
 * `--metrics-listen-address` on the daemon (with its binary cache): the
 * exposition passes a strict text-format parser, and its counters move
 * with the gRPC calls of a real import and with HTTP requests (narinfo hit
 * and miss, a NAR download, an upload refused). Also how the pull-through
 * flags refuse to start when misconfigured.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { startDaemon } from "../grpc/daemon_harness.ts";
import { localStoreArgs, remoteStoreArgs, tvixStore } from "../cli/helpers.ts";
import { type Family, sampleValue, scrape } from "../prometheus.ts";
import { waitFor } from "./harness.ts";

/** How much each named sample (by labels) grew between two scrapes. */
function delta(
  before: Map<string, Family>,
  after: Map<string, Family>,
  name: string,
  labels: Record<string, string> = {},
): number {
  return sampleValue(after, name, labels) - sampleValue(before, name, labels);
}

Deno.test("daemon metrics: gRPC calls, HTTP requests, bytes, lookups and chunks", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-metrics-" });
  const daemon = await startDaemon({
    home: join(tmp, "home"),
    listen: "127.0.0.1:0",
    args: [
      ...localStoreArgs(join(tmp, "store")),
      "--nar-bridge-listen-address=127.0.0.1:0",
      "--metrics-listen-address=127.0.0.1:0",
    ],
  });
  try {
    const metrics = /serving metrics address=(\S+)/.exec(daemon.log())![1];
    const http = await waitFor(
      () => /nar-bridge listening address=(\S+)/.exec(daemon.log())?.[1],
      "the nar-bridge address",
    );
    const page = await fetch(`http://${metrics}/other`);
    await page.body?.cancel();
    assertEquals(page.status, 404);

    const before = await scrape(metrics);
    const tree = join(tmp, "tree");
    await Deno.mkdir(tree);
    await Deno.writeTextFile(join(tree, "a.txt"), "metrics\n");
    // Large enough to be cut into several chunks.
    await Deno.writeFile(
      join(tree, "big.bin"),
      new Uint8Array(3 << 20).map((_, i) => (i * 2654435761) >>> 24),
    );
    const imported = await tvixStore([
      "import",
      "--quiet",
      ...remoteStoreArgs(`grpc+http://${daemon.address}`),
      tree,
    ]);
    assertEquals(imported.code, 0, imported.stderr);
    const hash = imported.stdout.trim().slice("/nix/store/".length, "/nix/store/".length + 32);

    const narinfo = await (await fetch(`http://${http}/${hash}.narinfo`)).text();
    const narUrl = /^URL: (\S+)$/m.exec(narinfo)![1];
    const narSize = Number(/^NarSize: (\d+)$/m.exec(narinfo)![1]);
    const nar = await (await fetch(`http://${http}/${narUrl}`)).arrayBuffer();
    assertEquals(nar.byteLength, narSize);
    const absent = await fetch(`http://${http}/${"0".repeat(32)}.narinfo`);
    await absent.body?.cancel();
    assertEquals(absent.status, 404);
    const refused = await fetch(`http://${http}/${hash}.narinfo`, {
      method: "PUT",
      body: "not a narinfo",
    });
    await refused.body?.cancel();
    assertEquals(refused.status, 400);

    const after = await scrape(metrics);
    const d = (name: string, labels: Record<string, string> = {}) =>
      delta(before, after, name, labels);

    const put = { grpc_method: "/tvix.castore.v1.BlobService/Put", grpc_code: "OK" };
    assert(d("tvix_grpc_server_handled_total", put) >= 1, "BlobService/Put counted");
    assertEquals(
      d("tvix_grpc_server_handling_seconds_count", put),
      d("tvix_grpc_server_handled_total", put),
    );
    const blobBytes = d("tvix_grpc_server_received_bytes_total", {
      grpc_method: "/tvix.castore.v1.BlobService/Put",
    });
    assert(blobBytes >= 3 << 20, `BlobService/Put received ${blobBytes} bytes`);
    assert(
      d("tvix_grpc_server_sent_bytes_total", {
        grpc_method: "/tvix.store.v1.PathInfoService/Put",
      }) > 0,
    );
    const pathInfoPut = { grpc_method: "/tvix.store.v1.PathInfoService/Put", grpc_code: "OK" };
    assertEquals(d("tvix_grpc_server_handled_total", pathInfoPut), 1);
    assert(d("tvix_castore_chunks_written_total") >= 2, "the big file is several chunks");
    assert(d("tvix_castore_chunk_bytes_written_total") >= 3 << 20);

    const req = (route: string, code: string) =>
      d("tvix_narbridge_http_requests_total", { route, code });
    assertEquals(req("narinfo", "200"), 1);
    assertEquals(req("narinfo", "404"), 1);
    assertEquals(req("nar", "200"), 1);
    assertEquals(req("upload", "400"), 1);
    assertEquals(
      d("tvix_narbridge_http_request_duration_seconds_count", { route: "nar", code: "200" }),
      1,
    );
    assertEquals(d("tvix_narbridge_http_sent_bytes_total", { route: "nar" }), narSize);
    assertEquals(
      d("tvix_narbridge_http_sent_bytes_total", { route: "narinfo" }),
      new TextEncoder().encode(narinfo).length + Number(absent.headers.get("content-length")),
    );
    assertEquals(
      d("tvix_narbridge_http_received_bytes_total", { route: "upload" }),
      "not a narinfo".length,
    );
    assertEquals(d("tvix_narbridge_narinfo_lookups_total", { result: "hit" }), 1);
    assertEquals(d("tvix_narbridge_narinfo_lookups_total", { result: "miss" }), 1);
  } catch (err) {
    console.error(daemon.log());
    throw err;
  } finally {
    const { status } = await daemon.stop();
    assertEquals(status.code, 0);
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("pull-through flags: misconfiguration is one line and a non-zero exit", async () => {
  const key = "up-1:" + btoa(String.fromCharCode(...new Uint8Array(32).fill(7)));
  const cases: Array<[string[], string]> = [
    [["--upstream=http://127.0.0.1:1"], "--upstream-trusted-public-keys"],
    [["--upstream=ftp://cache", `--upstream-trusted-public-keys=${key}`], "http"],
    [[`--upstream-trusted-public-keys=${key}`], "without --upstream"],
    [["--upstream=http://127.0.0.1:1", "--upstream-trusted-public-keys=nonsense"], "public key"],
  ];
  for (const [flags, says] of cases) {
    for (const cmd of ["nar-bridge", "daemon"]) {
      const out = await tvixStore([
        cmd,
        "--listen-address=127.0.0.1:0",
        ...(cmd === "daemon" ? ["--nar-bridge-listen-address=127.0.0.1:0"] : []),
        "--blob-service-addr=memory://",
        "--directory-service-addr=memory://",
        "--path-info-service-addr=memory://",
        ...flags,
      ]);
      assert(out.code !== 0, `${cmd} ${flags.join(" ")} must fail`);
      assert(out.stderr.includes(says), `${cmd} ${flags.join(" ")}: ${out.stderr}`);
      assert(out.stderr.trim().split("\n").length <= 2, out.stderr);
    }
  }
});
