/**
 * nar-bridge HTTP behaviour over loopback, with in-memory services and
 * `nix-store --dump` as the oracle for NAR bytes: downloads (plain, zstd,
 * ranges, HEAD), uploads (plain/zstd/xz, signatures), and refusals that
 * leave nothing behind.
 */
import { join } from "node:path";
import { brotliCompressSync, gzipSync, zstdCompressSync, zstdDecompressSync } from "node:zlib";
import { createHash } from "node:crypto";
import { assert, assertEquals } from "../assert.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import { MemoryPathInfoService } from "../../src/store/pathinfo/memory.ts";
import { LocalNarCalculationService } from "../../src/nar/calculation.ts";
import { importPath } from "../../src/store/import.ts";
import * as nixbase32 from "../../src/store/nixbase32.ts";
import { caNarSha256StorePath } from "../../src/store/store_path.ts";
import { type NarBridgeOptions, startNarBridge } from "../../src/narbridge/server.ts";
import {
  type NarInfo,
  narInfoFingerprint,
  parseNarInfo,
  renderNarInfo,
} from "../../src/narbridge/narinfo.ts";
import { SecretKey } from "../../src/narbridge/signing.ts";
import { setLogLevel } from "../../src/log.ts";
import { NAR_CONTENTS_SYMLINK } from "../fixtures.ts";

setLogLevel("error");

const KEY = SecretKey.parse(
  "test-1:oR7yKKT77d4TNJFegTt/2PuXk1qSC6LrEoEDg6525TeUGyjuQpPd3uoT1K/of/vc+AKgBNipoVCRWOeupSBH8w==",
);
interface Fixture {
  url: string;
  services: {
    blob: MemoryBlobService;
    directory: MemoryDirectoryService;
    pathInfo: MemoryPathInfoService;
    narCalculation: LocalNarCalculationService;
  };
  close(): Promise<void>;
}

async function withBridge(opts: NarBridgeOptions, fn: (f: Fixture) => Promise<void>) {
  const blob = new MemoryBlobService();
  const directory = new MemoryDirectoryService();
  const pathInfo = new MemoryPathInfoService();
  const services = {
    blob,
    directory,
    pathInfo,
    narCalculation: new LocalNarCalculationService(blob, directory),
  };
  const bridge = await startNarBridge(services, { ...opts, listenAddress: "127.0.0.1:0" });
  try {
    await fn({ url: `http://127.0.0.1:${bridge.port}`, services, close: bridge.close });
  } finally {
    await bridge.close();
  }
}

/** A tree with a file, an executable, a symlink, nested and empty directories, a 3 MiB file. */
async function makeTree(root: string): Promise<void> {
  await Deno.mkdir(join(root, "sub", "empty"), { recursive: true });
  await Deno.writeTextFile(join(root, "hello.txt"), "Hello World!\n");
  await Deno.writeTextFile(join(root, "sub", "run.sh"), "#!/bin/sh\necho hi\n", { mode: 0o755 });
  await Deno.symlink("../hello.txt", join(root, "sub", "link"));
  const big = new Uint8Array(3 * 1024 * 1024).map((_, i) => (i * 7919) % 251);
  await Deno.writeFile(join(root, "big.bin"), big);
}

