/**
 * nar-bridge deployed as a binary cache for real nix 2.8, with nix's
 * default narinfo TTLs: a daemon owning the store, a standalone bridge over
 * gRPC with upload tokens, and nix uploading through a `netrc-file` then
 * downloading what it uploaded (nix remembers the narinfo it sent, so it
 * asks for the NAR URL it chose), across a restart; `.ls` listings byte for
 * byte against nix's own; Cache-Control and nix-cache-info; 404 right after
 * `tvix-store delete`; 503 while the daemon is down.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { setLogLevel } from "../../src/log.ts";
import { NixEnv } from "./nix_env.ts";
import { type Server, startServer, tvixStore, waitFor } from "./harness.ts";
import { localStoreArgs, remoteStoreArgs } from "../cli/helpers.ts";

setLogLevel("warn");

const TOKEN = "s3cret-upload-token";

/** A tree with a file, an executable, a symlink, nested and empty directories, a 300 KiB file. */
async function makeTree(root: string, tag: string): Promise<void> {
  await Deno.mkdir(join(root, "sub", "empty"), { recursive: true });
  await Deno.writeTextFile(join(root, "hello.txt"), `Hello ${tag}!\n`);
  await Deno.writeTextFile(join(root, "sub", "run.sh"), "#!/bin/sh\necho hi\n", { mode: 0o755 });
  await Deno.symlink("../hello.txt", join(root, "sub", "link"));
  const big = new Uint8Array(300 * 1024).map((_, i) => (i * 7919) % 251);
  await Deno.writeFile(join(root, "big.bin"), big);
}

/** The 32-character digest part of a store path. */
const digestOf = (path: string) => path.slice("/nix/store/".length, "/nix/store/".length + 32);

/** GET (or another method) returning status, headers and the body as bytes. */
async function request(
  url: string,
  init: RequestInit = {},
): Promise<{ status: number; headers: Headers; body: Uint8Array }> {
  const res = await fetch(url, init);
  return {
    status: res.status,
    headers: res.headers,
    body: new Uint8Array(await res.arrayBuffer()),
  };
}

