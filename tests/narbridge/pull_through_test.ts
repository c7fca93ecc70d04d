/**
 * Pull-through against real upstreams: nix's own `file://` binary cache
 * (written by `nix copy --to`, signed or not), served over HTTP by Python's
 * http.server, behind an upstream listed first that closes every
 * connection. Signed paths are copied in once (also under concurrent
 * requests) and served to real nix byte for byte; unsigned ones are
 * refused; after the upstream stops, pulled paths are still served and
 * unknown ones get 502. The metrics count the pulls.
 * An upstream that stalls (no answer, or a NAR that stops) fails the pull.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { createHash } from "node:crypto";
import { narInfoFingerprint, parseNarInfo, renderNarInfo } from "../../src/narbridge/narinfo.ts";
import { type NamedSignature, SecretKey } from "../../src/narbridge/signing.ts";
import { StorePath } from "../../src/store/store_path.ts";
import * as nixbase32 from "../../src/store/nixbase32.ts";
import { setLogLevel } from "../../src/log.ts";
import { NixEnv } from "./nix_env.ts";
import { startServer, waitFor } from "./harness.ts";
import { sampleValue, scrape } from "../prometheus.ts";

setLogLevel("warn");

const MEMORY = [
  "--blob-service-addr=memory://",
  "--directory-service-addr=memory://",
  "--path-info-service-addr=memory://",
];

/**
 * An upstream that is down: it holds a loopback port, so that no listener
 * started later (the bridge's own, bound to port 0) can be handed the same
 * one, and closes every connection before answering.
 */
function deadUpstream(): { url: string; stop(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of listener) conn.close();
  })().catch(() => {});
  return {
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    stop: () => listener.close(),
  };
}

