/**
 * A real S3 server for the tests under tests/s3/: Ceph's RADOS Gateway,
 * started by `scripts/s3_test_server.sh` once per test file on free ports
 * (or an already running one named by `S3_ENDPOINT`, `S3_ACCESS_KEY`,
 * `S3_SECRET_KEY`, `S3_REGION`, plus `S3_DIR` if it was started by the script
 * and tests may stop and start its gateway), a fresh bucket per test, and
 * the server stopped when the test file ends.
 *
 * Without the Ceph packages the tests are skipped with one message, unless
 * `TVIX_REQUIRE_S3` is set (CI): then they fail.
 *
 * @module
 */
import { join } from "node:path";
import { S3Client } from "../../src/castore/objectstore/s3_client.ts";
import { mapLimit } from "../../src/concurrency.ts";

const SCRIPT = new URL("../../scripts/s3_test_server.sh", import.meta.url).pathname;
const td = new TextDecoder();

/** A running S3 server. */
export interface S3Server {
  endpoint: string;
  accessKey: string;
  secretKey: string;
  region: string;
  /** Environment for the script's gateway-stop/gateway-start, if we may use them. */
  control?: Record<string, string>;
}

/** What a test gets: the server, its own empty bucket and a client for it. */
export interface S3TestContext {
  server: S3Server;
  bucket: string;
  /** A client on `bucket` (to look at or damage objects behind the store's back). */
  client: S3Client;
  /** `objectstore+s3://bucket/prefix?endpoint=…` (the endpoint in the URL, not the environment). */
  url(prefix?: string): string;
  /** AWS_* variables for a child process using this server. */
  env: Record<string, string>;
}

function onPath(cmd: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
    try {
      if (Deno.statSync(join(dir, cmd)).isFile) return true;
    } catch { /* not here */ }
  }
  return false;
}

const external = Deno.env.get("S3_ENDPOINT");
const installed = ["ceph-mon", "ceph-osd", "radosgw", "radosgw-admin"].every(onPath);
const required = !!Deno.env.get("TVIX_REQUIRE_S3");

/** True when the S3 tests cannot run here and may be skipped. */
export const skipS3: boolean = external === undefined && !installed && !required;

let warned = false;
/** Says once, on stderr, why the S3 tests of this file are skipped. */
function warnSkip(): void {
  if (warned) return;
  warned = true;
  console.warn(
    "S3 tests skipped: Ceph's radosgw is not installed (sh scripts/s3_test_server.sh install); " +
      "set TVIX_REQUIRE_S3=1 to make that a failure",
  );
}

/** A TCP port nobody listens on right now. */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

function parseEnvLines(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^(S3_[A-Z_]+)=(.*)$/.exec(line);
    if (m) out[m[1]] = m[2];
  }
  return out;
}

let started: Promise<S3Server> | undefined;
/** Environment of the server this file started, for stopping it. */
let ownedEnv: Record<string, string> | undefined;
let ownedDir: string | undefined;

async function startServer(): Promise<S3Server> {
  if (external !== undefined) {
    const dir = Deno.env.get("S3_DIR");
    return {
      endpoint: external,
      accessKey: Deno.env.get("S3_ACCESS_KEY") ?? "",
      secretKey: Deno.env.get("S3_SECRET_KEY") ?? "",
      region: Deno.env.get("S3_REGION") ?? "us-east-1",
      control: dir ? { ...Deno.env.toObject(), S3_DIR: dir } : undefined,
    };
  }
  if (!installed) {
    throw new Error(
      "TVIX_REQUIRE_S3 is set but Ceph's radosgw is not installed: " +
        "run sh scripts/s3_test_server.sh install (packages ceph-mon ceph-osd radosgw ceph-common)",
    );
  }
  ownedDir = await Deno.makeTempDir({ prefix: "tvix-s3-" });
  // Ceph binds the OSD somewhere in a range; a random one rarely collides.
  const osdBase = 30000 + 100 * Math.floor(Math.random() * 250);
  const env = {
    ...Deno.env.toObject(),
    S3_DIR: join(ownedDir, "rgw"),
    S3_PORT: String(freePort()),
    S3_MON_PORT: String(freePort()),
    S3_OSD_PORTS: `${osdBase}-${osdBase + 99}`,
  };
  ownedEnv = env;
  const out = await new Deno.Command("bash", {
    args: [SCRIPT, "start"],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`starting the S3 test server failed:\n${td.decode(out.stderr)}`);
  }
  const vars = parseEnvLines(td.decode(out.stdout));
  return {
    endpoint: vars.S3_ENDPOINT,
    accessKey: vars.S3_ACCESS_KEY,
    secretKey: vars.S3_SECRET_KEY,
    region: vars.S3_REGION,
    control: env,
  };
}

/** Stops the server this file started (synchronously: runs at unload). */
function stopOwned(): void {
  if (!ownedEnv) return;
  try {
    new Deno.Command("bash", { args: [SCRIPT, "stop"], env: ownedEnv, stdout: "null" })
      .outputSync();
    if (ownedDir) Deno.removeSync(ownedDir, { recursive: true });
  } catch { /* best effort at exit */ }
  ownedEnv = undefined;
}
globalThis.addEventListener("unload", stopOwned);

/**
 * The server for this test file, started on first use. Also puts its
 * credentials into this process's environment, where services built from
 * `objectstore+s3://` URLs in-process read them.
 */
