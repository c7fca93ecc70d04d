/**
 * What a new user meets first, as real processes: one clear line (and a
 * non-zero exit) for an unreachable daemon, a bad service URL, a taken
 * port, a missing import path and a missing argument; `--version` and the
 * help answering without loading the subcommands; the help's list of
 * subcommands agreeing with what the subcommand modules register.
 */
import { join } from "node:path";
import { Command } from "commander";
import { assert, assertEquals, assertMatch, assertThrows } from "../assert.ts";
import { childEnv, localStoreArgs, MAIN, startServer, tvixStore } from "./helpers.ts";
import { DEFAULT_DAEMON_ADDR, serviceAddrArgs } from "../../src/cli/common.ts";
import { SUBCOMMANDS } from "../../src/cli/subcommands.ts";
import {
  checkServiceUrl,
  SERVICE_URL_FORMS,
  type ServiceKind,
} from "../../src/castore/service_url.ts";
import { blobServiceFromUrl } from "../../src/castore/blob/from_url.ts";
import { directoryServiceFromUrl } from "../../src/castore/directory/from_url.ts";
import { pathInfoServiceFromUrl } from "../../src/store/pathinfo/from_url.ts";
import { DEFAULT_REMOTE_ADDR } from "../../src/store/services.ts";
import { DEFAULT_GRACE_MS } from "../../src/store/gc.ts";
import { VERSION } from "../../main.ts";
import { staticClosure } from "../module_graph.ts";

/** stderr as lines, without the trailing newline. */
const lines = (text: string) => text.trimEnd().split("\n").filter((l) => l !== "");

