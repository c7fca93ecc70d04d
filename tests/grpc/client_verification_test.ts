/**
 * The gRPC clients check what servers send: a server on loopback that
 * answers with wrong bytes, wrong digests or invalid messages must make
 * the client fail with a `StorageError`, never hand out the bad data.
 */
import "../../src/grpc/h2_goaway_workaround.ts";
import * as grpc from "@grpc/grpc-js";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { StorageError } from "../../src/errors.ts";
import { releaseWhole } from "../../src/castore/blob/chunk_codec.ts";
import { blake3, bytesEqual, type Digest } from "../../src/castore/digest.ts";
import { type Directory, directoryDigest, directorySize } from "../../src/castore/directory.ts";
import { makeNode } from "../../src/castore/node.ts";
import {
  type BlobChunk,
  BlobServiceService,
  type PutBlobResponse,
  type ReadBlobRequest,
  type StatBlobRequest,
  type StatBlobResponse,
} from "../../src/proto/tvix/castore/protos/rpc_blobstore.ts";
import {
  DirectoryServiceService,
  type GetDirectoryRequest,
  type PutDirectoryResponse,
} from "../../src/proto/tvix/castore/protos/rpc_directory.ts";
import type { Node } from "../../src/proto/tvix/castore/protos/castore.ts";
import {
  type CalculateNARResponse,
  type GetPathInfoRequest,
  type ListPathInfoRequest,
  PathInfoServiceService,
} from "../../src/proto/tvix/store/protos/rpc_pathinfo.ts";
import type { PathInfo } from "../../src/store/pathinfo/service.ts";
import { GrpcBlobService } from "../../src/castore/blob/grpc.ts";
import { GrpcDirectoryService } from "../../src/castore/directory/grpc.ts";
import { GrpcPathInfoService } from "../../src/store/pathinfo/grpc.ts";
import {
  type ReadSmallBlobsRequest,
  type ReadSmallBlobsResponse,
  SmallBlobOutcome,
  smallBlobServiceDefinition,
} from "../../src/grpc/small_blobs.ts";
import { collect, concat } from "../conformance/harness.ts";
import * as F from "../fixtures.ts";

const { b } = F;

/** What the fake server answers; every handler defaults to UNIMPLEMENTED. */
interface Script {
  stat?: (req: StatBlobRequest) => StatBlobResponse;
  read?: (req: ReadBlobRequest) => Uint8Array[];
  /** Answers `SmallBlobService.Read` (UNIMPLEMENTED without it). */
  readSmall?: (req: ReadSmallBlobsRequest) => ReadSmallBlobsResponse[];
  put?: () => PutBlobResponse;
  /** Fail Put with this status as soon as the first message arrives. */
  putFailsWith?: grpc.status;
  getDirectory?: (req: GetDirectoryRequest) => Directory[];
  putDirectory?: () => PutDirectoryResponse;
  getPathInfo?: (req: GetPathInfoRequest) => PathInfo;
  listPathInfo?: () => PathInfo[];
  calculateNar?: (node: Node) => CalculateNARResponse;
}

function unimplemented(): grpc.ServiceError {
  return Object.assign(new Error("not scripted"), {
    code: grpc.status.UNIMPLEMENTED,
    details: "not scripted",
    metadata: new grpc.Metadata(),
  });
}

