/**
 * Faults under a daemon on S3 (radosgw): the gateway killed in the middle
 * of an import or throttling it, and objects damaged in the bucket. Clients get an error
 * status, never wrong bytes; the daemon keeps running and serves again once
 * the gateway is back.
 */
import { join } from "node:path";
import { zstdCompressSync } from "node:zlib";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { chunkPath } from "../../src/castore/blob/objectstore.ts";
import { closurePath } from "../../src/castore/directory/objectstore.ts";
import { blake3, bytesEqual } from "../../src/castore/digest.ts";
import { constructServices, type Services } from "../../src/store/services.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { StorageError, UnavailableError } from "../../src/errors.ts";
import { credentials, type ServiceError } from "@grpc/grpc-js";
import { Code } from "../../src/grpc/status.ts";
import { BlobServiceClient } from "../../src/proto/tvix/castore/protos/rpc_blobstore.ts";
import { DirectoryServiceClient } from "../../src/proto/tvix/castore/protos/rpc_directory.ts";
import { collect, concat } from "../conformance/harness.ts";
import { readBlob } from "../conformance/blob_suite.ts";
import { pseudoRandom } from "../fixtures.ts";
import { nixOracle } from "../store/tree_gen.ts";
import { gatewayStart, gatewayStop, s3Test } from "./harness.ts";
import {
  BLOB_PREFIX,
  DIR_PREFIX,
  fetchNar,
  importThrough,
  type S3Daemon,
  startS3Daemon,
} from "./daemon.ts";

/** Writes `count` files of `size` random bytes below a new directory `root`. */
async function writeRandomTree(root: string, count: number, size: number): Promise<void> {
  await Deno.mkdir(root);
  for (let i = 0; i < count; i++) {
    const data = new Uint8Array(size);
    for (let off = 0; off < size; off += 65536) {
      crypto.getRandomValues(data.subarray(off, Math.min(size, off + 65536)));
    }
    await Deno.writeFile(join(root, `f${i}`), data);
  }
}

/** The root node and NAR summary of an imported store path, read back through gRPC. */
async function rootOf(services: Services, storePath: string) {
  const info = await services.pathInfo.get(StorePath.parseAbsolute(storePath).digest);
  assert(info?.node?.node, `no path info for ${storePath}`);
  return info.node.node;
}

/** Stat and Directory Get of `digest` through grpc-js's own clients: their final statuses. */
async function rawStatuses(
  d: S3Daemon,
  digest: Uint8Array,
): Promise<Record<string, { code: Code; details: string }>> {
  const target = `unix:${d.grpc.blobServiceAddr.slice("grpc+unix://".length)}`;
  const blobs = new BlobServiceClient(target, credentials.createInsecure());
  const dirs = new DirectoryServiceClient(target, credentials.createInsecure());
  try {
    const stat = await new Promise<{ code: Code; details: string }>((resolve) =>
      blobs.stat(
        { digest, sendChunks: false, sendBao: false },
        (err: ServiceError | null) =>
          resolve(err ? { code: err.code, details: err.details } : { code: Code.OK, details: "" }),
      )
    );
    const get = await new Promise<{ code: Code; details: string }>((resolve) => {
      const call = dirs.get({ byWhat: { $case: "digest", value: digest }, recursive: true });
      call.on("data", () => {});
      call.on("error", () => {/* reported through "status" */});
      call.on("status", (s) => resolve({ code: s.code, details: s.details }));
    });
    return { stat, get };
  } finally {
    blobs.close();
    dirs.close();
  }
}

s3Test(
  "the gateway goes away mid-import: an error, the daemon lives, serving resumes",
  async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "tvix-s3-outage-" });
    let d: S3Daemon | undefined;
    let gatewayDown = false;
    try {
      d = await startS3Daemon(t, tmp);
      const tree = join(tmp, "tree");
      await writeRandomTree(tree, 12, 8 * 1024 * 1024);
      const running = importThrough(d, [tree]);
      // Kill the gateway as soon as the first chunks have arrived.
      const chunks = `${BLOB_PREFIX}/chunks/`;
      for (let i = 0; (await t.client.listKeys(chunks)).length === 0; i++) {
        assert(i < 600, "no chunk reached the bucket");
        await new Promise((r) => setTimeout(r, 50));
      }
      await gatewayStop(t.server);
      gatewayDown = true;
      const failed = await running;
      assert(failed.code !== 0, `the import succeeded without its store:\n${failed.stderr}`);
      assert(
        /UNAVAILABLE.*S3 server http:\/\/127\.0\.0\.1:\d+ (is unreachable|failed)/
          .test(failed.stderr),
        failed.stderr,
      );
      assertEquals(failed.stdout, "");

      // While the gateway is down every call fails quickly and clearly, and the daemon lives.
      const services = await constructServices(d.grpc);
      try {
        const probe = blake3(pseudoRandom(10, 1));
        const err = await assertRejects(() => services.blob.has(probe), UnavailableError);
        assert(err.message.startsWith("UNAVAILABLE"), err.message);
        assert(err.message.includes("is unreachable"), err.message);
        // A plain grpc-js client sees the status itself, on every service.
        const statuses = await rawStatuses(d, probe);
        for (const [call, s] of Object.entries(statuses)) {
          assertEquals(Code[s.code], "UNAVAILABLE", `${call}: ${s.details}`);
        }
        assertEquals(d.daemon.exitStatus(), undefined, "the daemon is still running");

        await gatewayStart(t.server);
        gatewayDown = false;
        const r = await importThrough(d, [tree]);
        assertEquals(r.code, 0, r.stderr);
        const oracle = await nixOracle(tree);
        const storePath = r.stdout.trim();
        assertEquals(
          await services.narCalculation.calculateNar(await rootOf(services, storePath)),
          { narSize: BigInt(oracle.nar.length), narSha256: oracle.narSha256 },
        );
        assertEquals(await fetchNar(d, storePath), oracle.nar);
      } finally {
        await services.close();
      }
    } finally {
      if (gatewayDown) await gatewayStart(t.server);
      await d?.stop();
      await Deno.remove(tmp, { recursive: true });
    }
  },
  { controlsGateway: true },
);

