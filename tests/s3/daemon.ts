/**
 * A `tvix-store daemon` whose blobs and directories live in the test's S3
 * bucket and whose path infos live in SQLite, also serving a Nix binary
 * cache; plus the helpers the S3 daemon tests share.
 *
 * @module
 */
import { join } from "node:path";
import { type Daemon, startDaemon } from "../grpc/daemon_harness.ts";
import { tvixStore } from "../cli/helpers.ts";
import { serviceAddrArgs } from "../../src/cli/common.ts";
import type { ServiceAddrs } from "../../src/store/services.ts";
import { assertEquals } from "../assert.ts";
import type { S3TestContext } from "./harness.ts";

/** Key prefixes of the daemon's two object stores in the bucket. */
export const BLOB_PREFIX = "store/blobs";
export const DIR_PREFIX = "store/dirs";

/** A daemon on S3 and the addresses that reach it. */
export interface S3Daemon {
  daemon: Daemon;
  /** gRPC addresses of all three services on the daemon. */
  grpc: ServiceAddrs;
  /** `host:port` of its binary cache. */
  http: string;
  stop(): Promise<void>;
}

async function waitFor<T>(probe: () => T | undefined, what: string): Promise<T> {
  for (let i = 0; i < 400; i++) {
    const v = probe();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/**
 * The daemon's own service flags: blobs from an `objectstore+s3://` URL whose
 * endpoint comes from AWS_ENDPOINT_URL, directories from one that names it
 * in `?endpoint=` (or SQLite with `sqliteDirs`), path infos in SQLite.
 */
export function s3DaemonAddrs(t: S3TestContext, dir: string, sqliteDirs = false): ServiceAddrs {
  const db = `sqlite://${join(dir, "store.sqlite")}`;
  return {
    blobServiceAddr: `objectstore+s3://${t.bucket}/${BLOB_PREFIX}`,
    directoryServiceAddr: sqliteDirs ? db : t.url(DIR_PREFIX),
    pathInfoServiceAddr: db,
  };
}

/**
 * Starts the daemon on a Unix socket in `dir`, with the S3 credentials in
 * its environment, on `opts.addrs` if given (else {@linkcode s3DaemonAddrs}).
 */
export async function startS3Daemon(
  t: S3TestContext,
  dir: string,
  opts: { sqliteDirs?: boolean; env?: Record<string, string>; addrs?: ServiceAddrs } = {},
): Promise<S3Daemon> {
  const sock = join(dir, "daemon.sock");
  const daemon = await startDaemon({
    home: join(dir, "home"),
    listen: sock,
    env: { ...t.env, ...opts.env },
    args: [
      ...serviceAddrArgs(opts.addrs ?? s3DaemonAddrs(t, dir, opts.sqliteDirs)),
      "--nar-bridge-listen-address=127.0.0.1:0",
    ],
  });
  const http = await waitFor(
    () => /nar-bridge listening address=(\S+)/.exec(daemon.log())?.[1],
    "the nar-bridge address",
  );
  const url = `grpc+unix://${sock}`;
  return {
    daemon,
    grpc: { blobServiceAddr: url, directoryServiceAddr: url, pathInfoServiceAddr: url },
    http,
    stop: async () => {
      await daemon.stop();
    },
  };
}

/** `tvix-store import` of `paths` through the daemon's gRPC services. */
export function importThrough(
  d: S3Daemon,
  paths: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  return tvixStore(["import", "--no-stat-cache", ...serviceAddrArgs(d.grpc), ...paths]);
}

/**
 * The NAR of `storePath` as the binary cache at `d.http` serves it; throws if
 * the body cannot be read whole.
 */
export async function fetchNar(
  d: Pick<S3Daemon, "http">,
  storePath: string,
): Promise<Uint8Array> {
  const hash = storePath.slice("/nix/store/".length, "/nix/store/".length + 32);
  const res = await fetch(`http://${d.http}/${hash}.narinfo`);
  const narinfo = await res.text();
  assertEquals(res.status, 200, narinfo);
  const url = /^URL: (\S+)$/m.exec(narinfo)![1];
  const nar = await fetch(`http://${d.http}/${url}`);
  if (nar.status !== 200) {
    throw new Error(`NAR ${url}: HTTP ${nar.status}: ${await nar.text()}`);
  }
  return new Uint8Array(await nar.arrayBuffer());
}

/** The lines of `stderr` that are not log lines (main.ts prints failures as `error: …`). */
export function errorLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => l.startsWith("error:") || /^\s+at /.test(l));
}