/** Runs `body` against a server on loopback that follows `script`. */
async function withFakeServer(
  script: Script,
  body: (url: string) => Promise<void>,
): Promise<void> {
  const server = new grpc.Server();
  const unary = <Req, Res>(f?: (req: Req) => Res) =>
  (
    call: grpc.ServerUnaryCall<Req, Res>,
    cb: grpc.sendUnaryData<Res>,
  ) => f ? cb(null, f(call.request)) : cb(unimplemented());
  const stream =
    <Req, Res>(f?: (req: Req) => Res[]) => (call: grpc.ServerWritableStream<Req, Res>) => {
      if (!f) return call.destroy(unimplemented());
      for (const message of f(call.request)) call.write(message);
      call.end();
    };
  const drain = <Req, Res>(f?: () => Res) =>
  (
    call: grpc.ServerReadableStream<Req, Res>,
    cb: grpc.sendUnaryData<Res>,
  ) => {
    call.on("data", () => {});
    call.on("end", () => f ? cb(null, f()) : cb(unimplemented()));
  };
  server.addService(BlobServiceService, {
    stat: unary(script.stat),
    read: stream((req: ReadBlobRequest) => (script.read?.(req) ?? []).map((data) => ({ data }))),
    put: script.putFailsWith === undefined ? drain<BlobChunk, PutBlobResponse>(script.put) : (
      call: grpc.ServerReadableStream<BlobChunk, PutBlobResponse>,
      cb: grpc.sendUnaryData<PutBlobResponse>,
    ) =>
      call.once("data", () =>
        cb(Object.assign(new Error("disk full"), {
          code: script.putFailsWith!,
          details: "disk full",
          metadata: new grpc.Metadata(),
        }))),
  });
  if (script.readSmall) {
    // Unregistered, grpc-js answers UNIMPLEMENTED, as a server without the extension does.
    server.addService(smallBlobServiceDefinition, { put: drain(), read: stream(script.readSmall) });
  }
  server.addService(DirectoryServiceService, {
    get: stream(script.getDirectory),
    put: drain(script.putDirectory),
  });
  server.addService(PathInfoServiceService, {
    get: unary(script.getPathInfo),
    put: unary<PathInfo, PathInfo>(),
    calculateNar: unary(script.calculateNar),
    list: stream((_: ListPathInfoRequest) => script.listPathInfo?.() ?? []),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      "127.0.0.1:0",
      grpc.ServerCredentials.createInsecure(),
      (err, port) => err ? reject(err) : resolve(port),
    )
  );
  try {
    await body(`grpc+http://127.0.0.1:${port}`);
  } finally {
    server.forceShutdown();
  }
}

/** BLOB_B in the three chunks the chunked-read tests list. */
const B_PARTS = [
  F.BLOB_B.subarray(0, 300_000),
  F.BLOB_B.subarray(300_000, 700_000),
  F.BLOB_B.subarray(700_000),
];
/** The chunk list of {@linkcode B_PARTS}. */
const B_CHUNKS = B_PARTS.map((data) => ({ digest: blake3(data), size: BigInt(data.length) }));

async function readAll(blob: GrpcBlobService, digest: Digest, offset?: number) {
  const reader = await blob.openRead(digest, offset);
  assert(reader, "readable");
  return concat(await collect(reader));
}

Deno.test("blob: a whole-blob Read with wrong bytes fails at the end", async () => {
  await withFakeServer({
    stat: () => ({ chunks: [], bao: new Uint8Array() }),
    read: () => [F.BLOB_B.subarray(0, 1000), new Uint8Array(5)],
  }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    await assertRejects(() => readAll(blob, F.BLOB_B_DIGEST), StorageError, "arrived with digest");
    await blob.close();
  });
});

Deno.test("blob: a blob without a chunk list yields nothing before it is verified whole, in memory or in a temporary file", async () => {
  // 20 MiB: above what is held in memory. One byte near the end is wrong.
  const good = F.pseudoRandom(20 << 20, 91);
  const digest = blake3(good);
  const bad = good.slice();
  bad[bad.length - 10] ^= 1;
  const pieces = (data: Uint8Array) =>
    Array.from(
      { length: data.length / (1 << 20) },
      (_, i) => data.subarray(i << 20, (i + 1) << 20),
    );
  for (const [name, sent] of [["wrong", bad], ["right", good]] as const) {
    await withFakeServer({
      stat: () => ({ chunks: [], bao: new Uint8Array() }),
      read: () => pieces(sent),
    }, async (url) => {
      const blob = await GrpcBlobService.fromUrl(url);
      try {
        for (const offset of [0, 8 << 20]) {
          const reader = (await blob.openRead(digest, offset))![Symbol.asyncIterator]();
          // The first piece: a reader that stops after it (a FUSE read, a
          // NAR range) must never have seen a wrong byte.
          const first = await reader.next().then((r) => r, (err) => err);
          if (name === "wrong") {
            assert(first instanceof StorageError, `${name} @${offset}: ${first}`);
            continue;
          }
          assert(!(first instanceof Error) && !first.done, `${name} @${offset}: ${first}`);
          const rest: Uint8Array[] = [first.value];
          for (let r = await reader.next(); !r.done; r = await reader.next()) rest.push(r.value);
          assert(bytesEqual(concat(rest), good.subarray(offset)), `${name} @${offset}`);
        }
      } finally {
        await blob.close();
      }
    });
  }
});

