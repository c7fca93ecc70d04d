/**
 * Test plumbing for the daemon tests: starts `tvix-store daemon` as a real
 * process on a free loopback port, and drives the foreign Python client
 * (`py/client.py`) over its stdin/stdout.
 *
 * @module
 */
import { join } from "node:path";
import { fromBase64, toBase64 } from "../../src/castore/digest.ts";
import { readLines, type ServerProcess, startServer } from "../cli/helpers.ts";
import { assertEquals } from "../assert.ts";
import { Calls } from "./requests.ts";

const PROTOS = new URL("../../protos", import.meta.url).pathname;
const PY_CLIENT = new URL("./py/client.py", import.meta.url).pathname;
/** Debian's interpreter, which has python3-grpcio and grpc_tools. */
export const PYTHON = "/usr/bin/python3";

/** Backend flags for an all-in-memory daemon. */
export const MEMORY_BACKENDS = [
  "--blob-service-addr=memory://",
  "--directory-service-addr=memory://",
  "--path-info-service-addr=memory://",
];

/** A running daemon process. */
export interface Daemon extends ServerProcess {
  /** The address it listens on, as the daemon logged it (`[::1]:port` or a socket path). */
  address: string;
  /** The same, as a grpcio target (`ipv6:[::1]:port`, `unix:/path`). */
  grpcioTarget: string;
}

/** Options of {@linkcode startDaemon}. */
export interface DaemonOptions {
  /** TVIX_STORE_HOME of the daemon (the embedded store lives there). */
  home: string;
  /** Extra daemon flags (backends, limits). */
  args?: string[];
  /** Listen address (default a free port on IPv6 loopback). */
  listen?: string;
  /** Extra environment. */
  env?: Record<string, string>;
  /** Working directory of the daemon (relative socket paths are relative to it). */
  cwd?: string;
}

/**
 * Starts the daemon (debug logging) and resolves once it logged its bound
 * address; the environment is cleared as {@linkcode startServer} does.
 */
export async function startDaemon(opts: DaemonOptions): Promise<Daemon> {
  const daemon = await startServer(
    [
      "--log-level=debug",
      "daemon",
      `--listen-address=${opts.listen ?? "[::1]:0"}`,
      ...(opts.args ?? []),
    ],
    { name: "daemon", env: { TVIX_STORE_HOME: opts.home, ...opts.env }, cwd: opts.cwd },
  );
  const address = daemon.address;
  const grpcioTarget = address.startsWith("/") || address.startsWith(".")
    ? `unix:${opts.cwd ? join(opts.cwd, address) : address}`
    : address.startsWith("[")
    ? `ipv6:${address}`
    : address;
  return { ...daemon, grpcioTarget };
}

/** Generates the Python stubs from protos/ into a fresh temp dir; returns it. */
export async function generatePythonStubs(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "tvix-pystubs-" });
  const files: string[] = [];
  for (const sub of ["tvix/castore/protos", "tvix/store/protos"]) {
    for await (const e of Deno.readDir(join(PROTOS, sub))) {
      if (e.name.endsWith(".proto")) files.push(join(sub, e.name));
    }
  }
  const out = await new Deno.Command(PYTHON, {
    args: [
      "-m",
      "grpc_tools.protoc",
      "-I",
      PROTOS,
      `--python_out=${dir}`,
      `--grpc_python_out=${dir}`,
      ...files,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`grpc_tools.protoc failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return dir;
}

/**
 * Runs `body` with a fresh work dir (named with `prefix`) and freshly
 * generated Python stubs, and removes both afterwards.
 */
export async function withWorkDirAndStubs(
  prefix: string,
  body: (work: string, stubs: string) => Promise<void>,
): Promise<void> {
  const work = await Deno.makeTempDir({ prefix });
  try {
    const stubs = await generatePythonStubs();
    try {
      await body(work, stubs);
    } finally {
      await Deno.remove(stubs, { recursive: true });
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

/**
 * Runs `body` against a daemon started with `args` and a Python client
 * connected to it; prints the daemon's log if `body` fails, and asserts
 * that the daemon exits 0 when stopped.
 */
export async function withDaemon(
  home: string,
  args: string[],
  stubs: string,
  body: (calls: Calls, daemon: Daemon) => Promise<void>,
  listen?: string,
  cwd?: string,
): Promise<void> {
  const daemon = await startDaemon({ home, args, listen, cwd });
  const py = new PyClient(stubs, daemon.grpcioTarget);
  try {
    await body(new Calls(py), daemon);
  } catch (err) {
    console.error(daemon.log());
    throw err;
  } finally {
    await py.close();
    const { status } = await daemon.stop();
    // Debugging aid: TVIX_TEST_DAEMON_LOG=1 shows what the daemon logged.
    if (Deno.env.get("TVIX_TEST_DAEMON_LOG") === "1") console.error(daemon.log());
    assertEquals(status.code, 0, "daemon exit status");
  }
}

/** What the Python client reports for one call. */
export interface Answer {
  /** gRPC status code number (0 = OK). */
  code: number;
  details: string;
  /** Response messages, decoded from base64. */
  responses: Uint8Array[];
}

/** The Python client process, one call at a time. */
export class PyClient {
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #waiting: ((line: string) => void)[] = [];
  readonly #done: Promise<void>;
  #stderr = "";

  constructor(stubs: string, target: string) {
    this.#child = new Deno.Command(PYTHON, {
      args: [PY_CLIENT, stubs, target],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#writer = this.#child.stdin.getWriter();
    this.#done = Promise.all([
      readLines(this.#child.stdout, (line) => this.#waiting.shift()?.(line)),
      readLines(this.#child.stderr, (line) => (this.#stderr += line + "\n")),
    ]).then(() => {});
  }

  /** Runs one op (see client.py); message fields are passed as bytes and sent as base64. */
  async call(op: string, fields: Record<string, unknown> = {}): Promise<Answer> {
    const encoded: Record<string, unknown> = { op };
    for (const [k, v] of Object.entries(fields)) {
      encoded[k] = v instanceof Uint8Array
        ? toBase64(v)
        : Array.isArray(v)
        ? v.map((x) => (x instanceof Uint8Array ? toBase64(x) : x))
        : v;
    }
    const line = new Promise<string>((r) => this.#waiting.push(r));
    await this.#writer.write(new TextEncoder().encode(JSON.stringify(encoded) + "\n"));
    const raw = await Promise.race([
      line,
      this.#child.status.then((s) => {
        throw new Error(`python client exited (${s.code}): ${this.#stderr}`);
      }),
    ]);
    const parsed = JSON.parse(raw);
    if (parsed.error) throw new Error(`python client: ${parsed.error}\n${this.#stderr}`);
    return {
      code: parsed.code,
      details: parsed.details,
      responses: (parsed.responses as string[]).map(fromBase64),
    };
  }

  /** Ends the client (closing stdin) and waits for it. */
  async close(): Promise<void> {
    try {
      await this.#writer.close();
    } catch { /* already closed */ }
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* gone */ }
    }, 10_000);
    await this.#child.status;
    clearTimeout(timer);
    await this.#done;
  }
}
