/**
 * Our gRPC client survives the server closing its connection (GOAWAY)
 * after ~2000 calls on it, and reconnects for the next call. Deno
 * 2.9.4–2.9.6 abort in that situation without the workaround in
 * `src/grpc/h2_goaway_workaround.ts` (denoland/deno#36788), so the client
 * runs as its own process and must exit 0.
 */
import { AssertionError } from "node:assert";
import { assert, assertEquals } from "../assert.ts";
import { memoryServices, type RunningServer, startServer } from "./client_harness.ts";
import { staticClosure } from "../module_graph.ts";
import { sourceFiles } from "../../scripts/check_layers.ts";

const CALLS = 2000;
const ROUNDS = 6;

/** Reads the child's stdout line by line. */
class Lines {
  readonly #reader: AsyncIterator<string>;
  #buffer = "";
  readonly seen: string[] = [];
  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.pipeThrough(new TextDecoderStream()).values();
  }
  async next(): Promise<string | undefined> {
    while (!this.#buffer.includes("\n")) {
      const chunk = await this.#reader.next();
      if (chunk.done) return undefined;
      this.#buffer += chunk.value;
    }
    const at = this.#buffer.indexOf("\n");
    const line = this.#buffer.slice(0, at);
    this.#buffer = this.#buffer.slice(at + 1);
    this.seen.push(line);
    return line;
  }
  async expect(line: string): Promise<void> {
    assertEquals(await this.next(), line, `client output so far: ${this.seen.join(" | ")}`);
  }
}

Deno.test(`client survives GOAWAY after ${CALLS} calls (drained, and restarted on the same port)`, async () => {
  let running: RunningServer = await startServer(memoryServices());
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("./goaway_client.ts", import.meta.url).pathname,
      running.url,
      String(CALLS),
      String(ROUNDS),
    ],
    cwd: new URL("../..", import.meta.url).pathname,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdin = child.stdin.getWriter();
  const out = new Lines(child.stdout);
  const stderr = new Response(child.stderr).text();
  const kill = () => {
    try {
      child.kill();
    } catch { /* already exited */ }
  };
  const clientExit = async () => {
    // A client still running after a failed expectation hangs; stop it.
    const status = await Promise.race([child.status, Promise.resolve(undefined)]) ??
      (kill(), await child.status);
    const tail = (await stderr).trim().split("\n").slice(-3).join(" / ");
    return `client exited with code ${status.code} signal ${status.signal}: ${tail}`;
  };
  try {
    for (let round = 0; round < ROUNDS; round++) {
      await out.expect("ready");
      if (round % 2 === 0) {
        // The server drains the port (GOAWAY) and keeps listening.
        running.server.drain(running.address, 1000);
        await out.expect("goaway");
      } else {
        // The server stops (GOAWAY) and a new one binds the same port.
        const address = running.address;
        await running.stop();
        await out.expect("goaway");
        running = await startServer(memoryServices(), address);
      }
      await stdin.write(new TextEncoder().encode("go\n"));
      await out.expect("ok");
    }
    await stdin.close();
    const status = await child.status;
    assert(status.success, await clientExit());
  } catch (err) {
    if (err instanceof AssertionError) throw new Error(`${err.message}; ${await clientExit()}`);
    throw err;
  } finally {
    kill();
    await child.status;
    await stderr.catch(() => {});
    await running.stop();
  }
});

Deno.test("every module that makes gRPC clients or servers loads the workaround", async () => {
  // Generated clients included: a test or tool that builds one directly, with
  // no other module of ours loaded, must not be able to open an unprotected
  // channel (a test process aborted that way once local stores stopped
  // loading the gRPC client).
  const makes = /makeGenericClientConstructor|new (grpc\.)?Server\(|credentials\.create/;
  const src = new URL("../../src/", import.meta.url).pathname;
  const makers = [...sourceFiles(src)].filter((path) => {
    const text = Deno.readTextFileSync(path).replace(/^import type [^;]*;/gm, "");
    return /^import [^;]*?"@grpc\/grpc-js";/m.test(text) && makes.test(text);
  });
  assert(makers.length >= 6, `only ${makers.length} modules make clients or servers`);
  for (const maker of makers) {
    const modules = await staticClosure(maker);
    assert(
      modules.some((m) => m.endsWith("/src/grpc/h2_goaway_workaround.ts")),
      `${maker.slice(src.length)} makes gRPC clients or servers without the workaround`,
    );
  }
});