async function nixDump(path: string): Promise<Uint8Array> {
  const out = await new Deno.Command("nix-store", { args: ["--dump", path] }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  return out.stdout;
}

async function withTree(fn: (dir: string, nar: Uint8Array) => Promise<void>) {
  const tmp = await Deno.makeTempDir({ prefix: "narbridge-test-" });
  try {
    const dir = join(tmp, "tree");
    await makeTree(dir);
    await fn(dir, await nixDump(dir));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

function sha256(data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(data).digest());
}

async function bytesOf(res: Response): Promise<Uint8Array> {
  return new Uint8Array(await res.arrayBuffer());
}

Deno.test("nix-cache-info", async () => {
  await withBridge({}, async ({ url }) => {
    const res = await fetch(`${url}/nix-cache-info`);
    assertEquals(res.status, 200);
    assertEquals(await res.text(), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 39\n");
  });
});

Deno.test("narinfo and NAR of an imported path; NAR equals nix-store --dump", async () => {
  await withTree(async (dir, nar) => {
    await withBridge({}, async ({ url, services }) => {
      const { storePath } = await importPath(dir, services);
      const digest = nixbase32.encode(storePath.digest);
      const res = await fetch(`${url}/${digest}.narinfo`);
      assertEquals(res.status, 200);
      assertEquals(res.headers.get("content-type"), "text/x-nix-narinfo");
      const ni = parseNarInfo(await res.text());
      assertEquals(ni.storePath.absolute(), storePath.absolute());
      assertEquals(ni.narHash, sha256(nar));
      assertEquals(ni.narSize, BigInt(nar.length));
      assertEquals(ni.compression, "none");
      assertEquals(ni.ca?.method, "nar");
      assertEquals(ni.signatures, []);
      assertEquals(ni.url, `nar/${digest}-${nixbase32.encode(sha256(nar))}.nar`);

      const head = await fetch(`${url}/${ni.url}`, { method: "HEAD" });
      assertEquals(head.status, 200);
      assertEquals(head.headers.get("content-length"), String(nar.length));
      assertEquals(head.headers.get("accept-ranges"), "bytes");
      await head.body?.cancel();

      const got = await fetch(`${url}/${ni.url}`);
      assertEquals(got.status, 200);
      assertEquals(await bytesOf(got), nar);

      const zst = await fetch(`${url}/${ni.url}.zst`);
      assertEquals(zst.status, 200);
      assertEquals(new Uint8Array(zstdDecompressSync(await bytesOf(zst))), nar);
    });
  });
});

Deno.test("Range requests on uncompressed NARs", async () => {
  await withTree(async (dir, nar) => {
    await withBridge({}, async ({ url, services }) => {
      const { storePath } = await importPath(dir, services);
      const ni = parseNarInfo(
        await (await fetch(`${url}/${nixbase32.encode(storePath.digest)}.narinfo`)).text(),
      );
      const n = nar.length;
      const cases: Array<[string, number, number]> = [
        ["bytes=0-0", 0, 0],
        ["bytes=100-2000000", 100, 2000000],
        [`bytes=${n - 10}-`, n - 10, n - 1],
        ["bytes=-5", n - 5, n - 1],
        [`bytes=5-${n + 100}`, 5, n - 1],
      ];
      for (const [range, start, end] of cases) {
        const res = await fetch(`${url}/${ni.url}`, { headers: { range } });
        assertEquals(res.status, 206, range);
        assertEquals(res.headers.get("content-range"), `bytes ${start}-${end}/${n}`);
        assertEquals(await bytesOf(res), nar.slice(start, end + 1), range);
      }
      const bad = await fetch(`${url}/${ni.url}`, { headers: { range: `bytes=${n}-` } });
      assertEquals(bad.status, 416);
      assertEquals(bad.headers.get("content-range"), `bytes */${n}`);
      await bad.body?.cancel();
      // Several ranges: the whole NAR (allowed by RFC 9110).
      const multi = await fetch(`${url}/${ni.url}`, { headers: { range: "bytes=0-1,5-6" } });
      assertEquals(multi.status, 200);
      assertEquals(await bytesOf(multi), nar);
      // If-Range: the rest only while the validator still matches; another
      // entity tag, or a date, gets the whole NAR.
      const etag = multi.headers.get("etag");
      assertEquals(etag, `"${nixbase32.encode(sha256(nar))}"`);
      const resumed = await fetch(`${url}/${ni.url}`, {
        headers: { range: "bytes=10-", "if-range": etag! },
      });
      assertEquals(resumed.status, 206);
      assertEquals(await bytesOf(resumed), nar.slice(10));
      for (const validator of ['"something-else"', "Wed, 21 Oct 2015 07:28:00 GMT"]) {
        const stale = await fetch(`${url}/${ni.url}`, {
          headers: { range: "bytes=10-", "if-range": validator },
        });
        assertEquals(stale.status, 200, validator);
        assertEquals(await bytesOf(stale), nar, validator);
      }
    });
  });
});

Deno.test("absent and malformed download requests get 4xx", async () => {
  await withTree(async (dir) => {
    await withBridge({}, async ({ url, services }) => {
      const { storePath } = await importPath(dir, services);
      const digest = nixbase32.encode(storePath.digest);
      const other = "0".repeat(52);
      const cases: Array<[string, string, number]> = [
        ["GET", `/${"1".repeat(32)}.narinfo`, 404],
        ["HEAD", `/${"1".repeat(32)}.narinfo`, 404],
        ["GET", `/${"1".repeat(32)}.ls`, 404],
        ["GET", "/nar/never-uploaded.nar.xz", 404],
        ["GET", `/nar/${digest}-${other}.nar`, 404], // stale NAR hash
        ["GET", `/nar/${"1".repeat(32)}-${other}.nar`, 404],
        ["GET", "/eeee.narinfo", 404],
        ["GET", "/", 404],
        ["DELETE", `/${digest}.narinfo`, 405],
      ];
      for (const [method, path, status] of cases) {
        const res = await fetch(url + path, { method });
        assertEquals(res.status, status, `${method} ${path}`);
        if (status === 405) assertEquals(res.headers.get("allow"), "GET, HEAD, PUT");
        await res.body?.cancel();
      }
    });
  });
});

/** The narinfo `nix copy --to` would upload for `nar` (compressed as `file`) at `narUrl`. */
function uploadNarInfo(nar: Uint8Array, file: Uint8Array, narUrl: string, compression: string) {
  const narHash = sha256(nar);
  const ni: NarInfo = {
    storePath: caNarSha256StorePath(narHash, "tree"),
    url: narUrl,
    compression,
    fileHash: sha256(file),
    fileSize: BigInt(file.length),
    narHash,
    narSize: BigInt(nar.length),
    references: [],
    signatures: [],
    ca: { method: "nar", algo: "sha256", digest: narHash },
    flags: {},
  };
  return ni;
}

async function put(url: string, body: Uint8Array | string): Promise<Response> {
  const res = await fetch(url, {
    method: "PUT",
    body: typeof body === "string" ? body : body.slice(),
  });
  await res.body?.cancel();
  return res;
}

/** Compresses with a command-line tool (`xz`, `bzip2`) as Nix's libarchive would. */
async function viaTool(tool: string, data: Uint8Array): Promise<Uint8Array> {
  const child = new Deno.Command(tool, { args: ["-c"], stdin: "piped", stdout: "piped" }).spawn();
  const w = child.stdin.getWriter();
  await w.write(data);
  await w.close();
  return (await child.output()).stdout;
}

Deno.test("uploads in every compression Nix offers: NAR then narinfo makes the path visible", async () => {
  await withTree(async (_dir, nar) => {
    for (
      const [ext, compression, file] of [
        ["", "none", nar],
        [".zst", "zstd", new Uint8Array(zstdCompressSync(nar))],
        [".xz", "xz", await viaTool("xz", nar)],
        [".bz2", "bzip2", await viaTool("bzip2", nar)],
        // Nix names gzip uploads plain `.nar`: recognised by content.
        ["", "gzip", new Uint8Array(gzipSync(nar))],
        [".br", "br", new Uint8Array(brotliCompressSync(nar))],
      ] as const
    ) {
      await withBridge({ signingKey: KEY }, async ({ url, services }) => {
        const narUrl = `nar/${nixbase32.encode(sha256(file))}.nar${ext}`;
        const ni = uploadNarInfo(nar, file, narUrl, compression);
        const digest = nixbase32.encode(ni.storePath.digest);
        assertEquals((await put(`${url}/${narUrl}`, file)).status, 200, compression);
        // Not visible before the narinfo arrives.
        assertEquals(await services.pathInfo.get(ni.storePath.digest), undefined);
        assertEquals((await put(`${url}/${digest}.narinfo`, renderNarInfo(ni))).status, 200);
        const info = await services.pathInfo.get(ni.storePath.digest);
        assert(info, "PathInfo stored");
        assertEquals(info.narinfo?.narSize, BigInt(nar.length));
        // And served back, signed with our key, with a NAR equal to the upload.
        const served = parseNarInfo(await (await fetch(`${url}/${digest}.narinfo`)).text());
        assertEquals(served.signatures.length, 1);
        assert(KEY.publicKey.verify(narInfoFingerprint(served), served.signatures[0]));
        assertEquals(await bytesOf(await fetch(`${url}/${served.url}`)), nar);
      });
    }
  });
});

Deno.test("refused uploads get 4xx and leave no PathInfo", async () => {
  await withTree(async (_dir, nar) => {
    await withBridge({}, async ({ url, services }) => {
      const narUrl = `nar/${nixbase32.encode(sha256(nar))}.nar`;
      const ni = uploadNarInfo(nar, nar, narUrl, "none");
      const digest = nixbase32.encode(ni.storePath.digest);
      const narinfoUrl = `${url}/${digest}.narinfo`;

      // A narinfo whose NAR never arrived.
      assertEquals((await put(narinfoUrl, renderNarInfo(ni))).status, 400);
      // A truncated NAR, then its narinfo.
      assertEquals((await put(`${url}/${narUrl}`, nar.slice(0, nar.length - 100))).status, 400);
      assertEquals((await put(narinfoUrl, renderNarInfo(ni))).status, 400);
      // Garbage instead of a NAR; a corrupt zstd stream.
      assertEquals((await put(`${url}/${narUrl}`, "garbage")).status, 400);
      const zst = new Uint8Array(zstdCompressSync(nar));
      assertEquals((await put(`${url}/nar/x.nar.zst`, zst.slice(0, zst.length >> 1))).status, 400);
      zst[10] ^= 0xff;
      assertEquals((await put(`${url}/nar/x.nar.zst`, zst)).status, 400);
      // A whole NAR whose hash disagrees with the narinfo.
      assertEquals((await put(`${url}/${narUrl}`, nar)).status, 200);
      const wrongHash = { ...ni, narHash: sha256(new Uint8Array([1])) };
      assertEquals((await put(narinfoUrl, renderNarInfo(wrongHash))).status, 400);
      // Wrong size, wrong file size, wrong file hash.
      assertEquals((await put(narinfoUrl, renderNarInfo({ ...ni, narSize: 1n }))).status, 400);
      assertEquals((await put(narinfoUrl, renderNarInfo({ ...ni, fileSize: 1n }))).status, 400);
      const wrongFile = { ...ni, fileHash: sha256(new Uint8Array([2])) };
      assertEquals((await put(narinfoUrl, renderNarInfo(wrongFile))).status, 400);
      // Garbage narinfo; narinfo uploaded under another path's name.
      assertEquals((await put(narinfoUrl, "StorePath: nonsense\n")).status, 400);
      assertEquals((await put(`${url}/${"1".repeat(32)}.narinfo`, renderNarInfo(ni))).status, 400);
      assertEquals((await put(narinfoUrl, new Uint8Array([0xff, 0xfe]))).status, 400);

      assertEquals(await services.pathInfo.get(ni.storePath.digest), undefined);
      assertEquals((await fetch(narinfoUrl)).status, 404);
      // The staged NAR is still good for the right narinfo.
      assertEquals((await put(narinfoUrl, renderNarInfo(ni))).status, 200);
      assert(await services.pathInfo.get(ni.storePath.digest));
    });
  });
});

Deno.test("trusted keys: unsigned and wrongly signed uploads are refused", async () => {
  await withTree(async (_dir, nar) => {
    await withBridge({ trustedKeys: [KEY.publicKey] }, async ({ url, services }) => {
      const narUrl = `nar/${nixbase32.encode(sha256(nar))}.nar`;
      const ni = uploadNarInfo(nar, nar, narUrl, "none");
      const narinfoUrl = `${url}/${nixbase32.encode(ni.storePath.digest)}.narinfo`;
      assertEquals((await put(`${url}/${narUrl}`, nar)).status, 200);
      assertEquals((await put(narinfoUrl, renderNarInfo(ni))).status, 403);
      assertEquals((await put(`${url}/${narUrl}`, nar)).status, 200);
      const forged = { ...KEY.sign(narInfoFingerprint(ni)) };
      forged.data = forged.data.slice();
      forged.data[3] ^= 1;
      assertEquals(
        (await put(narinfoUrl, renderNarInfo({ ...ni, signatures: [forged] }))).status,
        403,
      );
      assertEquals(await services.pathInfo.get(ni.storePath.digest), undefined);
      // The refusals left the NAR waiting: the signed narinfo completes the upload.
      const signed = { ...ni, signatures: [KEY.sign(narInfoFingerprint(ni))] };
      assertEquals((await put(narinfoUrl, renderNarInfo(signed))).status, 200);
      assert(await services.pathInfo.get(ni.storePath.digest));
    });
  });
});

Deno.test("a stalled download does not hold up other requests", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "narbridge-test-" });
  try {
    await Deno.writeFile(join(tmp, "big"), new Uint8Array(64 * 1024 * 1024).fill(1));
    await withBridge({}, async ({ url, services }) => {
      const { storePath } = await importPath(join(tmp, "big"), services);
      const digest = nixbase32.encode(storePath.digest);
      const ni = parseNarInfo(await (await fetch(`${url}/${digest}.narinfo`)).text());
      // Start a download and read just one piece, then leave it hanging.
      const slow = await fetch(`${url}/${ni.url}`);
      const reader = slow.body!.getReader();
      assert(!(await reader.read()).done);
      const others = await Promise.all(
        Array.from({ length: 32 }, () => fetch(`${url}/${digest}.narinfo`).then((r) => r.text())),
      );
      assert(others.every((t) => t.startsWith(`StorePath: ${storePath.absolute()}`)));
      // A client that goes away releases its renderer.
      await reader.cancel();
    });
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("one uploaded NAR serves every narinfo naming it (identical contents)", async () => {
  await withTree(async (_dir, nar) => {
    await withBridge({}, async ({ url, services }) => {
      const narUrl = `nar/${nixbase32.encode(sha256(nar))}.nar`;
      assertEquals((await put(`${url}/${narUrl}`, nar)).status, 200);
      for (const name of ["first", "second"]) {
        const ni = { ...uploadNarInfo(nar, nar, narUrl, "none") };
        ni.storePath = caNarSha256StorePath(ni.narHash, name);
        const digest = nixbase32.encode(ni.storePath.digest);
        assertEquals((await put(`${url}/${digest}.narinfo`, renderNarInfo(ni))).status, 200);
        assert(await services.pathInfo.get(ni.storePath.digest), name);
      }
    });
  });
});

Deno.test("an upload aborted half-way leaves nothing and the server keeps serving", async () => {
  await withTree(async (_dir, nar) => {
    await withBridge({}, async ({ url, services }) => {
      const narUrl = `nar/${nixbase32.encode(sha256(nar))}.nar`;
      const abort = new AbortController();
      let sent = 0;
      const body = new ReadableStream<Uint8Array>({
        pull(ctrl) {
          if (sent >= nar.length / 2) {
            abort.abort(); // the client gives up mid-upload
            return;
          }
          ctrl.enqueue(nar.slice(sent, sent + 65536));
          sent += 65536;
        },
      });
      const upload = fetch(`${url}/${narUrl}`, { method: "PUT", body, signal: abort.signal });
      await upload.then((r) => r.body?.cancel(), () => {});
      const ni = uploadNarInfo(nar, nar, narUrl, "none");
      const narinfoUrl = `${url}/${nixbase32.encode(ni.storePath.digest)}.narinfo`;
      assertEquals((await put(narinfoUrl, renderNarInfo(ni))).status, 400);
      assertEquals(await services.pathInfo.get(ni.storePath.digest), undefined);
      const info = await fetch(`${url}/nix-cache-info`);
      assertEquals(info.status, 200);
      await info.body?.cancel();
    });
  });
});

Deno.test("a NAR that cannot be rendered (missing blob) is cut short, the server lives on", async () => {
  await withBridge({}, async ({ url, services }) => {
    const basename = "00000000000000000000000000000000-missing";
    await services.pathInfo.put({
      node: {
        node: {
          $case: "file",
          value: {
            name: new TextEncoder().encode(basename),
            digest: new Uint8Array(32).fill(9),
            size: 5n,
            executable: false,
          },
        },
      },
      references: [],
      narinfo: {
        narSize: 120n,
        narSha256: new Uint8Array(32).fill(1),
        signatures: [],
        referenceNames: [],
        deriver: undefined,
        ca: undefined,
        upload: undefined,
      },
    });
    const ni = parseNarInfo(await (await fetch(`${url}/${"0".repeat(32)}.narinfo`)).text());
    const res = await fetch(`${url}/${ni.url}`);
    // Headers went out before the renderer found the blob missing: the body fails.
    let failed = false;
    try {
      await res.arrayBuffer();
    } catch {
      failed = true;
    }
    assert(failed, "truncated body must fail");
    const again = await fetch(`${url}/nix-cache-info`);
    assertEquals(again.status, 200);
    await again.body?.cancel();
  });
});

Deno.test("a PathInfo stored without NAR metadata gets it computed for its narinfo", async () => {
  await withBridge({}, async ({ url, services }) => {
    await services.pathInfo.put({
      node: {
        node: {
          $case: "symlink",
          value: {
            name: new TextEncoder().encode("00000000000000000000000000000000-link"),
            target: new TextEncoder().encode("/nix/store/somewhereelse"),
          },
        },
      },
      references: [],
      narinfo: undefined,
    });
    const ni = parseNarInfo(await (await fetch(`${url}/${"0".repeat(32)}.narinfo`)).text());
    const nar = await bytesOf(await fetch(`${url}/${ni.url}`));
    assertEquals(nar, NAR_CONTENTS_SYMLINK);
    assertEquals(ni.narHash, sha256(NAR_CONTENTS_SYMLINK));
    assertEquals(ni.narSize, BigInt(NAR_CONTENTS_SYMLINK.length));
  });
});

Deno.test("a stored signature that could not verify never reaches a narinfo (no injected lines)", async () => {
  await withTree(async (dir) => {
    await withBridge({ signingKey: KEY }, async ({ url, services }) => {
      const { storePath, pathInfo } = await importPath(dir, services);
      // PathInfos are stored with whatever signatures a client sends.
      const good = KEY.sign("anything");
      pathInfo.narinfo!.signatures = [
        { name: "evil\nURL: nar/bogus.nar\nCompression: xz", data: good.data },
        { name: "short", data: new Uint8Array(10) },
        { name: "other-1", data: good.data },
      ];
      await services.pathInfo.put(pathInfo);
      const res = await fetch(`${url}/${nixbase32.encode(storePath.digest)}.narinfo`);
      assertEquals(res.status, 200);
      const text = await res.text();
      const lines = text.trimEnd().split("\n");
      assertEquals(lines.filter((l) => l.startsWith("URL: ")).length, 1, text);
      assertEquals(lines.filter((l) => l.startsWith("Compression: ")).length, 1, text);
      const ni = parseNarInfo(text);
      assertEquals(ni.signatures.map((s) => s.name), ["other-1", KEY.name]);
      assert(KEY.publicKey.verify(narInfoFingerprint(ni), ni.signatures[1]));
    });
  });
});
