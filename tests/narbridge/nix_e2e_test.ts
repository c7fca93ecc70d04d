/**
 * Debian's real `nix` (nix-bin 2.8) against `tvix-store nar-bridge`
 * processes: reading (path-info, store ls/cat, copy --from), uploading
 * (copy --to with each compression), signatures (store verify with trusted
 * and wrong keys, uploads refused without a trusted signature), and
 * malformed uploads that must leave nothing behind. How nix runs here
 * without a daemon is described in `nix_env.ts`.
 */
import { join } from "node:path";
import { createHash } from "node:crypto";
import { assert, assertEquals } from "../assert.ts";
import { fromBase64 } from "../../src/castore/digest.ts";
import * as nixbase32 from "../../src/store/nixbase32.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { parseNarInfo, renderNarInfo } from "../../src/narbridge/narinfo.ts";
import { setLogLevel } from "../../src/log.ts";
import { NixEnv } from "./nix_env.ts";
import { type Server, startMount, startServer, tvixStore } from "./harness.ts";
import { localStoreArgs } from "../cli/helpers.ts";

setLogLevel("warn");

function sha256(data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(data).digest());
}

/** A tree with a file, an executable, a symlink, nested and empty directories, a 3 MiB file. */
async function makeTree(root: string, tag: string): Promise<void> {
  await Deno.mkdir(join(root, "sub", "empty"), { recursive: true });
  await Deno.writeTextFile(join(root, "hello.txt"), `Hello ${tag}!\n`);
  await Deno.writeTextFile(join(root, "sub", "run.sh"), "#!/bin/sh\necho hi\n", { mode: 0o755 });
  await Deno.symlink("../hello.txt", join(root, "sub", "link"));
  const big = new Uint8Array(3 * 1024 * 1024).map((_, i) => (i * 7919) % 251);
  await Deno.writeFile(join(root, "big.bin"), big);
}

/** PUTs `body`; returns the status. */
async function put(url: string, body: Uint8Array | string): Promise<number> {
  const res = await fetch(url, {
    method: "PUT",
    body: typeof body === "string" ? body : body.slice(),
  });
  await res.body?.cancel();
  return res.status;
}

/**
 * Runs a coreutils command on the FUSE mount in a child process under
 * `timeout`, so a mount that stops answering fails the test instead of
 * blocking this process in a syscall forever.
 */