/** A TCP port on ::1 that nobody listens on (bound, then released). */
function freePort(): number {
  const l = Deno.listen({ hostname: "::1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Whether something accepts connections on `port` of ::1. */
async function listening(port: number): Promise<boolean> {
  try {
    (await Deno.connect({ hostname: "::1", port })).close();
    return true;
  } catch {
    return false;
  }
}

function grpcAddrs(url: string) {
  return { blobServiceAddr: url, directoryServiceAddr: url, pathInfoServiceAddr: url };
}

Deno.test("--version and the top-level help load neither commander nor a subcommand", async () => {
  const mainModules = await staticClosure(MAIN);
  const local = mainModules.map((m) => m.replace(/^file:\/\/.*?\/main\.ts$/, "main.ts"))
    .map((m) => m.replace(/^file:\/\/.*?\/src\//, "src/"));
  assertEquals(local.sort(), ["main.ts", "src/cli/subcommands.ts", "src/errors.ts", "src/log.ts"]);
  // Each subcommand module registers without loading the store or a backend.
  for (const name of ["import", "copy", "mount", "list", "info", "delete", "gc", "verify"]) {
    const modules = await staticClosure(new URL(`../../src/cli/${name}.ts`, import.meta.url).href);
    const heavy = modules.filter((m) =>
      /grpc-js|\/store\/(services|import|gc)\.ts$|\/fuse\/|\/castore\/(blob|directory)\//.test(m)
    );
    assertEquals(heavy, [], `${name}.ts loads at registration`);
  }

  const version = await tvixStore(["--version"]);
  assertEquals([version.code, version.stdout], [0, `${VERSION}\n`]);
  const help = await tvixStore(["--help"]);
  assertEquals(help.code, 0);
  for (const s of SUBCOMMANDS) assertMatch(help.stdout, new RegExp(`\\n  ${s.name} \\[options\\]`));
  assertMatch(help.stdout, /tvix-store daemon .*\n.*second terminal/);
  // No subcommand: the same help on stderr, and a failure.
  const bare = await tvixStore([]);
  assertEquals([bare.code, bare.stderr], [1, help.stdout]);
  // Through commander (an option before --help), the top-level help is the same text.
  const viaCommander = await tvixStore(["--log-level", "warn", "--help"]);
  assertEquals(viaCommander.stdout, help.stdout);
});

Deno.test("a local store, a FUSE Worker and the binary cache over one load no gRPC library", async () => {
  // What `import`, `mount`, `nar-bridge` and the other commands load for pack,
  // object-store and SQLite URLs; the gRPC clients come only with a grpc+ URL
  // (dynamic imports).
  for (
    const entry of [
      "store/services.ts",
      "store/import.ts",
      "castore/blob/pack.ts",
      "castore/blob/objectstore.ts",
      "castore/blob/objectstore_sweep.ts",
      "castore/blob/chunk_worker.ts",
      "castore/directory/sqlite.ts",
      "store/pathinfo/sqlite.ts",
      "fuse/worker.ts",
      "narbridge/server.ts",
    ]
  ) {
    const modules = await staticClosure(new URL(`../../src/${entry}`, import.meta.url).href);
    assert(modules.length > 1, `${entry}: no import graph`);
    const grpc = modules.filter((m) => /grpc-js|\/src\/grpc\/|\/rpc_\w+\.ts$/.test(m));
    assertEquals(grpc, [], `${entry} loads the gRPC stack at start-up`);
  }
});

Deno.test("the help's list of subcommands is what their modules register", async () => {
  for (const s of SUBCOMMANDS) {
    const program = new Command("tvix-store");
    (await s.load()).register(program);
    assertEquals(program.commands.map((c) => c.name()), [s.name]);
    const cmd = program.commands[0];
    assertEquals(cmd.description(), s.description, s.name);
    assertEquals(cmd.usage(), `[options]${s.args ? ` ${s.args}` : ""}`, s.name);
  }
  // Constants repeated so that start-up loads no store module.
  assertEquals(DEFAULT_DAEMON_ADDR, DEFAULT_REMOTE_ADDR);
  const gcHelp = await tvixStore(["gc", "--help"]);
  assert(gcHelp.stdout.includes(`(default: "${DEFAULT_GRACE_MS / 60_000}m")`), gcHelp.stdout);
});

Deno.test("every URL form the errors list is one its service accepts", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-forms-" });
  try {
    const build = {
      blob: blobServiceFromUrl,
      directory: directoryServiceFromUrl,
      "path info": pathInfoServiceFromUrl,
    };
    for (const [kind, forms] of Object.entries(SERVICE_URL_FORMS)) {
      for (const form of forms) {
        const url = form.replace("HOST:PORT", "[::1]:1")
          .replace("///DIR", `//${join(tmp, crypto.randomUUID())}`)
          .replace("///FILE", `//${join(tmp, `${crypto.randomUUID()}.sqlite`)}`)
          .replace("///SOCKET", `//${join(tmp, "sock")}`)
          .replace("near=URL&far=URL", "near=memory%3A%2F%2F&far=memory%3A%2F%2F");
        checkServiceUrl(kind as ServiceKind, url);
        // Backends on a server (PostgreSQL, S3) would connect: the check above must do.
        if (/^(postgres|objectstore\+s3):/.test(form)) continue;
        const service = await build[kind as ServiceKind](url);
        await service.close();
      }
    }
    assertThrows(() => checkServiceUrl("blob", "sqlite:///x"), Error, "unknown scheme: sqlite");
    checkServiceUrl("path info", "postgresql://db.example/store");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("an unreachable daemon is one line naming the address and how to start one", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-first-day-" });
  try {
    const file = join(tmp, "hello");
    await Deno.writeTextFile(file, "hello\n");
    const port = freePort();
    const url = `grpc+http://[::1]:${port}`;

    const byFlag = await tvixStore(["import", ...serviceAddrArgs(grpcAddrs(url)), file]);
    assertEquals(byFlag.code, 1);
    assertEquals(byFlag.stdout, "");
    assertEquals(lines(byFlag.stderr).length, 1, byFlag.stderr);
    assert(byFlag.stderr.includes(`cannot reach a tvix-store daemon at ${url}`), byFlag.stderr);
    assert(byFlag.stderr.includes("set by --blob-service-addr"), byFlag.stderr);
    assert(byFlag.stderr.includes(`tvix-store daemon -l [::1]:${port}`), byFlag.stderr);

    const byEnv = await tvixStore(["list"], {
      BLOB_SERVICE_ADDR: url,
      DIRECTORY_SERVICE_ADDR: url,
      PATH_INFO_SERVICE_ADDR: url,
    });
    assertEquals(byEnv.code, 1);
    assertEquals(lines(byEnv.stderr).length, 1, byEnv.stderr);
    assert(byEnv.stderr.includes("set by env BLOB_SERVICE_ADDR"), byEnv.stderr);

    // The default address, as on a first day: only if nothing listens there.
    if (!(await listening(8000))) {
      const byDefault = await tvixStore(["import", file]);
      assertEquals(byDefault.code, 1);
      assertEquals(lines(byDefault.stderr).length, 1, byDefault.stderr);
      assert(byDefault.stderr.includes(`at ${DEFAULT_DAEMON_ADDR} (connection refused)`));
      assert(byDefault.stderr.includes("start one with `tvix-store daemon` in another terminal"));
      assert(byDefault.stderr.includes("BLOB_SERVICE_ADDR"), byDefault.stderr);
    } else console.warn("something listens on [::1]:8000: default-address case skipped");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("mount refuses to mount over an unreachable daemon", async () => {
  const mountpoint = await Deno.makeTempDir({ prefix: "tvix-first-day-mnt-" });
  const url = `grpc+unix://${mountpoint}-no-such.sock`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "mount", mountpoint, ...serviceAddrArgs(grpcAddrs(url))],
    env: childEnv(),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Before the check, the mount came up over nothing and served EIO: stop it then.
  const timer = setTimeout(() => child.kill("SIGTERM"), 30_000);
  try {
    const out = await child.output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 1, stderr);
    assertEquals(lines(stderr).length, 1, stderr);
    assert(stderr.includes(`cannot reach a tvix-store daemon at ${url} (no such socket`), stderr);
    assert(!Deno.readTextFileSync("/proc/mounts").includes(mountpoint), "mounted anyway");
  } finally {
    clearTimeout(timer);
    await Deno.remove(mountpoint);
  }
});

Deno.test("a bad service URL is one line naming its flag or env var and the valid forms", async () => {
  const flag = await tvixStore(["import", "--blob-service-addr", "sqlite:///x", "/tmp"]);
  assertEquals(flag.code, 1);
  assertEquals(lines(flag.stderr).length, 1, flag.stderr);
  assert(flag.stderr.includes("--blob-service-addr"), flag.stderr);
  assert(flag.stderr.includes("unknown scheme: sqlite"), flag.stderr);
  assert(flag.stderr.includes(SERVICE_URL_FORMS.blob.join(", ")), flag.stderr);

  const env = await tvixStore(["list"], { PATH_INFO_SERVICE_ADDR: "pack:///tmp/x" });
  assertEquals(env.code, 1);
  assertEquals(lines(env.stderr).length, 1, env.stderr);
  assert(env.stderr.includes("PATH_INFO_SERVICE_ADDR"), env.stderr);
  assert(env.stderr.includes(SERVICE_URL_FORMS["path info"].join(", ")), env.stderr);

  // The daemon takes the same flags.
  const daemon = await tvixStore(["daemon", "--directory-service-addr", "memory://host"]);
  assertEquals(daemon.code, 1);
  assertEquals(lines(daemon.stderr).length, 1, daemon.stderr);
  assert(daemon.stderr.includes("--directory-service-addr"), daemon.stderr);
  assert(daemon.stderr.includes("memory:// takes no host or path"), daemon.stderr);
});

Deno.test("a taken port is one line, without grpc-js's own log line", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-first-day-" });
  const first = await startServer(
    ["daemon", "-l", "[::1]:0", ...localStoreArgs(join(tmp, "a"))],
    { name: "daemon" },
  );
  try {
    const second = await tvixStore([
      "--log-level",
      "warn",
      "daemon",
      "-l",
      first.address,
      ...localStoreArgs(join(tmp, "b")),
    ]);
    assertEquals(second.code, 1);
    assertEquals(lines(second.stderr).length, 1, second.stderr);
    assertMatch(second.stderr, /^error: cannot listen on .*address already in use/);
    // At the default level only the daemon's own log lines come on top.
    const again = await tvixStore([
      "daemon",
      "-l",
      first.address,
      ...localStoreArgs(join(tmp, "b")),
    ]);
    assertEquals(again.code, 1);
    const foreign = lines(again.stderr).filter((l) => !/^\d{4}-\d\d-\d\dT\S+ +[A-Z]+ /.test(l));
    assertEquals(foreign.length, 1, again.stderr);
    assertMatch(foreign[0], /^error: cannot listen on /);
  } finally {
    await first.stop();
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("import: a missing path is named once; no path at all is a usage error", async () => {
  const missing = `/tmp/tvix-no-such-path-${crypto.randomUUID()}`;
  const memory = serviceAddrArgs(grpcAddrs("memory://"));
  const r = await tvixStore(["import", ...memory, missing]);
  assertEquals(r.code, 1);
  assertEquals(r.stdout, "");
  assertEquals(lines(r.stderr), [`error: cannot import ${missing}: No such file or directory`]);

  const none = await tvixStore(["import", ...memory]);
  assertEquals(none.code, 1);
  assertEquals(lines(none.stderr), [
    "error: missing required argument 'paths' (usage: tvix-store import [options] <paths...>)",
  ]);
});

Deno.test("deno task install puts a working tvix-store command in ~/.deno/bin, pinned to deno.lock", async () => {
  const home = await Deno.makeTempDir({ prefix: "tvix-install-home-" });
  const root = new URL("../../", import.meta.url).pathname;
  try {
    const install = await new Deno.Command(Deno.execPath(), {
      args: ["task", "install"],
      cwd: root,
      env: childEnv({ HOME: home }),
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const log = new TextDecoder().decode(install.stderr) + new TextDecoder().decode(install.stdout);
    assertEquals(install.code, 0, log);
    // deno.json declines protobufjs's install script, so Deno has nothing to warn about.
    assert(!log.includes("Ignored build scripts"), log);

    const bin = join(home, ".deno", "bin", "tvix-store");
    const shim = await Deno.readTextFile(bin);
    assert(shim.includes("--frozen") && !shim.includes("--allow-all"), shim);
    assertEquals(
      await Deno.readTextFile(join(home, ".deno", "bin", ".tvix-store", "deno.lock")),
      await Deno.readTextFile(join(root, "deno.lock")),
    );
    const run = async (args: string[]) => {
      const out = await new Deno.Command(bin, {
        args,
        cwd: home,
        env: childEnv({ HOME: home }),
        clearEnv: true,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const td = new TextDecoder();
      return { code: out.code, stdout: td.decode(out.stdout), stderr: td.decode(out.stderr) };
    };
    const version = await run(["--version"]);
    assertEquals([version.code, version.stdout, version.stderr], [0, `${VERSION}\n`, ""]);
    // Its permissions are enough for real work: an import into a store on disk.
    await Deno.writeTextFile(join(home, "hello"), "hello\n");
    const imported = await run(["import", ...localStoreArgs(join(home, "store")), "hello"]);
    assertEquals(imported.code, 0, imported.stderr);
    assertMatch(imported.stdout, /^\/nix\/store\/[0-9a-z]{32}-hello\n$/);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});