Deno.test("blob: chunked reads verify every chunk before returning it", async () => {
  const parts = B_PARTS, rest = B_PARTS[2], chunks = B_CHUNKS;
  const corrupt = new Uint8Array(rest);
  corrupt[17] ^= 1;
  const byDigest = (d: Uint8Array) =>
    bytesEqual(d, chunks[0].digest)
      ? [parts[0].subarray(0, 100), parts[0].subarray(100)]
      : bytesEqual(d, chunks[1].digest)
      ? [parts[1]]
      : [corrupt];
  await withFakeServer({
    stat: () => ({ chunks, bao: new Uint8Array() }),
    read: (req) => byDigest(req.digest),
  }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    // The two good chunks come out; the corrupted third one never does.
    const reader = await blob.openRead(F.BLOB_B_DIGEST, 12_345);
    assert(reader, "readable");
    const got: Uint8Array[] = [];
    await assertRejects(
      async () => {
        for await (const piece of reader) got.push(piece);
      },
      StorageError,
      "wrong contents",
    );
    assert(bytesEqual(concat(got), F.BLOB_B.subarray(12_345, 700_000)), "good chunks intact");
    await blob.close();
  });
});

Deno.test("blob: a listed chunk is read by its digest without a Stat, and verified", async () => {
  const parts = B_PARTS, chunks = B_CHUNKS;
  const corrupt = new Uint8Array(parts[2]);
  corrupt[5] ^= 1;
  const stats: Uint8Array[] = [];
  await withFakeServer({
    stat: (req) => {
      stats.push(req.digest);
      return {
        chunks: bytesEqual(req.digest, F.BLOB_B_DIGEST) ? chunks : [],
        bao: new Uint8Array(),
      };
    },
    read: (req) =>
      bytesEqual(req.digest, chunks[0].digest)
        ? [parts[0]]
        : bytesEqual(req.digest, chunks[1].digest)
        ? [parts[1].subarray(0, 10), parts[1].subarray(10)]
        : [corrupt],
  }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    assertEquals((await blob.chunks(F.BLOB_B_DIGEST))?.length, 3);
    assert(bytesEqual(await readAll(blob, chunks[0].digest), parts[0]));
    assert(bytesEqual(await readAll(blob, chunks[1].digest, 1000), parts[1].subarray(1000)));
    await assertRejects(() => readAll(blob, chunks[2].digest), StorageError, "wrong contents");
    assertEquals(stats.length, 1, "only the blob itself was asked about");
    await blob.close();
  });
});

Deno.test("blob: chunk size mismatch and malformed chunk lists fail", async () => {
  const data = F.BLOB_B.subarray(0, 1000);
  await withFakeServer({
    stat: (req) =>
      req.digest[0] === 0
        ? { chunks: [{ digest: new Uint8Array(31), size: 1n }], bao: new Uint8Array() }
        : {
          chunks: [
            { digest: blake3(data), size: 999n },
            { digest: blake3(data), size: 1000n },
          ],
          bao: new Uint8Array(),
        },
    read: () => [data],
  }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    await assertRejects(
      () => blob.chunks(new Uint8Array(32)),
      StorageError,
      "Invalid digest length 31 for chunk #0",
    );
    // From the start, one Read cut at the listed sizes: the first "chunk" is
    // 999 bytes that do not hash to its digest.
    await assertRejects(
      () => readAll(blob, F.BLOB_B_DIGEST),
      StorageError,
      "arrived with wrong contents",
    );
    // From an offset, chunk by chunk: the chunk's Read has the wrong length.
    await assertRejects(() => readAll(blob, F.BLOB_B_DIGEST, 1), StorageError, "listed with 999");
    await blob.close();
  });
});