Deno.test("nar-bridge as deployed: tokens, uploaded URLs, listings, headers, outages", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "narbridge-deploy-" });
  const nix = await NixEnv.create();
  let daemon: Server | undefined;
  let bridge: Server | undefined;
  try {
    const store = join(tmp, "tvix");
    const tokens = join(tmp, "tokens");
    await Deno.writeTextFile(tokens, `# CI uploaders\nother-token\n${TOKEN}\n`);
    const netrc = join(tmp, "netrc");
    await Deno.writeTextFile(netrc, `machine 127.0.0.1 login ci password ${TOKEN}\n`);
    const withNetrc = ["--option", "netrc-file", netrc];

    daemon = await startServer([
      "daemon",
      "--listen-address=127.0.0.1:0",
      ...localStoreArgs(store),
    ]);
    const daemonAddress = daemon.address;
    const grpcArgs = remoteStoreArgs(`grpc+http://${daemonAddress}`);
    const bridgeArgs = (listen: string) => [
      "--log-level=debug",
      "nar-bridge",
      `--listen-address=${listen}`,
      `--upload-token-file=${tokens}`,
      "--priority=7",
      "--narinfo-ttl=30s",
      ...grpcArgs,
    ];
    bridge = await startServer(bridgeArgs("127.0.0.1:0"));
    const url = `http://${bridge.address}`;

    // One path per compression nix offers for uploads.
    const paths: { query: string; path: string; dump: Uint8Array }[] = [];
    for (const query of ["", "?compression=zstd", "?compression=none"]) {
      const src = join(tmp, `src${paths.length}`);
      await makeTree(src, `upload ${query}`);
      const path = (await nix.ok("nix-store", ["--store", nix.store, "--add", src])).trim();
      paths.push({ query, path, dump: (await nix.run("nix-store", ["--dump", src])).raw });
    }

    await t.step("uploads without a token get 401; reads stay open", async () => {
      const refused = await nix.run("nix", [
        "copy",
        "--store",
        nix.store,
        "--to",
        url,
        paths[0].path,
      ]);
      assert(refused.code !== 0, "an upload without a token must fail");
      assert(refused.stderr.includes("401"), refused.stderr);
      const put = await request(`${url}/nar/x.nar`, {
        method: "PUT",
        body: "x",
        headers: { authorization: "Bearer wrong-token" },
      });
      assertEquals(put.status, 401);
      assert(put.headers.get("www-authenticate")?.startsWith("Basic"));
      assertEquals((await request(`${url}/${digestOf(paths[0].path)}.narinfo`)).status, 404);
      assertEquals((await request(`${url}/nix-cache-info`)).status, 200);
    });

    await t.step("nix copy --to through netrc-file (xz, zstd, none) is accepted", async () => {
      for (const { query, path } of paths) {
        await nix.ok("nix", [
          "copy",
          ...withNetrc,
          "--store",
          nix.store,
          "--to",
          url + query,
          path,
        ]);
      }
      // One info line per upload, naming the store path and the NAR size.
      const infos = bridge!.log().split("\n").filter((l) => / INFO .*upload/.test(l));
      assertEquals(infos.length, paths.length, bridge!.log());
      for (const [i, l] of infos.entries()) {
        assert(l.includes(`path uploaded path=${paths[i].path} narSize=`), l);
      }
    });

    // nix keeps the narinfo it uploaded (default positive TTL: a month), so
    // these downloads ask for the NAR URL nix chose, in its compression.
    const copyBack = async (tag: string) => {
      for (const [i, { path, dump }] of paths.entries()) {
        const dest = join(tmp, `chroot-${tag}-${i}`);
        await nix.ok("nix", ["copy", "--no-check-sigs", "--from", url, "--to", dest, path]);
        const copied = await nix.run("nix", ["store", "dump-path", "--store", dest, path]);
        assertEquals(copied.code, 0, copied.stderr);
        assert(copied.raw.length === dump.length && copied.raw.every((b, j) => b === dump[j]));
      }
    };

    await t.step("nix copy --from the bridge into fresh stores: byte-equal NARs", async () => {
      await copyBack("first");
    });

    await t.step("uploaded URLs survive a restart of the bridge and the daemon", async () => {
      await bridge!.stop();
      await daemon!.stop();
      daemon = await startServer([
        "daemon",
        `--listen-address=${daemonAddress}`,
        ...localStoreArgs(store),
      ]);
      // The same host:port: nix still remembers the narinfos it uploaded there.
      bridge = await startServer(bridgeArgs(url.slice("http://".length)));
      await copyBack("restarted");
    });

    await t.step(".ls listings are byte-equal to nix's write-nar-listing", async () => {
      const local = join(tmp, "filecache");
      // Names and a target that need escaping in JSON, as nix escapes them.
      const weird = join(tmp, "weird");
      await Deno.mkdir(weird);
      for (const name of ['q"uote', "back\\slash", "ctl\x01\b\f\t\r x", "nl\nx", "é"]) {
        await Deno.writeTextFile(join(weird, name), name);
      }
      await Deno.symlink('ta"rg\x02et', join(weird, "sym"));
      const weirdPath = (await nix.ok("nix-store", ["--store", nix.store, "--add", weird])).trim();
      await nix.ok("nix", ["copy", ...withNetrc, "--store", nix.store, "--to", url, weirdPath]);
      for (const path of [...paths.map((p) => p.path), weirdPath]) {
        await nix.ok("nix", [
          "copy",
          "--store",
          nix.store,
          "--to",
          `file://${local}?write-nar-listing=true&compression=none`,
          path,
        ]);
        const ours = await request(`${url}/${digestOf(path)}.ls`);
        assertEquals(ours.status, 200);
        const theirs = await Deno.readFile(join(local, `${digestOf(path)}.ls`));
        assertEquals(ours.body, theirs);
        assertEquals(
          ours.headers.get("cache-control"),
          "public, max-age=31536000, immutable",
        );
      }
      const ls = (await nix.ok("nix", ["store", "ls", "--store", url, "-R", paths[0].path]))
        .trim().split("\n").sort();
      assertEquals(ls, [
        "./big.bin",
        "./hello.txt",
        "./sub",
        "./sub/empty",
        "./sub/link",
        "./sub/run.sh",
      ]);
    });

    await t.step("nix-cache-info and Cache-Control headers", async () => {
      const info = new TextDecoder().decode((await request(`${url}/nix-cache-info`)).body);
      assert(info.includes("WantMassQuery: 1\n"), info);
      assert(info.includes("Priority: 7\n"), info);
      const ni = await request(`${url}/${digestOf(paths[0].path)}.narinfo`);
      assertEquals(ni.status, 200);
      assertEquals(ni.headers.get("cache-control"), "public, max-age=30");
      const narUrl = /^URL: (.*)$/m.exec(new TextDecoder().decode(ni.body))![1];
      const nar = await request(`${url}/${narUrl}`, { method: "HEAD" });
      assertEquals(nar.status, 200);
      assertEquals(nar.headers.get("cache-control"), "public, max-age=31536000, immutable");
    });

    await t.step("a deleted path is gone at once (narinfo, .ls)", async () => {
      const path = paths[2].path;
      assertEquals((await request(`${url}/${digestOf(path)}.narinfo`)).status, 200);
      await tvixStore(["delete", ...localStoreArgs(store), path]);
      assertEquals((await request(`${url}/${digestOf(path)}.narinfo`)).status, 404);
      assertEquals((await request(`${url}/${digestOf(path)}.ls`)).status, 404);
    });

    await t.step("503 while the daemon is down, 200 again once it is back", async () => {
      const narinfo = `${url}/${digestOf(paths[0].path)}.narinfo`;
      await daemon!.stop();
      const down = await request(narinfo);
      assertEquals(down.status, 503);
      assert(new TextDecoder().decode(down.body).startsWith("store unavailable"));
      daemon = await startServer([
        "daemon",
        `--listen-address=${daemonAddress}`,
        ...localStoreArgs(store),
      ]);
      // grpc-js reconnects with backoff: poll, bounded so a bridge that never
      // recovers fails the test instead of hanging it.
      let status = 0;
      for (let i = 0; i < 120 && status !== 200; i++) {
        status = (await request(narinfo)).status;
        if (status !== 200) await new Promise((r) => setTimeout(r, 500));
      }
      assertEquals(status, 200);
    });

    await t.step("requests are logged at debug level", () => {
      const line = /nar-bridge request method=GET path=\/nix-cache-info status="200" bytes="(\d+)"/;
      assertEquals(line.exec(bridge!.log())?.[1], "50", bridge!.log());
    });
  } finally {
    await bridge?.stop();
    await daemon?.stop();
    await nix.cleanup();
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("daemon's bridge with read tokens: reads and uploads each need their token", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "narbridge-tokens-" });
  const nix = await NixEnv.create();
  let daemon: Server | undefined;
  try {
    await Deno.writeTextFile(join(tmp, "upload"), "up-token\n");
    await Deno.writeTextFile(join(tmp, "read"), "read-token\n");
    daemon = await startServer([
      "daemon",
      "--listen-address=127.0.0.1:0",
      "--nar-bridge-listen-address=127.0.0.1:0",
      `--upload-token-file=${join(tmp, "upload")}`,
      `--read-token-file=${join(tmp, "read")}`,
      ...localStoreArgs(join(tmp, "tvix")),
    ]);
    const d = daemon;
    const url = "http://" + await waitFor(
      () => /nar-bridge listening address=(\S+)/.exec(d.log())?.[1],
      "the nar-bridge address",
    );
    const basic = (password: string) => `Basic ${btoa(`nix:${password}`)}`;
    const status = async (path: string, authorization?: string, method = "GET") =>
      (await request(`${url}${path}`, {
        method,
        headers: authorization ? { authorization } : {},
        body: method === "PUT" ? "x" : undefined,
      })).status;
    assertEquals(await status("/nix-cache-info"), 401);
    assertEquals(await status("/nix-cache-info", "Bearer wrong"), 401);
    assertEquals(await status("/nix-cache-info", basic("wrong")), 401);
    assertEquals(await status("/nix-cache-info", "Bearer read-token"), 200);
    assertEquals(await status("/nix-cache-info", basic("read-token")), 200);
    assertEquals(await status("/nix-cache-info", "Bearer up-token"), 200);
    // A read token does not allow uploading.
    assertEquals(await status("/nar/x.nar", "Bearer read-token", "PUT"), 401);

    // nix uploads with the upload token and reads with the read token, from netrc files.
    const src = join(tmp, "src");
    await makeTree(src, "tokens");
    const path = (await nix.ok("nix-store", ["--store", nix.store, "--add", src])).trim();
    const netrc = async (token: string) => {
      const file = join(tmp, `netrc-${token}`);
      await Deno.writeTextFile(file, `machine 127.0.0.1 password ${token}\n`);
      return ["--option", "netrc-file", file];
    };
    await nix.ok("nix", [
      "copy",
      ...await netrc("up-token"),
      "--store",
      nix.store,
      "--to",
      url,
      path,
    ]);
    const reader = await NixEnv.create();
    try {
      const denied = await reader.run("nix", ["path-info", "--store", url, path]);
      // nix reads the 401 on /nix-cache-info as "not a binary cache".
      assert(denied.code !== 0, "a read without a token must fail");
      assert(/401|does not appear to be a binary cache/.test(denied.stderr), denied.stderr);
      const read = await reader.ok("nix", [
        "store",
        "cat",
        ...await netrc("read-token"),
        "--store",
        url,
        `${path}/hello.txt`,
      ]);
      assertEquals(read, "Hello tokens!\n");
    } finally {
      await reader.cleanup();
    }
  } finally {
    await daemon?.stop();
    await nix.cleanup();
    await Deno.remove(tmp, { recursive: true });
  }
});
