/**
 * Slow readers must not grow the daemon (issue 11, defect 2): clients that
 * open `BlobService/Read` on a large blob, take one message and then stop
 * reading (without cancelling) may only pin the message their HTTP/2
 * window holds back and a chunk or two per stream; one that reads on gets
 * the rest; cancelling them frees what they held. The readers are a raw HTTP/2 client (`raw_h2.ts`) that
 * grants each stream exactly its first message, against a real daemon on
 * an embedded store.
 */
import { randomFillSync } from "node:crypto";
import { assert, assertEquals } from "../assert.ts";
import { MEMORY_BACKENDS, startDaemon } from "./daemon_harness.ts";
import { RawH2Connection, type RawStream } from "./raw_h2.ts";
import { GrpcBlobService } from "../../src/castore/blob/grpc.ts";
import { channelFor, clientOn, serverStream } from "../../src/grpc/channel.ts";
import {
  BlobChunk,
  BlobServiceClient,
  ReadBlobRequest,
} from "../../src/proto/tvix/castore/protos/rpc_blobstore.ts";
import { blake3, bytesEqual, concatBytes } from "../../src/castore/digest.ts";
import { MAX_CONCURRENT_STREAMS } from "../../src/grpc_server/server.ts";

const MiB = 1024 * 1024;
const BLOB_BYTES = 256 * MiB;
const READERS = 100;
const CONNECTIONS = 4;
/** What 100 stalled readers may cost the daemon in all. */
const MAX_GROWTH = 256 * MiB;
/** Rounds of stalling and cancelling readers. */
const ROUNDS = 3;
/**
 * Where later rounds must keep the daemon: what cancelled readers held is
 * garbage, so rounds must not add up, but it goes only when the collector
 * gets to it (a heap snapshot after a cancel shows none of it reachable),
 * so a round may find the last one's garbage still counted in RSS.
 */
const LATER_ROUNDS_GROWTH = 2 * MAX_GROWTH;