s3Test(
  "a gateway that throttles (503 SlowDown) slows an import down and does not fail it",
  async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "tvix-s3-throttle-" });
    let d: S3Daemon | undefined;
    // radosgw answers 503 SlowDown to requests beyond this many in progress.
    await gatewayStop(t.server);
    await gatewayStart(t.server, ["--rgw-max-concurrent-requests=4"]);
    try {
      d = await startS3Daemon(t, tmp);
      const tree = join(tmp, "tree");
      await writeRandomTree(tree, 400, 4096);
      const r = await importThrough(d, [tree]);
      assertEquals(r.code, 0, `${r.stderr}\n${d.daemon.log()}`);
      assert(
        /S3 server is throttling: fewer requests in flight/.test(d.daemon.log()),
        `the gateway never throttled, so this tested nothing:\n${d.daemon.log()}`,
      );
      const oracle = await nixOracle(tree);
      assertEquals(await fetchNar(d, r.stdout.trim()), oracle.nar);
    } finally {
      await d?.stop();
      await gatewayStop(t.server);
      await gatewayStart(t.server);
      await Deno.remove(tmp, { recursive: true });
    }
  },
  { controlsGateway: true },
);

s3Test("damaged objects in the bucket are errors on read, never wrong bytes", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-s3-damage-" });
  let d: S3Daemon | undefined;
  try {
    d = await startS3Daemon(t, tmp);
    const tree = join(tmp, "tree");
    await Deno.mkdir(tree);
    const big = pseudoRandom(2 * 1024 * 1024, 7);
    const small = new TextEncoder().encode("still fine\n");
    await Deno.writeFile(join(tree, "big"), big);
    await Deno.writeFile(join(tree, "small"), small);
    const r = await importThrough(d, [tree]);
    assertEquals(r.code, 0, r.stderr);
    const storePath = r.stdout.trim();
    const oracle = await nixOracle(tree);

    const services = await constructServices(d.grpc);
    try {
      const digest = blake3(big);
      const chunks = (await services.blob.chunks(digest))!;
      assert(chunks.length >= 3, `a blob of several chunks (${chunks.length})`);
      // Chunk 1 becomes garbage, chunk 2 a valid zstd frame of other bytes of its size.
      const key = (i: number) => `${BLOB_PREFIX}/${chunkPath(chunks[i].digest)}`;
      await t.client.putObject(key(1), pseudoRandom(1000, 3));
      await t.client.putObject(key(2), zstdCompressSync(pseudoRandom(Number(chunks[2].size), 4)));

      // Reading the blob yields the intact first chunk at most, then fails.
      const reader = await services.blob.openRead(digest);
      assert(reader);
      const got: Uint8Array[] = [];
      const err = await assertRejects(async () => {
        for await (const piece of reader) got.push(piece.slice());
      }, StorageError);
      assert(err.message.startsWith("DATA_LOSS"), err.message);
      const prefix = concat(got);
      assert(prefix.length <= Number(chunks[0].size), "nothing past the intact chunk");
      assert(bytesEqual(prefix, big.subarray(0, prefix.length)), "what came is right");
      for (const i of [1, 2]) {
        const e = await assertRejects(() => readBlob(services.blob, chunks[i].digest));
        assert(e.message.startsWith("DATA_LOSS"), e.message);
      }

      // The NAR: the binary cache cuts its answer short; CalculateNAR fails.
      const nar = await fetchNar(d, storePath).catch((e) => e as Error);
      assert(
        nar instanceof Error || (nar.length < oracle.nar.length &&
          bytesEqual(nar, oracle.nar.subarray(0, nar.length))),
        "never a complete or wrong NAR",
      );
      const root = await rootOf(services, storePath);
      await assertRejects(() => services.narCalculation.calculateNar(root), StorageError);

      // A damaged directory closure is an error too.
      assert(root.$case === "directory");
      await t.client.putObject(`${DIR_PREFIX}/${closurePath(root.value.digest)}`, big.subarray(9));
      await assertRejects(() => collect(services.directory.getRecursive(root.value.digest)));

      // The daemon still serves what is intact.
      assertEquals(await readBlob(services.blob, blake3(small)), small);
      assertEquals(d.daemon.exitStatus(), undefined);
    } finally {
      await services.close();
    }
  } finally {
    await d?.stop();
    await Deno.remove(tmp, { recursive: true });
  }
});