async function fsRun(cmd: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command("timeout", { args: ["60", cmd, ...args], stderr: "piped" })
    .output();
  const td = new TextDecoder();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${out.code} ${td.decode(out.stderr)}`);
  }
  return td.decode(out.stdout);
}

/** Whether FUSE mounts can work here (as root with /dev/fuse). */
function fuseAvailable(): boolean {
  try {
    Deno.statSync("/dev/fuse");
    return Deno.uid() === 0;
  } catch {
    return false;
  }
}

const MEMORY = [
  "--blob-service-addr=memory://",
  "--directory-service-addr=memory://",
  "--path-info-service-addr=memory://",
];

/** The destinations of `nix copy --to` tried, after the cache's URL. */
const UPLOAD_QUERIES = ["", "?compression=zstd", "?compression=none", "?write-nar-listing=true"];

Deno.test("real nix against nar-bridge", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "narbridge-e2e-" });
  const nix = await NixEnv.create();
  const servers: Server[] = [];
  try {
    const store = join(tmp, "tvix");
    const tree = join(tmp, "tree");
    await makeTree(tree, "tree");
    const dump = (await nix.run("nix-store", ["--dump", tree])).raw;
    // The store as deployed: a daemon owning the data, the bridge and the
    // importer talking to it over gRPC.
    const daemon = await startServer([
      "daemon",
      "--listen-address=127.0.0.1:0",
      ...localStoreArgs(store),
    ]);
    servers.push(daemon);
    const grpc = `grpc+http://${daemon.address}`;
    const grpcArgs = [
      `--blob-service-addr=${grpc}`,
      `--directory-service-addr=${grpc}`,
      `--path-info-service-addr=${grpc}`,
    ];
    const imported = (await tvixStore(["import", ...grpcArgs, tree])).trim();

    const key = (name: string) => ({
      sec: join(tmp, `${name}.sec`),
      pub: join(tmp, `${name}.pub`),
    });
    const k1 = key("k1"), k2 = key("k2");
    await nix.ok("nix-store", ["--generate-binary-cache-key", "k1", k1.sec, k1.pub]);
    await nix.ok("nix-store", ["--generate-binary-cache-key", "k2", k2.sec, k2.pub]);
    const k1pub = (await Deno.readTextFile(k1.pub)).trim();
    const k2pub = (await Deno.readTextFile(k2.pub)).trim();

    const bridge = await startServer([
      "nar-bridge",
      "--listen-address=127.0.0.1:0",
      `--signing-key-file=${k1.sec}`,
      ...grpcArgs,
    ]);
    servers.push(bridge);
    const url = `http://${bridge.address}`;

    await t.step("nix path-info finds the imported path", async () => {
      const [info] = JSON.parse(
        await nix.ok("nix", ["path-info", "--store", url, "--json", imported]),
      );
      assertEquals(info.path, imported);
      assertEquals(fromBase64(info.narHash.slice("sha256-".length)), sha256(dump));
      assertEquals(info.narSize, dump.length);
    });

    await t.step("nix store ls / cat read files of it", async () => {
      const ls = (await nix.ok("nix", ["store", "ls", "--store", url, "-R", imported]))
        .trim().split("\n").sort();
      assertEquals(ls, [
        "./big.bin",
        "./hello.txt",
        "./sub",
        "./sub/empty",
        "./sub/link",
        "./sub/run.sh",
      ]);
      assertEquals(
        await nix.ok("nix", ["store", "cat", "--store", url, `${imported}/hello.txt`]),
        "Hello tree!\n",
      );
      const big = await nix.run("nix", ["store", "cat", "--store", url, `${imported}/big.bin`]);
      assertEquals(big.raw, await Deno.readFile(join(tree, "big.bin")));
    });

    await t.step("nix copy --from: the NAR is byte-identical to nix-store --dump", async () => {
      const dest = join(tmp, "filecache");
      await nix.ok("nix", [
        "copy",
        "--from",
        url,
        "--to",
        `file://${dest}?compression=none`,
        imported,
      ]);
      const digest = imported.slice("/nix/store/".length, "/nix/store/".length + 32);
      const ni = parseNarInfo(await Deno.readTextFile(join(dest, `${digest}.narinfo`)));
      assertEquals(await Deno.readFile(join(dest, ni.url)), dump);
    });

    await t.step("nix store verify accepts our signature with k1, rejects with k2", async () => {
      // Nix trusts content-addressed paths without signatures, so this needs a
      // path without CA (like a build output): uploaded by hand, unsigned.
      const storePath = StorePath.fromParts(sha256(dump).slice(0, 20), "input-addressed");
      const narUrl = `nar/${nixbase32.encode(sha256(dump))}.nar`;
      assertEquals(await put(`${url}/${narUrl}`, dump), 200);
      const narinfo = renderNarInfo({
        storePath,
        url: narUrl,
        compression: "none",
        narHash: sha256(dump),
        narSize: BigInt(dump.length),
        references: [],
        signatures: [],
        flags: {},
      });
      assertEquals(await put(`${url}/${nixbase32.encode(storePath.digest)}.narinfo`, narinfo), 200);
      const path = storePath.absolute();
      const verify = (pub: string) =>
        nix.run("nix", ["store", "verify", "--store", url, "--trusted-public-keys", pub, path]);
      const good = await verify(k1pub);
      assertEquals(good.code, 0, good.stderr);
      const wrong = await verify(k2pub);
      assert(wrong.code !== 0, "verify with a wrong key must fail");
      assert(wrong.stderr.includes("untrusted"), wrong.stderr);
    });

    const uploaded: string[] = [];
    await t.step("nix copy --to uploads (xz default, zstd, none, with a listing)", async () => {
      // write-nar-listing: nix uploads the listing before the narinfo and
      // stops if that fails.
      for (const query of UPLOAD_QUERIES) {
        const src = join(tmp, `up${uploaded.length}`);
        await Deno.mkdir(src);
        await makeTree(src, `upload ${query}`);
        const path = (await nix.ok("nix-store", ["--store", nix.store, "--add", src])).trim();
        await nix.ok("nix", ["copy", "--store", nix.store, "--to", url + query, path]);
        uploaded.push(path);
        assertEquals(
          await nix.ok("nix", ["store", "cat", "--store", url, `${path}/hello.txt`]),
          `Hello upload ${query}!\n`,
        );
        // What we serve back verifies against the local store's NAR hash.
        await nix.ok("nix", [
          "store",
          "verify",
          "--store",
          url,
          "--trusted-public-keys",
          k1pub,
          path,
        ]);
      }
    });

    await t.step("a second path with the same contents uploads to a fresh bridge", async () => {
      // Nix finds the NAR already there (HEAD 200) and sends only the
      // narinfo; the first upload's staging is gone with the first bridge.
      const paths: string[] = [];
      for (const name of ["same-a", "same-b"]) {
        const src = join(tmp, name);
        await Deno.mkdir(src);
        await makeTree(src, "same contents");
        paths.push((await nix.ok("nix-store", ["--store", nix.store, "--add", src])).trim());
      }
      await nix.ok("nix", ["copy", "--store", nix.store, "--to", url, paths[0]]);
      const fresh = await startServer(["nar-bridge", "--listen-address=127.0.0.1:0", ...grpcArgs]);
      servers.push(fresh);
      const freshUrl = `http://${fresh.address}`;
      await nix.ok("nix", ["copy", "--store", nix.store, "--to", freshUrl, paths[1]]);
      assertEquals(
        await nix.ok("nix", ["store", "cat", "--store", freshUrl, `${paths[1]}/hello.txt`]),
        "Hello same contents!\n",
      );
    });

    await t.step(
      "a text-CA path with a reference round-trips (copy --to, path-info -r)",
      async () => {
        // builtins.toFile gives `text:sha256` content addresses
        // (docs/compatibility.md#q13-text-content-addresses-cannot-be-converted-back),
        // and interpolating one into another records a reference.
        const path = await nix.addPathWithReference();
        await nix.ok("nix", ["copy", "--store", nix.store, "--to", url, path]);
        const closure = JSON.parse(
          await nix.ok("nix", ["path-info", "--store", url, "--json", "-r", path]),
        );
        const local = JSON.parse(
          await nix.ok("nix", ["path-info", "--store", nix.store, "--json", "-r", path]),
        );
        const strip = (infos: Record<string, unknown>[]) =>
          infos.map(({ path, narHash, narSize, references, ca }) => ({
            path,
            narHash,
            narSize,
            references,
            ca,
          }));
        assertEquals(strip(closure), strip(local));
        assert(String(closure[0].ca).startsWith("text:sha256:"), closure[0].ca);
        // Content-addressed: nix verifies it without any signature.
        await nix.ok("nix", ["store", "verify", "--store", url, "-r", path]);
      },
    );

    await t.step("malformed uploads get 4xx and leave nothing behind", async () => {
      const src = join(tmp, "bad");
      await Deno.mkdir(src);
      await makeTree(src, "never uploaded");
      const path = (await nix.ok("nix-store", ["--store", nix.store, "--add", src])).trim();
      const nar = (await nix.run("nix-store", ["--dump", src])).raw;
      const storePath = StorePath.parseAbsolute(path);
      const narUrl = `nar/${nixbase32.encode(sha256(nar))}.nar`;
      const narinfo = {
        storePath,
        url: narUrl,
        compression: "none",
        narHash: sha256(nar),
        narSize: BigInt(nar.length),
        references: [],
        signatures: [],
        flags: {},
      };
      const narinfoUrl = `${url}/${nixbase32.encode(storePath.digest)}.narinfo`;
      // Truncated NAR; then its narinfo finds no NAR.
      assertEquals(await put(`${url}/${narUrl}`, nar.slice(0, nar.length - 1000)), 400);
      assertEquals(await put(narinfoUrl, renderNarInfo(narinfo)), 400);
      // A NAR whose file hash disagrees with its name (Nix names it after that hash)...
      const other = (await nix.run("nix-store", ["--dump", tree])).raw;
      assertEquals(await put(`${url}/${narUrl}`, other), 400);
      // ...or, under a name of no hash, whose NAR hash disagrees with the narinfo.
      assertEquals(await put(`${url}/nar/unnamed.nar`, other), 200);
      const unnamed = renderNarInfo({ ...narinfo, url: "nar/unnamed.nar" });
      assertEquals(await put(narinfoUrl, unnamed), 400);
      // Garbage narinfo.
      assertEquals(await put(`${url}/${narUrl}`, nar), 200);
      assertEquals(await put(narinfoUrl, "this is not a narinfo\n"), 400);
      // Nothing became visible.
      assertEquals((await fetch(narinfoUrl)).status, 404);
      const info = await nix.run("nix", ["path-info", "--store", url, path]);
      assert(info.code !== 0, "path must not exist");
    });

    await t.step(
      "with --trusted-public-keys only signed uploads are accepted (zstd NARs)",
      async () => {
        const strict = await startServer([
          "nar-bridge",
          "--listen-address=127.0.0.1:0",
          `--trusted-public-keys=${k2pub} ${k1pub}`,
          "--nar-compression=zstd",
          ...MEMORY,
        ]);
        servers.push(strict);
        const strictUrl = `http://${strict.address}`;
        const path = uploaded[0];
        const refused = await nix.run("nix", [
          "copy",
          "--store",
          nix.store,
          "--to",
          strictUrl,
          path,
        ]);
        assert(refused.code !== 0, "unsigned upload must be refused");
        assert(refused.stderr.includes("403"), refused.stderr);
        await nix.ok("nix", ["store", "sign", "--store", nix.store, "--key-file", k1.sec, path]);
        await nix.ok("nix", ["copy", "--store", nix.store, "--to", strictUrl, path]);
        // This bridge serves zstd NARs; nix reads them.
        assertEquals(
          await nix.ok("nix", ["store", "cat", "--store", strictUrl, `${path}/hello.txt`]),
          "Hello upload !\n",
        );
        await strict.stop();
      },
    );

    await t.step({
      name: "the uploads are in the daemon's store: a FUSE mount over gRPC shows them",
      ignore: !fuseAvailable(),
      fn: async () => {
        const mount = await startMount(grpcArgs);
        try {
          for (const [i, path] of uploaded.entries()) {
            const dir = join(mount.mountpoint, path.slice("/nix/store/".length));
            const query = UPLOAD_QUERIES[i];
            assertEquals(await fsRun("cat", join(dir, "hello.txt")), `Hello upload ${query}!\n`);
            assertEquals(await fsRun("readlink", join(dir, "sub", "link")), "../hello.txt\n");
            assertEquals(
              await fsRun("stat", "-c", "%A", join(dir, "sub", "run.sh")),
              "-r-xr-xr-x\n",
            );
          }
        } finally {
          await mount.stop();
        }
      },
    });

    await t.step("the bridge shuts down cleanly on SIGTERM", async () => {
      assertEquals((await bridge.stop()).code, 0);
    });
  } finally {
    for (const s of servers) await s.stop();
    await nix.cleanup();
    await Deno.remove(tmp, { recursive: true });
  }
});
