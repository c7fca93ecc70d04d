/**
 * `tvix-store daemon` with its blobs and directories in S3 (radosgw): an
 * import through gRPC lands in the bucket in the object-store layout, the
 * binary cache serves `nix-store --dump`'s NAR (also from a restarted
 * daemon), and a wrong bucket, wrong credentials or no credentials stop the
 * daemon at start with one clear line.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { blobIndexPath, chunkPath } from "../../src/castore/blob/objectstore.ts";
import { closurePath } from "../../src/castore/directory/objectstore.ts";
import { blake3 } from "../../src/castore/digest.ts";
import { serviceAddrArgs } from "../../src/cli/common.ts";
import { constructServices } from "../../src/store/services.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { tvixStore } from "../cli/helpers.ts";
import { nixOracle, writeEdgeCaseTree } from "../store/tree_gen.ts";
import { s3Test } from "./harness.ts";
import {
  BLOB_PREFIX,
  DIR_PREFIX,
  errorLines,
  fetchNar,
  importThrough,
  type S3Daemon,
  s3DaemonAddrs,
  startS3Daemon,
} from "./daemon.ts";

/** Digests of the contents of every regular file below `root`. */
async function fileDigests(root: string): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const e of Deno.readDir(root)) {
    const p = join(root, e.name);
    if (e.isDirectory) out.push(...await fileDigests(p));
    else if (e.isFile) out.push(blake3(await Deno.readFile(p)));
  }
  return out;
}

for (const sqliteDirs of [false, true]) {
  const dirs = sqliteDirs ? "sqlite" : "objectstore+s3";
  s3Test(`daemon on S3 (directories in ${dirs}): import, bucket layout, NAR served`, async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "tvix-s3-daemon-" });
    let d: S3Daemon | undefined;
    try {
      d = await startS3Daemon(t, tmp, { sqliteDirs });
      const tree = join(tmp, "tree");
      await writeEdgeCaseTree(tree);
      const r = await importThrough(d, [tree]);
      assertEquals(r.code, 0, r.stderr);
      const oracle = await nixOracle(tree, join(tmp, "nix"));
      const storePath = r.stdout.trim();
      assertEquals(storePath, oracle.storePath);
      assertEquals(await fetchNar(d, storePath), oracle.nar);

      // The objects are in the bucket, where the object-store layout puts them.
      const keys = new Set(await t.client.listKeys(""));
      for (const digest of await fileDigests(tree)) {
        assert(
          keys.has(`${BLOB_PREFIX}/${blobIndexPath(digest)}`) ||
            keys.has(`${BLOB_PREFIX}/${chunkPath(digest)}`),
          "every file's blob is in the bucket",
        );
      }
      const services = await constructServices(d.grpc);
      try {
        const info = await services.pathInfo.get(StorePath.parseAbsolute(storePath).digest);
        const root = info?.node?.node;
        assert(root?.$case === "directory");
        assertEquals(keys.has(`${DIR_PREFIX}/${closurePath(root.value.digest)}`), !sqliteDirs);
      } finally {
        await services.close();
      }
      for (const k of keys) {
        assert(k.startsWith(`${BLOB_PREFIX}/`) || k.startsWith(`${DIR_PREFIX}/`), k);
      }

      // A new daemon on the same bucket and database serves the same NAR.
      await d.stop();
      d = await startS3Daemon(t, tmp, { sqliteDirs });
      assertEquals(await fetchNar(d, storePath), oracle.nar);
      // Importing again stores nothing new.
      const again = await importThrough(d, [tree]);
      assertEquals(again.code, 0, again.stderr);
      assertEquals(new Set(await t.client.listKeys("")), keys);
    } finally {
      await d?.stop();
      await Deno.remove(tmp, { recursive: true });
    }
  });
}

/** Runs `tvix-store daemon` on S3 with `env`; it must exit at once with one error line. */
async function failedStart(
  t: Parameters<Parameters<typeof s3Test>[1]>[0],
  env: Record<string, string>,
  bucket = t.bucket,
): Promise<string> {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-s3-start-" });
  try {
    const addrs = s3DaemonAddrs({ ...t, bucket }, tmp);
    const r = await tvixStore(
      ["daemon", "-l", join(tmp, "sock"), ...serviceAddrArgs(addrs)],
      env,
    );
    assert(r.code !== 0, `daemon exited ${r.code}:\n${r.stderr}`);
    const lines = errorLines(r.stderr);
    assertEquals(lines.length, 1, r.stderr);
    return lines[0];
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

s3Test("daemon on S3: a missing bucket or bad credentials fail the start", async (t) => {
  assertEquals(
    await failedStart(t, t.env, `${t.bucket}-gone`),
    `error: S3 bucket ${t.bucket}-gone does not exist at ${t.server.endpoint}`,
  );
  const wrongSecret = await failedStart(t, { ...t.env, AWS_SECRET_ACCESS_KEY: "wrong" });
  assert(wrongSecret.startsWith("error: S3 refused the credentials"), wrongSecret);
  assert(wrongSecret.includes("(SignatureDoesNotMatch"), wrongSecret);
  assert(wrongSecret.includes("AWS_SECRET_ACCESS_KEY"), wrongSecret);
  const wrongKey = await failedStart(t, { ...t.env, AWS_ACCESS_KEY_ID: "NOSUCHKEY" });
  assert(wrongKey.startsWith("error: S3 refused the credentials"), wrongKey);
  assert(wrongKey.includes("(InvalidAccessKeyId"), wrongKey);
  const none = await failedStart(t, { AWS_ENDPOINT_URL: t.server.endpoint });
  assert(none.startsWith("error: no S3 credentials"), none);
  const down = await failedStart(t, { ...t.env, AWS_ENDPOINT_URL: "http://127.0.0.1:1" });
  assert(/^error: S3 server http:\/\/127\.0\.0\.1:1 is unreachable/.test(down), down);
});