Deno.test("blob: a whole listed blob is one Read, cut at chunk boundaries and verified", async () => {
  const chunks = B_CHUNKS;
  const reads: Uint8Array[] = [];
  // Messages cut anywhere: across chunk boundaries, and several chunks in one.
  let messages = [F.BLOB_B.subarray(0, 250_000), F.BLOB_B.subarray(250_000)];
  await withFakeServer({
    stat: () => ({ chunks, bao: new Uint8Array() }),
    read: (req) => {
      reads.push(req.digest);
      return messages;
    },
  }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    assert(bytesEqual(await readAll(blob, F.BLOB_B_DIGEST), F.BLOB_B));
    assertEquals(reads.length, 1, "one Read for the whole blob");
    assert(bytesEqual(reads[0], F.BLOB_B_DIGEST));
    // A damaged byte in the third chunk: the first two come out, the third never does.
    const corrupt = new Uint8Array(F.BLOB_B);
    corrupt[800_000] ^= 1;
    messages = [corrupt];
    const reader = await blob.openRead(F.BLOB_B_DIGEST);
    assert(reader, "readable");
    const got: Uint8Array[] = [];
    await assertRejects(
      async () => {
        for await (const piece of reader) got.push(piece);
      },
      StorageError,
      "wrong contents",
    );
    assert(bytesEqual(concat(got), F.BLOB_B.subarray(0, 700_000)), "good chunks intact");
    // Short of the list: an error, not a short blob.
    messages = [F.BLOB_B.subarray(0, 700_000)];
    await assertRejects(() => readAll(blob, F.BLOB_B_DIGEST), StorageError, "2 of its 3 chunks");
    await blob.close();
  });
});

Deno.test("blob: a whole read of a blob whose listed chunks are other contents fails before it completes", async () => {
  // A hostile server lists, for BLOB_B's digest, chunks of other bytes
  // that each match their own digest.
  const other = new Uint8Array(F.BLOB_B.length).fill(0x47);
  const cut = [0, 400_000, 700_000, other.length];
  const chunks = cut.slice(1).map((end, i) => ({
    digest: blake3(other.subarray(cut[i], end)),
    size: BigInt(end - cut[i]),
  }));
  await withFakeServer({
    stat: () => ({ chunks, bao: new Uint8Array() }),
    read: () => [other],
  }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    await assertRejects(
      () => readAll(blob, F.BLOB_B_DIGEST),
      StorageError,
      "do not add up to it",
    );
    await blob.close();
  });
});

Deno.test("blob: a small blob of known size is one Read without a Stat, verified whole", async () => {
  const data = F.BLOB_B.subarray(0, 5000);
  const digest = blake3(data);
  const stats: Uint8Array[] = [];
  let reply = [data.subarray(0, 10), data.subarray(10)];
  await withFakeServer({
    stat: (req) => {
      stats.push(req.digest);
      return { chunks: [], bao: new Uint8Array() };
    },
    read: () => reply,
  }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    const read = async (offset = 0, size = data.length) =>
      concat(await collect((await blob.openRead(digest, offset, size))!));
    assert(bytesEqual(await read(), data));
    assert(bytesEqual(await read(4000), data.subarray(4000)));
    assertEquals(stats.length, 0, "no Stat for a small blob of known size");
    const corrupt = new Uint8Array(data);
    corrupt[4999] ^= 1;
    reply = [corrupt];
    await assertRejects(() => read(), StorageError, "wrong contents");
    // A wrong size hint only costs the fallback: the blob is still read whole.
    reply = [data];
    assert(bytesEqual(await read(0, 100), data));
    assertEquals(stats.length, 1, "the fallback asked Stat");
    await blob.close();
  });
});