/** `python3 -m http.server` over `dir` on a port it binds itself, once it answers. */
async function staticServer(dir: string): Promise<{ url: string; stop(): Promise<void> }> {
  const child = new Deno.Command("/usr/bin/python3", {
    args: ["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", dir],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  // It prints "Serving HTTP on 127.0.0.1 port N (...)" once it listens.
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let printed = "";
  let port: string | undefined;
  while (port === undefined) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`http.server did not start: ${printed}`);
    printed += value;
    port = / port (\d+) /.exec(printed)?.[1];
  }
  // The rest of its output (nothing, with -u and stderr elsewhere) is dropped.
  reader.cancel().catch(() => {});
  const url = `http://127.0.0.1:${port}`;
  await (await fetch(`${url}/nix-cache-info`)).body?.cancel();
  return {
    url,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

const digestOf = (path: string) => nixbase32.encode(StorePath.parseAbsolute(path).digest);

Deno.test("pull-through from a signed nix binary cache", async (t) => {
  const nix = await NixEnv.create();
  const tmp = await Deno.makeTempDir({ prefix: "narbridge-pull-" });
  const dead = deadUpstream();
  let upstream: { url: string; stop(): Promise<void> } | undefined;
  let bridge: Awaited<ReturnType<typeof startServer>> | undefined;
  try {
    const sec = join(tmp, "up.sec"), pub = join(tmp, "up.pub");
    await nix.ok("nix-store", ["--generate-binary-cache-key", "up-1", sec, pub]);
    const add = async (name: string, text: string) => {
      const src = join(tmp, name);
      await Deno.mkdir(join(src, "sub"), { recursive: true });
      await Deno.writeTextFile(join(src, "sub", "file.txt"), text);
      await Deno.writeFile(
        join(src, "big.bin"),
        new Uint8Array(300_000).map((_, i) => (i * 131 + text.length) % 251),
      );
      const path = (await nix.ok("nix-store", ["--store", nix.store, "--add", src])).trim();
      return { path, dump: (await nix.run("nix-store", ["--dump", src])).raw };
    };
    const signed = await add("signed", "signed\n");
    const unsigned = await add("unsigned", "unsigned\n");
    const withRef = await nix.addPathWithReference();
    const damaged = await add("damaged", "damaged\n");
    const cache = join(tmp, "cache");
    // xz (nix's default) for one, zstd for the closure, and an unsigned path.
    await nix.ok("nix", [
      "copy",
      "--store",
      nix.store,
      "--to",
      `file://${cache}?secret-key=${sec}`,
      signed.path,
    ]);
    await nix.ok("nix", [
      "copy",
      "--store",
      nix.store,
      "--to",
      `file://${cache}?secret-key=${sec}&compression=zstd`,
      withRef,
    ]);
    await nix.ok("nix", ["copy", "--store", nix.store, "--to", `file://${cache}`, unsigned.path]);
    await nix.ok("nix", [
      "copy",
      "--store",
      nix.store,
      "--to",
      `file://${cache}?secret-key=${sec}&compression=none`,
      damaged.path,
    ]);
    // Its signed narinfo stays; one byte of its NAR changes.
    const damagedInfo = await Deno.readTextFile(join(cache, `${digestOf(damaged.path)}.narinfo`));
    const damagedNar = join(cache, parseNarInfo(damagedInfo).url);
    const bytes = await Deno.readFile(damagedNar);
    bytes[bytes.length >> 1] ^= 1; // inside big.bin
    await Deno.writeFile(damagedNar, bytes);

    upstream = await staticServer(cache);
    bridge = await startServer([
      "nar-bridge",
      "--listen-address=127.0.0.1:0",
      "--metrics-listen-address=127.0.0.1:0",
      `--upstream=${dead.url}`, // answers nothing: skipped
      `--upstream=${upstream.url}`,
      `--upstream-trusted-public-keys=${(await Deno.readTextFile(pub)).trim()}`,
      ...MEMORY,
    ]);
    const url = `http://${bridge.address}`;
    const metricsAddress = / serving metrics address=(\S+)/.exec(bridge.log())![1];

    await t.step("a signed path is pulled once, under concurrent requests", async () => {
      const narinfoUrl = `${url}/${digestOf(signed.path)}.narinfo`;
      const answers = await Promise.all(
        Array.from({ length: 6 }, async () => {
          const res = await fetch(narinfoUrl);
          return { status: res.status, text: await res.text() };
        }),
      );
      for (const a of answers) assertEquals(a.status, 200, a.text);
      const ni = parseNarInfo(answers[0].text);
      assertEquals(ni.storePath.absolute(), signed.path);
      assert(ni.url.startsWith("nar/"), `served from our store: ${ni.url}`);
      assertEquals(ni.narSize, BigInt(signed.dump.length));
      assert(ni.signatures.some((s) => s.name === "up-1"), "the upstream's signature is kept");
      assert(ni.ca !== undefined, "and its CA");
      const pulls = bridge!.log().split("\n").filter((l) =>
        l.includes("pulled from upstream") && l.includes(signed.path)
      );
      assertEquals(pulls.length, 1, bridge!.log());
      assert(/ narSize="?\d+"? ms="?\d+"? /.test(pulls[0]), pulls[0]);
    });

    const copyFromBridge = async (path: string, dest: string) => {
      await nix.ok("nix", [
        "copy",
        "--from",
        url,
        "--to",
        `file://${dest}?compression=none`,
        path,
      ]);
      const ni = parseNarInfo(await Deno.readTextFile(join(dest, `${digestOf(path)}.narinfo`)));
      return Deno.readFile(join(dest, ni.url));
    };

    await t.step("nix copy --from the bridge: byte-equal to nix-store --dump", async () => {
      assertEquals(await copyFromBridge(signed.path, join(tmp, "dest1")), signed.dump);
    });

    await t.step("a path with a reference comes with its closure (zstd upstream)", async () => {
      const res = await fetch(`${url}/${digestOf(withRef)}.narinfo`);
      const ni = parseNarInfo(await res.text());
      assertEquals(res.status, 200);
      assertEquals(ni.references.length, 1);
      const dep = ni.references[0].absolute();
      const dest = join(tmp, "dest2");
      const nar = await copyFromBridge(withRef, dest);
      // The chroot store's file itself (nix-store --dump ignores --store).
      const want = (await nix.run("nix-store", ["--dump", join(nix.store, withRef)])).raw;
      assertEquals(nar, want);
      assert((await Deno.stat(join(dest, `${digestOf(dep)}.narinfo`))).isFile, "dep copied");
    });

    await t.step("an unsigned upstream path is never served", async () => {
      const res = await fetch(`${url}/${digestOf(unsigned.path)}.narinfo`);
      await res.body?.cancel();
      assertEquals(res.status, 404);
    });

    await t.step("a NAR that does not match its narinfo is not stored: 502", async () => {
      for (let i = 0; i < 2; i++) {
        const res = await fetch(`${url}/${digestOf(damaged.path)}.narinfo`);
        const body = await res.text();
        assertEquals(res.status, 502, body);
        assert(body.includes("NarHash"), body);
      }
    });

    await t.step("metrics count the pulls", async () => {
      const m = await scrape(metricsAddress);
      assertEquals(sampleValue(m, "tvix_narbridge_pulled_paths_total"), 3);
      const narBytes = signed.dump.length + (await Deno.stat(join(nix.store, withRef))).size;
      assert(sampleValue(m, "tvix_narbridge_pulled_nar_bytes_total") > narBytes);
      // Six requests waited for the first pull, one each for the other two.
      assertEquals(sampleValue(m, "tvix_narbridge_narinfo_lookups_total", { result: "pulled" }), 8);
      assertEquals(sampleValue(m, "tvix_narbridge_narinfo_lookups_total", { result: "miss" }), 1);
      assert(sampleValue(m, "tvix_narbridge_narinfo_lookups_total", { result: "hit" }) >= 5);
    });

    await t.step("the daemon's binary cache pulls through too", async () => {
      const daemon = await startServer([
        "daemon",
        "--listen-address=127.0.0.1:0",
        "--nar-bridge-listen-address=127.0.0.1:0",
        `--upstream=${upstream!.url}`,
        `--upstream-trusted-public-keys=${(await Deno.readTextFile(pub)).trim()}`,
        ...MEMORY,
      ]);
      try {
        const http = await waitFor(
          () => /nar-bridge listening address=(\S+)/.exec(daemon.log())?.[1],
          "the daemon's nar-bridge address",
        );
        const res = await fetch(`http://${http}/${digestOf(signed.path)}.narinfo`);
        assertEquals(res.status, 200, await res.text());
        assert(daemon.log().includes(`pulled from upstream path=${signed.path}`), daemon.log());
      } finally {
        assertEquals((await daemon.stop()).code, 0);
      }
    });

    await upstream.stop();
    upstream = undefined;

    await t.step("with the upstream gone, pulled paths are still served", async () => {
      assertEquals(await copyFromBridge(signed.path, join(tmp, "dest3")), signed.dump);
      const res = await fetch(`${url}/${digestOf(unsigned.path)}.narinfo`);
      await res.body?.cancel();
      assertEquals(res.status, 404, "the recent miss is remembered");
    });

    await t.step("a path nobody can answer for: 502", async () => {
      const res = await fetch(`${url}/${"0".repeat(32)}.narinfo`);
      const body = await res.text();
      assertEquals(res.status, 502, body);
      assert(body.includes("no upstream answered"), body);
    });
  } catch (err) {
    if (bridge) console.error(bridge.log());
    throw err;
  } finally {
    await upstream?.stop();
    dead.stop();
    if (bridge) assertEquals((await bridge.stop()).code, 0);
    await nix.cleanup();
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("pull-through: an upstream that stalls or points elsewhere fails the pull (502), nothing is stored", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "narbridge-stall-" });
  const sec = join(tmp, "k.sec"), pub = join(tmp, "k.pub");
  const keygen = await new Deno.Command("nix-store", {
    args: ["--generate-binary-cache-key", "stall-1", sec, pub],
  }).output();
  assert(keygen.success);
  const key = await SecretKey.fromFile(sec);
  await Deno.writeTextFile(join(tmp, "file"), "x".repeat(10_000));
  const nar = (await new Deno.Command("nix-store", { args: ["--dump", join(tmp, "file")] })
    .output()).stdout;
  const narHash = new Uint8Array(createHash("sha256").update(nar).digest());
  const narinfoFor = (name: string) => {
    const ni = {
      storePath: StorePath.fromParts(crypto.getRandomValues(new Uint8Array(20)), name),
      url: `nar/${name}.nar`,
      compression: "none",
      narHash,
      narSize: BigInt(nar.length),
      references: [],
      signatures: [] as NamedSignature[],
      flags: {},
    };
    ni.signatures.push(key.sign(narInfoFingerprint(ni)));
    return ni;
  };
  // One narinfo whose NAR stops after 100 bytes, one request never answered.
  const slowNar = narinfoFor("slow-nar");
  const silent = narinfoFor("silent");
  const elsewhere = { ...narinfoFor("elsewhere"), url: "http://127.0.0.1:1/nar/elsewhere.nar" };
  const { promise: released, resolve: release } = Promise.withResolvers<void>();
  let silentAsked = Promise.withResolvers<void>();
  const upstream = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const path = new URL(req.url).pathname;
    if (path === `/${digestOf(slowNar.storePath.absolute())}.narinfo`) {
      return new Response(renderNarInfo(slowNar));
    }
    if (path === `/${digestOf(elsewhere.storePath.absolute())}.narinfo`) {
      return new Response(renderNarInfo(elsewhere));
    }
    if (path === "/nar/slow-nar.nar") {
      return new Response(
        new ReadableStream({
          start: (c) => c.enqueue(nar.slice(0, 100)),
          pull: () => released,
        }),
      );
    }
    if (path === `/${digestOf(silent.storePath.absolute())}.narinfo`) {
      silentAsked.resolve();
      return released.then(() => new Response("late\n", { status: 500 }));
    }
    return new Response("not found\n", { status: 404 });
  });
  const bridge = await startServer([
    "nar-bridge",
    "--listen-address=127.0.0.1:0",
    `--upstream=http://127.0.0.1:${upstream.addr.port}`,
    `--upstream-trusted-public-keys=${(await Deno.readTextFile(pub)).trim()}`,
    "--upstream-timeout=1s",
    ...MEMORY,
  ]);
  try {
    const url = `http://${bridge.address}`;
    const cases = [
      [slowNar, "stalled"],
      [silent, "no answer within 1 s"],
      [elsewhere, "leaves http://127.0.0.1:"],
    ] as const;
    for (const [ni, says] of cases) {
      for (let i = 0; i < 2; i++) {
        const res = await fetch(`${url}/${digestOf(ni.storePath.absolute())}.narinfo`);
        const body = await res.text();
        assertEquals(res.status, 502, body);
        assert(body.toLowerCase().includes(says), body);
      }
    }
    const info = await fetch(`${url}/nix-cache-info`);
    assertEquals(info.status, 200, "still serving");
    await info.body?.cancel();

    // A pull waiting for an upstream does not hold a shutdown up.
    const patient = await startServer([
      "nar-bridge",
      "--listen-address=127.0.0.1:0",
      `--upstream=http://127.0.0.1:${upstream.addr.port}`,
      `--upstream-trusted-public-keys=${(await Deno.readTextFile(pub)).trim()}`,
      "--upstream-timeout=1h",
      ...MEMORY,
    ]);
    silentAsked = Promise.withResolvers<void>();
    const waiting = fetch(
      `http://${patient.address}/${digestOf(silent.storePath.absolute())}.narinfo`,
    )
      .then(async (res) => ({ status: res.status, body: await res.text() }));
    await silentAsked.promise;
    const stopped = patient.stop();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const hung = new Promise<"hung">((r) => (timer = setTimeout(() => r("hung"), 20_000)));
    const outcome = await Promise.race([stopped, hung]).finally(() => clearTimeout(timer));
    assert(outcome !== "hung", `nar-bridge did not exit:\n${patient.log()}`);
    assertEquals(outcome.code, 0, patient.log());
    const answer = await waiting;
    assertEquals(answer.status, 502, answer.body);
    assert(answer.body.includes("shutting down"), answer.body);
  } catch (err) {
    console.error(bridge.log());
    throw err;
  } finally {
    release();
    assertEquals((await bridge.stop()).code, 0);
    await upstream.shutdown();
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("pull-through: a NAR longer than its signed narinfo says is cut off, not stored whole", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "narbridge-long-" });
  try {
    const sec = join(tmp, "k.sec"), pub = join(tmp, "k.pub");
    const keygen = await new Deno.Command("nix-store", {
      args: ["--generate-binary-cache-key", "long-1", sec, pub],
    }).output();
    assert(keygen.success);
    const key = await SecretKey.fromFile(sec);
    const dump = async (size: number) => {
      const file = join(tmp, `f${size}`);
      const data = new Uint8Array(size);
      for (let o = 0; o < size; o += 65536) crypto.getRandomValues(data.subarray(o, o + 65536));
      await Deno.writeFile(file, data);
      return (await new Deno.Command("nix-store", { args: ["--dump", file] }).output()).stdout;
    };
    // What the narinfo describes, and the much longer NAR served in its place.
    const small = await dump(10_000);
    const large = await dump(64 << 20);
    // Signed narinfos of the small NAR: one without FileSize (cut by
    // NarSize), one with it (cut by the file's size, before decompressing).
    const signedFor = (name: string, fileSize?: bigint) => {
      const ni = {
        storePath: StorePath.fromParts(crypto.getRandomValues(new Uint8Array(20)), name),
        url: "nar/long.nar",
        compression: "none",
        narHash: new Uint8Array(createHash("sha256").update(small).digest()),
        narSize: BigInt(small.length),
        fileSize,
        references: [],
        signatures: [] as NamedSignature[],
        flags: {},
      };
      ni.signatures.push(key.sign(narInfoFingerprint(ni)));
      return ni;
    };
    const infos = [signedFor("long"), signedFor("long-file", BigInt(small.length))];
    let sent = 0;
    const upstream = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
      const path = new URL(req.url).pathname;
      for (const ni of infos) {
        if (path === `/${digestOf(ni.storePath.absolute())}.narinfo`) {
          return new Response(renderNarInfo(ni));
        }
      }
      if (path !== "/nar/long.nar") return new Response("not found\n", { status: 404 });
      let at = 0;
      return new Response(
        new ReadableStream({
          pull: (c) => {
            if (at >= large.length) return c.close();
            const piece = large.slice(at, at + 65536);
            at += piece.length;
            sent += piece.length;
            c.enqueue(piece);
          },
        }),
      );
    });
    const bridge = await startServer([
      "nar-bridge",
      "--listen-address=127.0.0.1:0",
      `--upstream=http://127.0.0.1:${upstream.addr.port}`,
      `--upstream-trusted-public-keys=${(await Deno.readTextFile(pub)).trim()}`,
      ...MEMORY,
    ]);
    try {
      for (const [ni, says] of [[infos[0], "NarSize"], [infos[1], "FileSize"]] as const) {
        sent = 0;
        const res = await fetch(
          `http://${bridge.address}/${digestOf(ni.storePath.absolute())}.narinfo`,
        );
        const body = await res.text();
        assertEquals(res.status, 502, body);
        assert(body.includes(says), body);
        assert(sent < 16 << 20, `the upstream sent ${sent >> 20} MiB of a NAR said to be 10 kB`);
      }
    } finally {
      await bridge.stop();
      await upstream.shutdown();
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
