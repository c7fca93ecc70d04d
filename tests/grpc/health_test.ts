/**
 * grpc.health.v1.Health on the daemon, probed by Python grpcio: Check
 * answers SERVING for "" and each service and NOT_FOUND for others; Watch
 * streams hear NOT_SERVING when SIGTERM starts the shutdown, and the
 * daemon still exits 0.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { readLines } from "../cli/helpers.ts";
import { MEMORY_BACKENDS, PYTHON, startDaemon } from "./daemon_harness.ts";

const HEALTH_CLIENT = new URL("./py/health_client.py", import.meta.url).pathname;

async function check(target: string, service: string): Promise<string> {
  const out = await new Deno.Command(PYTHON, {
    args: [HEALTH_CLIENT, target, "check", service],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const td = new TextDecoder();
  assert(out.success, `health check failed: ${td.decode(out.stderr)}`);
  return td.decode(out.stdout).trim();
}

/** A Watch stream in a Python process: its lines so far, and a wait for a given line. */
function watch(target: string, service: string) {
  const child = new Deno.Command(PYTHON, {
    args: [HEALTH_CLIENT, target, "watch", service],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  const done = readLines(child.stdout, (line) => {
    lines.push(line);
    waiters.splice(0).forEach((w) => w());
  });
  const until = async (line: string) => {
    while (!lines.includes(line)) {
      const more = new Promise<void>((r) => waiters.push(r));
      const ended = done.then(() => "ended" as const);
      if (await Promise.race([more, ended]) === "ended" && !lines.includes(line)) {
        throw new Error(`watch ${service} ended without ${line}: ${lines.join(" | ")}`);
      }
    }
  };
  return { lines, until, status: async () => (await done, await child.status) };
}

Deno.test("health: SERVING, then NOT_SERVING on Watch streams when the daemon shuts down", async () => {
  const home = await Deno.makeTempDir({ prefix: "tvix-health-" });
  const daemon = await startDaemon({ home: join(home, "home"), args: MEMORY_BACKENDS });
  try {
    const target = daemon.grpcioTarget;
    assertEquals(await check(target, ""), "SERVING");
    for (
      const service of [
        "tvix.castore.v1.BlobService",
        "tvix.castore.v1.DirectoryService",
        "tvix.store.v1.PathInfoService",
        "tvix_ts.castore.v1.SmallBlobService",
      ]
    ) {
      assertEquals(await check(target, service), "SERVING", service);
    }
    assertEquals(await check(target, "no.such.Service"), "error NOT_FOUND");

    const whole = watch(target, "");
    const blob = watch(target, "tvix.castore.v1.BlobService");
    const unknown = watch(target, "no.such.Service");
    await whole.until("SERVING");
    await blob.until("SERVING");
    await unknown.until("SERVICE_UNKNOWN");

    const { status } = await daemon.stop("SIGTERM");
    assertEquals(status.code, 0, daemon.log());
    for (const w of [whole, blob]) {
      await w.status();
      // Heard before the stream ended.
      assertEquals(w.lines, ["ready", "SERVING", "NOT_SERVING", "end OK"]);
    }
    await unknown.status();
    assertEquals(unknown.lines.slice(0, 2), ["ready", "SERVICE_UNKNOWN"]);
  } catch (err) {
    console.error(daemon.log());
    throw err;
  } finally {
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
});