Deno.test("blob: batched small-blob reads verify each blob and fail only the wrong one", async () => {
  const blobs = [F.BLOB_A, F.BLOB_B.subarray(0, 3000), F.BLOB_B.subarray(3000, 9000)];
  const digests = blobs.map((d) => blake3(d));
  const absent = blake3(b("nobody has this"));
  const calls: number[] = [];
  let damage = -1;
  await withFakeServer({
    readSmall: ({ digests: asked }) => {
      calls.push(asked.length);
      const answer = asked.map((d) => {
        const i = digests.findIndex((x) => bytesEqual(x, d));
        if (i < 0) return { data: new Uint8Array(0), outcome: SmallBlobOutcome.NOT_FOUND };
        const data = new Uint8Array(blobs[i]);
        if (i === damage) data[0] ^= 1;
        return { data, outcome: SmallBlobOutcome.FOUND };
      });
      // Two messages, so blobs are matched to requests across messages too.
      return [{ blobs: answer.slice(0, 1) }, { blobs: answer.slice(1) }];
    },
  }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    const read = async (digest: Digest, size: number) => {
      const reader = await blob.openRead(digest, 0, size);
      return reader && concat(await collect(reader));
    };
    // Opened together: one call for all four.
    const got = await Promise.all(
      [...digests, absent].map((d, i) => read(d, blobs[i]?.length ?? 9)),
    );
    assertEquals(calls, [4]);
    for (const [i, data] of blobs.entries()) assert(bytesEqual(got[i]!, data), `blob ${i}`);
    assertEquals(got[3], undefined);
    damage = 1;
    const results = await Promise.allSettled(digests.map((d, i) => read(d, blobs[i].length)));
    assertEquals(results.map((r) => r.status), ["fulfilled", "rejected", "fulfilled"]);
    const failure = (results[1] as PromiseRejectedResult).reason;
    assert(failure instanceof StorageError && /wrong contents/.test(failure.message), failure);
    await blob.close();
  });
});

Deno.test("blob: a batched read answering too few blobs fails the rest", async () => {
  const blobs = [F.BLOB_A, F.BLOB_B.subarray(0, 3000)];
  await withFakeServer({
    readSmall: () => [{ blobs: [{ data: blobs[0], outcome: SmallBlobOutcome.FOUND }] }],
  }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    const results = await Promise.allSettled(blobs.map(async (data) => {
      const reader = await blob.openRead(blake3(data), 0, data.length);
      return concat(await collect(reader!));
    }));
    assertEquals(results[0].status, "fulfilled");
    const failure = (results[1] as PromiseRejectedResult).reason;
    assert(failure instanceof StorageError && /answered 1 of 2/.test(failure.message), failure);
    await blob.close();
  });
});

Deno.test("blob: chunks fetched through batched reads are checked against the chunk list", async () => {
  const rest = B_PARTS[2], listed = B_CHUNKS;
  let chunks = listed;
  const corrupt = new Uint8Array(rest);
  corrupt[17] ^= 1;
  let third = corrupt;
  const all = B_PARTS;
  await withFakeServer({
    stat: () => ({ chunks, bao: new Uint8Array() }),
    readSmall: ({ digests }) => [{
      blobs: digests.map((d) => {
        const i = listed.findIndex((c) => bytesEqual(c.digest, d));
        return { data: i === 2 ? third : all[i], outcome: SmallBlobOutcome.FOUND };
      }),
    }],
  }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    const readFrom = async (offset: number) => {
      const reader = await blob.openRead(F.BLOB_B_DIGEST, offset);
      assert(reader, "readable");
      const got: Uint8Array[] = [];
      try {
        for await (const piece of reader) got.push(piece);
      } catch (err) {
        return { got: concat(got), err };
      }
      return { got: concat(got), err: undefined };
    };
    // A damaged chunk: the good ones before it come out, it never does.
    const damaged = await readFrom(12_345);
    assert(damaged.err instanceof StorageError && /wrong contents/.test(damaged.err.message));
    assert(bytesEqual(damaged.got, F.BLOB_B.subarray(12_345, 700_000)), "good chunks intact");
    // Right bytes, but the list gives the chunk another size.
    third = rest;
    chunks = listed.map((c, i) => (i === 1 ? { ...c, size: c.size + 1n } : c));
    const lying = await readFrom(12_345);
    assert(
      lying.err instanceof StorageError && /listed with/.test(lying.err.message),
      String(lying.err),
    );
    // Honest: the whole rest of the blob.
    chunks = listed;
    const good = await readFrom(12_345);
    assertEquals(good.err, undefined);
    assert(bytesEqual(good.got, F.BLOB_B.subarray(12_345)));
    await blob.close();
  });
});