/** The daemon's resident set size (VmRSS), in bytes. */
function rss(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** Samples RSS until it stopped rising for `quietMs` (at most `maxMs`); returns the peak. */
async function settledRss(pid: number, quietMs = 1500, maxMs = 15_000): Promise<number> {
  const t0 = Date.now();
  let peak = rss(pid);
  let peakAt = Date.now();
  while (Date.now() - peakAt < quietMs && Date.now() - t0 < maxMs) {
    await new Promise((r) => setTimeout(r, 100));
    const now = rss(pid);
    if (now > peak + MiB) {
      peak = now;
      peakAt = Date.now();
    }
  }
  return Math.max(peak, rss(pid));
}

const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;

/** Incompressible test data (zstd and chunk dedup cannot shrink it). */
function randomBlob(size: number): Uint8Array {
  const data = new Uint8Array(size);
  for (let at = 0; at < size; at += 64 * 1024 * 1024) {
    randomFillSync(data, at, Math.min(64 * 1024 * 1024, size - at));
  }
  return data;
}

async function upload(url: string, data: Uint8Array): Promise<Uint8Array> {
  const blobs = await GrpcBlobService.fromUrl(url);
  try {
    const writer = blobs.openWrite();
    for (let at = 0; at < data.length; at += MiB) await writer.write(data.subarray(at, at + MiB));
    return await writer.close();
  } finally {
    await blobs.close();
  }
}

/** Reads the whole blob in one `Read` with our grpc-js client; checks it byte for byte. */
async function readWholeBlob(url: string, digest: Uint8Array, expected: Uint8Array): Promise<void> {
  const lease = await channelFor(url);
  try {
    const client = clientOn(lease, BlobServiceClient);
    let at = 0;
    for await (const { data } of serverStream<BlobChunk>(client.read({ digest }))) {
      assert(
        bytesEqual(data, expected.subarray(at, at + data.length)),
        `bytes at offset ${at} differ`,
      );
      at += data.length;
    }
    assertEquals(at, expected.length, "bytes read");
  } finally {
    lease.release();
  }
}

/** The host and port of a daemon's `[::1]:port` address, for {@linkcode RawH2Connection}. */
function hostPort(address: string): [string, number] {
  const { hostname, port } = new URL(`http://${address}`);
  return [hostname.replace(/^\[|\]$/g, ""), Number(port)];
}

const READ_PATH = "/tvix.castore.v1.BlobService/Read";

/**
 * Opens `READERS` Read streams of `digest` over `CONNECTIONS` raw
 * connections, each granted its first message only; checks that each got
 * it and stalled there.
 */
async function stallReaders(
  address: string,
  digest: Uint8Array,
  data: Uint8Array,
): Promise<{ conns: RawH2Connection[]; streams: [RawH2Connection, RawStream][] }> {
  const request = ReadBlobRequest.encode({ digest }).finish();
  const conns: RawH2Connection[] = [];
  const streams: [RawH2Connection, RawStream][] = [];
  for (let c = 0; c < CONNECTIONS; c++) {
    const conn = await RawH2Connection.connect(...hostPort(address));
    conns.push(conn);
    await conn.settingsReceived;
    for (let i = 0; i < READERS / CONNECTIONS; i++) {
      streams.push([conn, await conn.call(address, READ_PATH, request, true)]);
    }
  }
  await Promise.all(streams.map(([, s]) => s.firstMessage));
  for (const [, s] of streams) {
    assert(!s.closed && s.first, `stream ${s.id} ended early (reset ${s.resetCode})`);
    const first = BlobChunk.decode(s.first).data;
    assert(first.length > 0 && bytesEqual(first, data.subarray(0, first.length)), "first piece");
  }
  return { conns, streams };
}

/** Checks that the gRPC-framed `payloads` of a Read carry exactly `expected`. */
function checkMessages(payloads: Uint8Array[], expected: Uint8Array): void {
  const bytes = concatBytes(payloads);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  let offset = 0;
  while (at < bytes.length) {
    const length = view.getUint32(at + 1);
    const { data } = BlobChunk.decode(bytes.subarray(at + 5, at + 5 + length));
    assert(
      bytesEqual(data, expected.subarray(offset, offset + data.length)),
      `bytes at offset ${offset} differ`,
    );
    offset += data.length;
    at += 5 + length;
  }
  assertEquals(offset, expected.length, "bytes received");
}

/** Cancels every stream still open, then closes the connections. */
async function cancelReaders(
  { conns, streams }: { conns: RawH2Connection[]; streams: [RawH2Connection, RawStream][] },
): Promise<void> {
  for (const [conn, s] of streams) if (!s.closed) await conn.cancel(s);
  // Let the daemon see the resets before the connections go.
  await new Promise((r) => setTimeout(r, 200));
  for (const conn of conns) await conn.close();
}

Deno.test({
  name: `daemon: ${READERS} stalled Read streams of a 256 MiB blob pin at most 256 MiB`,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const home = await Deno.makeTempDir({ prefix: "tvix-slow-reader-" });
  const daemon = await startDaemon({ home });
  const url = `grpc+http://${daemon.address}`;
  const pid = daemon.child.pid;
  try {
    const data = randomBlob(BLOB_BYTES);
    const digest = await upload(url, data);
    assert(bytesEqual(digest, blake3(data)), "upload digest");
    const baseline = await settledRss(pid);
    console.log(`daemon RSS before the readers: ${mib(baseline)}`);

    for (let round = 1; round <= ROUNDS; round++) {
      const readers = await stallReaders(daemon.address, digest, data);
      const stalled = await settledRss(pid);
      console.log(
        `round ${round}: daemon RSS with ${READERS} stalled readers: ${mib(stalled)} ` +
          `(+${mib(stalled - baseline)})`,
      );
      // The window held them: no stream got much beyond its first message.
      for (const [, s] of readers.streams) {
        assert(s.dataBytes < 2 * MiB, `stream ${s.id} got ${s.dataBytes} bytes`);
      }
      if (round === 1) {
        assert(
          stalled - baseline <= MAX_GROWTH,
          `daemon grew by ${mib(stalled - baseline)} for ${READERS} stalled readers`,
        );
        // A reader that reads on after a stall longer than STALL_MS gets the
        // rest of the blob from a read reopened where it stopped.
        const [conn, first] = readers.streams[0];
        await conn.resume(first);
        assertEquals(first.resetCode, undefined, "reset");
        checkMessages(first.data, data);
      } else {
        assert(
          stalled - baseline <= LATER_ROUNDS_GROWTH,
          `round ${round}: daemon kept growing, by ${mib(stalled - baseline)}`,
        );
      }

      await cancelReaders(readers);
      if (round === 1) {
        // Cancelled readers leave a daemon that serves the whole blob.
        await readWholeBlob(url, digest, data);
        const after = await settledRss(pid);
        console.log(`after cancelling them and a whole read: ${mib(after)}`);
        assert(after - baseline <= LATER_ROUNDS_GROWTH, `grew by ${mib(after - baseline)}`);
      }
    }
  } finally {
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test({
  name: `daemon: at most ${MAX_CONCURRENT_STREAMS} streams per connection; our client queues more`,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const home = await Deno.makeTempDir({ prefix: "tvix-stream-limit-" });
  const daemon = await startDaemon({ home, args: MEMORY_BACKENDS });
  const url = `grpc+http://${daemon.address}`;
  try {
    const data = randomBlob(4 * MiB);
    const digest = await upload(url, data);

    // A client that ignores the limit: the stream beyond it is refused
    // (nghttp2 answers with GOAWAY PROTOCOL_ERROR for the connection).
    const conn = await RawH2Connection.connect(...hostPort(daemon.address));
    try {
      await conn.settingsReceived;
      assertEquals(conn.maxConcurrentStreams, MAX_CONCURRENT_STREAMS, "advertised limit");
      const request = ReadBlobRequest.encode({ digest }).finish();
      const streams: RawStream[] = [];
      for (let i = 0; i <= MAX_CONCURRENT_STREAMS; i++) {
        streams.push(await conn.call(daemon.address, READ_PATH, request, true));
      }
      await Promise.all(streams.map((s) => s.firstMessage));
      const extra = streams[MAX_CONCURRENT_STREAMS];
      assert(
        extra.first === undefined &&
          (extra.resetCode !== undefined || conn.goAwayCode !== undefined),
        `stream ${MAX_CONCURRENT_STREAMS + 1} was served`,
      );
    } finally {
      await conn.close();
    }

    // Our client keeps more calls than that open on one connection: the
    // ones beyond the limit wait for a free stream and then succeed.
    const blobs = await GrpcBlobService.fromUrl(url);
    try {
      const uploads = Array.from({ length: MAX_CONCURRENT_STREAMS + 50 }, (_, i) => {
        const writer = blobs.openWrite();
        const piece = data.subarray(i * 1000, i * 1000 + 300 * 1024);
        return { writer, piece, wrote: writer.write(piece) };
      });
      for (const u of uploads) await u.wrote;
      for (const u of uploads) assertEquals(await u.writer.close(), blake3(u.piece));
    } finally {
      await blobs.close();
    }
    // And the daemon serves on.
    await readWholeBlob(url, digest, data);
  } finally {
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
});