export function s3Server(): Promise<S3Server> {
  started ??= startServer().then((server) => {
    Deno.env.set("AWS_ACCESS_KEY_ID", server.accessKey);
    Deno.env.set("AWS_SECRET_ACCESS_KEY", server.secretKey);
    Deno.env.set("AWS_REGION", server.region);
    return server;
  });
  return started;
}

/** A client for `bucket` on `server` (credentials as given, or the server's). */
export function s3Client(
  server: S3Server,
  bucket: string,
  secretKey = server.secretKey,
): S3Client {
  return new S3Client({
    endpoint: new URL(server.endpoint),
    bucket,
    region: server.region,
    credentials: { accessKeyId: server.accessKey, secretAccessKey: secretKey },
  });
}

/** AWS_* variables that point a child process at `server`. */
export function awsEnv(server: S3Server): Record<string, string> {
  return {
    AWS_ACCESS_KEY_ID: server.accessKey,
    AWS_SECRET_ACCESS_KEY: server.secretKey,
    AWS_REGION: server.region,
    AWS_ENDPOINT_URL: server.endpoint,
  };
}

let buckets = 0;

/** Creates an empty bucket with a name unique to this run. */
export async function freshBucket(server: S3Server): Promise<string> {
  const name = `tvix-${Date.now().toString(36)}-${Deno.pid}-${buckets++}`;
  await s3Client(server, name).createBucket();
  return name;
}

/**
 * Deletes every object of the bucket, then the bucket (best effort), on a
 * server that outlives this file; ours is removed whole at the end instead
 * (and radosgw takes ~20 s to delete a bucket whose gateway was killed).
 */
export async function dropBucket(server: S3Server, bucket: string): Promise<void> {
  if (ownedEnv) return;
  try {
    const client = s3Client(server, bucket);
    await mapLimit(await client.listKeys(""), 16, (k) => client.deleteObject(k));
    await client.deleteBucket();
  } catch { /* the server goes away with the file anyway */ }
}

/** Kills the gateway (the S3 server "goes away"); mon and OSD keep their data. */
export async function gatewayStop(server: S3Server): Promise<void> {
  await runControl(server, "gateway-stop");
}

/**
 * Starts the gateway again and waits until it listens; `gatewayArgs` are
 * added to radosgw's command line (Ceph options, until the next start).
 */
export async function gatewayStart(server: S3Server, gatewayArgs: string[] = []): Promise<void> {
  await runControl(server, "gateway-start", { S3_GATEWAY_ARGS: gatewayArgs.join(" ") });
}

async function runControl(
  server: S3Server,
  cmd: string,
  extraEnv: Record<string, string> = {},
): Promise<void> {
  if (!server.control) throw new Error("this S3 server is not ours to stop and start");
  const out = await new Deno.Command("bash", {
    args: [SCRIPT, cmd],
    env: { ...server.control, ...extraEnv },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`s3_test_server.sh ${cmd} failed:\n${td.decode(out.stderr)}`);
}

/** Options of {@linkcode s3Test}. */
export interface S3TestOptions {
  /** The test stops and starts the gateway: skipped on a server that is not ours. */
  controlsGateway?: boolean;
}

/**
 * Registers a test that runs with a fresh bucket on the file's S3 server
 * (ignored, with one message, where S3 tests may be skipped).
 */
export function s3Test(
  name: string,
  fn: (ctx: S3TestContext) => Promise<void>,
  opts: S3TestOptions = {},
): void {
  const uncontrolled = opts.controlsGateway === true && external !== undefined &&
    !Deno.env.get("S3_DIR");
  if (skipS3) warnSkip();
  Deno.test({
    name,
    ignore: skipS3 || uncontrolled,
    // The gateway's keep-alive connections outlive single tests.
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async () => {
      const server = await s3Server();
      const bucket = await freshBucket(server);
      try {
        await fn({
          server,
          bucket,
          client: s3Client(server, bucket),
          url: (prefix = "") =>
            `objectstore+s3://${bucket}/${prefix}?endpoint=${encodeURIComponent(server.endpoint)}`,
          env: awsEnv(server),
        });
      } finally {
        await dropBucket(server, bucket);
      }
    },
  });
}

/**
 * A conformance-suite factory: each service gets a fresh bucket on the
 * file's server and is built by `open` from its URL; cleanup closes it and
 * drops the bucket.
 */
export function s3ServiceFactory<S extends { close(): Promise<void> }>(
  open: (url: string) => Promise<S>,
  prefix = "",
): () => Promise<{ service: S; cleanup(): Promise<void> }> {
  return async () => {
    const server = await s3Server();
    const bucket = await freshBucket(server);
    const url = `objectstore+s3://${bucket}/${prefix}?endpoint=${
      encodeURIComponent(server.endpoint)
    }`;
    const service = await open(url);
    return {
      service,
      cleanup: async () => {
        await service.close();
        await dropBucket(server, bucket);
      },
    };
  };
}

/** Registers the conformance suites through `register`, or one skipped test saying why not. */
export function s3Suite(label: string, register: () => void): void {
  if (skipS3) {
    warnSkip();
    Deno.test({ name: `${label} (needs radosgw)`, ignore: true, fn: () => {} });
  } else {
    register();
  }
}