Deno.test("blob: readChunkInto fills the target through batched reads, verified there", async () => {
  const listed = B_CHUNKS;
  let damage = -1;
  await withFakeServer({
    stat: () => ({ chunks: listed, bao: new Uint8Array() }),
    readSmall: ({ digests }) => [{
      blobs: digests.map((d) => {
        const i = listed.findIndex((c) => bytesEqual(c.digest, d));
        const data = new Uint8Array(B_PARTS[i]);
        if (i === damage) data[5] ^= 1;
        return { data, outcome: SmallBlobOutcome.FOUND };
      }),
    }],
  }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    await blob.chunks(F.BLOB_B_DIGEST);
    const targets = B_PARTS.map((p) => new Uint8Array(p.length));
    await Promise.all(listed.map((c, i) => blob.readChunkInto(c.digest, targets[i])));
    for (const [i, part] of B_PARTS.entries()) assert(bytesEqual(targets[i], part), `chunk ${i}`);
    // A blob handed out by a batched read (not into a target) is a view
    // into the received message, which a reader freeing it leaves alone.
    const reader = await blob.openRead(listed[1].digest, 0, Number(listed[1].size));
    const [piece] = await collect(reader!);
    assert(piece.byteLength < piece.buffer.byteLength, "a view into the message");
    releaseWhole(piece);
    assert(bytesEqual(piece, B_PARTS[1]), "intact after releaseWhole");
    damage = 1;
    const err = await assertRejects(
      () => blob.readChunkInto(listed[1].digest, new Uint8Array(B_PARTS[1].length)),
      StorageError,
    );
    assert(/wrong contents/.test(err.message), err.message);
    await blob.close();
  });
});

Deno.test("blob: reads around close settle: no hang, no unhandled rejection", async () => {
  const data = F.BLOB_B.subarray(0, 5000);
  await withFakeServer({
    readSmall: ({ digests }) => [{
      blobs: digests.map(() => ({ data, outcome: SmallBlobOutcome.FOUND })),
    }],
  }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    const read = async () => concat(await collect((await blob.openRead(blake3(data), 0, 5000))!));
    assert(bytesEqual(await read(), data));
    // Asked for in the same synchronous run as close: it is sent, and the
    // channel closing under it fails it (as it fails any call not started).
    const before = await Promise.allSettled([read(), blob.close()]);
    if (before[0].status === "fulfilled") assert(bytesEqual(before[0].value, data));
    else assert(before[0].reason instanceof Error, String(before[0].reason));
    await assertRejects(read);
  });
});

Deno.test("blob: a malformed Put response digest fails close", async () => {
  await withFakeServer({ put: () => ({ digest: new Uint8Array(5) }) }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    const writer = blob.openWrite();
    await writer.write(F.BLOB_A);
    await assertRejects(() => writer.close(), StorageError, "digest of 5 bytes");
    await blob.close();
  });
});

Deno.test("blob: a Put the server fails mid-stream rejects instead of hanging", async () => {
  await withFakeServer({ putFailsWith: grpc.status.RESOURCE_EXHAUSTED }, async (url) => {
    const blob = await GrpcBlobService.fromUrl(url);
    const writer = blob.openWrite();
    const piece = new Uint8Array(1024 * 1024);
    await assertRejects(
      async () => {
        for (let i = 0; i < 64; i++) await writer.write(piece);
        await writer.close();
      },
      StorageError,
      "RESOURCE_EXHAUSTED: disk full",
    );
    await blob.close();
  });
});

Deno.test("directory: get checks the digest and validity of what arrives", async () => {
  const invalid: Directory = {
    directories: [],
    files: [],
    symlinks: [{ name: b("b"), target: b("x") }, { name: b("a"), target: b("x") }],
  };
  const bad = directoryDigest(invalid);
  await withFakeServer({
    getDirectory: (req) => bytesEqual(req.byWhat!.value, bad) ? [invalid] : [F.DIRECTORY_B],
  }, async (url) => {
    const dirs = await GrpcDirectoryService.fromUrl(url);
    await assertRejects(
      () => dirs.get(directoryDigest(F.DIRECTORY_A)),
      StorageError,
      "requested directory with digest",
    );
    await assertRejects(() => dirs.get(bad), StorageError, "failed validation");
    await dirs.close();
  });
});

Deno.test("directory: recursive get validates root-to-leaves", async () => {
  const A = F.DIRECTORY_A, B = F.DIRECTORY_B, C = F.DIRECTORY_C;
  const closures: Directory[][] = [[C, B], [C], [A, C]];
  let next = 0;
  await withFakeServer({ getDirectory: () => closures[next++] }, async (url) => {
    const dirs = await GrpcDirectoryService.fromUrl(url);
    const root = directoryDigest(C);
    await assertRejects(() => collect(dirs.getRecursive(root)), StorageError, "unexpected");
    await assertRejects(
      () => collect(dirs.getRecursive(root)),
      StorageError,
      "premature end of stream",
    );
    await assertRejects(() => collect(dirs.getRecursive(root)), StorageError, "unexpected");
    await dirs.close();
  });
});

Deno.test("directory: a directory referenced again after it arrived is fine (docs/compatibility.md#q7-grpc-directory-client-reports-false-premature-ends)", async () => {
  // root -> a: X, b: Y; Y -> x: X. Breadth-first: root, X, Y; Y names X again.
  const X = F.DIRECTORY_A;
  const Y: Directory = {
    directories: [{ name: b("x"), digest: directoryDigest(X), size: directorySize(X) }],
    files: [],
    symlinks: [],
  };
  const root: Directory = {
    directories: [
      { name: b("a"), digest: directoryDigest(X), size: directorySize(X) },
      { name: b("b"), digest: directoryDigest(Y), size: directorySize(Y) },
    ],
    files: [],
    symlinks: [],
  };
  await withFakeServer({ getDirectory: () => [root, X, Y, X] }, async (url) => {
    const dirs = await GrpcDirectoryService.fromUrl(url);
    assertEquals(await collect(dirs.getRecursive(directoryDigest(root))), [root, X, Y]);
    await dirs.close();
  });
});

Deno.test("pathinfo: get and list validate what arrives", async () => {
  const good: PathInfo = {
    node: { node: makeNode.symlink(b(`00000000000000000000000000000000-foo`), b("x")) },
    references: [],
    narinfo: undefined,
  };
  const other: PathInfo = {
    node: { node: makeNode.symlink(b(`11111111111111111111111111111111-foo`), b("x")) },
    references: [],
    narinfo: undefined,
  };
  const invalid: PathInfo = {
    node: { node: makeNode.symlink(b("invalid"), b("x")) },
    references: [],
    narinfo: undefined,
  };
  await withFakeServer({
    getPathInfo: (req) => req.byWhat!.value[0] === 0 ? other : invalid,
    listPathInfo: () => [good, invalid],
  }, async (url) => {
    const infos = await GrpcPathInfoService.fromUrl(url);
    await assertRejects(() => infos.get(new Uint8Array(20)), StorageError, "server sent");
    await assertRejects(
      () => infos.get(new Uint8Array(20).fill(1)),
      StorageError,
      "invalid pathinfo",
    );
    const seen: PathInfo[] = [];
    await assertRejects(
      async () => {
        for await (const info of infos.list()) seen.push(info);
      },
      StorageError,
      "invalid pathinfo",
    );
    assertEquals(seen, [good]);
    await infos.close();
  });
});

Deno.test("calculateNar sends a nameless node with a placeholder name", async () => {
  const received: Node[] = [];
  const sha = new Uint8Array(32).fill(7);
  await withFakeServer({
    calculateNar: (node) => {
      received.push(node);
      return { narSize: 42n, narSha256: sha };
    },
  }, async (url) => {
    const nar = await GrpcPathInfoService.fromUrl(url);
    const node = makeNode.file(new Uint8Array(0), F.HELLOWORLD_BLOB_DIGEST, 12n);
    assertEquals(await nar.calculateNar(node), { narSize: 42n, narSha256: sha });
    assert(bytesEqual(received[0].node!.value.name, b("root")), "placeholder name sent");
    await nar.close();
  });
});
