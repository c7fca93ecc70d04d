/**
 * Message limits that admit every directory Nix accepts (issue 11,
 * defect 5): a directory travels as one Directory message, so one with
 * 100,000 entries (~8 MB) must pass between our client and a real daemon,
 * while blob data stays held to 4 MiB per message and directories to
 * 64 MiB (docs/compatibility.md#message-size-limits).
 */
import { join } from "node:path";
import { Buffer } from "node:buffer";
import { assert, assertEquals, assertMatch } from "../assert.ts";
import { tvixStore } from "../cli/helpers.ts";
import { nixOracle } from "../store/tree_gen.ts";
import { generatePythonStubs, MEMORY_BACKENDS, PYTHON, startDaemon } from "./daemon_harness.ts";
import { serviceAddrArgs } from "../../src/cli/common.ts";
import { constructServices } from "../../src/store/services.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { directorySize, encodeDirectory } from "../../src/castore/directory.ts";
import { blake3, concatBytes, toBase64 } from "../../src/castore/digest.ts";
import {
  channelFor,
  clientOn,
  ClientUpload,
  MAX_DIRECTORY_MESSAGE_BYTES,
} from "../../src/grpc/channel.ts";
import {
  BlobChunk,
  BlobServiceClient,
  type PutBlobResponse,
} from "../../src/proto/tvix/castore/protos/rpc_blobstore.ts";
import {
  DirectoryServiceClient,
  type PutDirectoryResponse,
} from "../../src/proto/tvix/castore/protos/rpc_directory.ts";
import { Directory } from "../../src/proto/tvix/castore/protos/castore.ts";
import { GrpcBlobService } from "../../src/castore/blob/grpc.ts";
import { GrpcDirectoryService } from "../../src/castore/directory/grpc.ts";
import { errorMessage } from "../../src/errors.ts";

const MiB = 1024 * 1024;
const ENTRIES = 100_000;
/** gRPC status numbers as grpcio reports them. */
const OK = 0, RESOURCE_EXHAUSTED = 8;

/** Writes `count` empty files with 40-byte names into a new directory `dir`. */
async function writeWideDirectory(dir: string, count: number): Promise<void> {
  await Deno.mkdir(dir);
  const empty = new Uint8Array(0);
  for (let i = 0; i < count; i++) {
    const name = `entry-${String(i).padStart(6, "0")}-abcdefghijklmnopqrstuvwxyz12`;
    Deno.writeFileSync(join(dir, name), empty);
  }
}

/** What `py/get_directory.py` reports for one Get. */
interface PyGet {
  code: number;
  details: string;
  sizes: number[];
}

/** A non-recursive Get through Python grpcio, with its default receive limit unless one is given. */
async function pythonGet(
  stubs: string,
  target: string,
  digest: Uint8Array,
  maxReceive?: number,
): Promise<PyGet> {
  const script = new URL("./py/get_directory.py", import.meta.url).pathname;
  const args = [script, stubs, target, toBase64(digest)];
  if (maxReceive !== undefined) args.push(String(maxReceive));
  const out = await new Deno.Command(PYTHON, { args, stdout: "piped", stderr: "piped" }).output();
  const td = new TextDecoder();
  assert(out.success, `get_directory.py failed: ${td.decode(out.stderr)}`);
  return JSON.parse(td.decode(out.stdout));
}

Deno.test({
  name: `import of a ${ENTRIES}-entry directory through the daemon gives nix-store's path`,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tvix-large-dir-" });
  const daemon = await startDaemon({ home: join(tmp, "home") });
  try {
    const tree = join(tmp, "wide");
    await writeWideDirectory(tree, ENTRIES);
    const url = `grpc+http://${daemon.address}`;
    const addrs = { blobServiceAddr: url, directoryServiceAddr: url, pathInfoServiceAddr: url };

    const r = await tvixStore(["import", ...serviceAddrArgs(addrs), tree]);
    assertEquals(r.code, 0, r.stderr);
    const oracle = await nixOracle(tree, join(tmp, "nix"));
    assertEquals(r.stdout, `${oracle.storePath}\n`);

    // The daemon has the directory and hands it back whole, to our client …
    const services = await constructServices(addrs);
    let digest: Uint8Array;
    let encodedSize: number;
    try {
      const info = await services.pathInfo.get(StorePath.parseAbsolute(oracle.storePath).digest);
      const root = info?.node?.node;
      assert(root?.$case === "directory", "root node is a directory");
      digest = root.value.digest;
      const directory = await services.directory.get(digest);
      assertEquals(directory?.files.length, ENTRIES);
      encodedSize = encodeDirectory(directory!).length;
      assert(encodedSize > 4 * MiB, `the directory is ${encodedSize} bytes, above 4 MiB`);
    } finally {
      await services.close();
    }

    // … and to Python grpcio, once its receive limit is raised: with the
    // default of 4 MiB it refuses the message (docs/compatibility.md#message-size-limits).
    const stubs = await generatePythonStubs();
    try {
      const narrow = await pythonGet(stubs, daemon.grpcioTarget, digest);
      assertEquals(narrow.code, RESOURCE_EXHAUSTED, narrow.details);
      const wide = await pythonGet(stubs, daemon.grpcioTarget, digest, MAX_DIRECTORY_MESSAGE_BYTES);
      assertEquals(wide, { code: OK, details: "", sizes: [encodedSize] });
    } finally {
      await Deno.remove(stubs, { recursive: true });
    }
  } catch (err) {
    console.error(daemon.log());
    throw err;
  } finally {
    await daemon.stop();
    await Deno.remove(tmp, { recursive: true });
  }
});

/** Uploads `messages` (encoded) in one client stream; resolves the response or rejects. */
async function upload<Res>(
  start: ConstructorParameters<typeof ClientUpload<Res>>[0],
  messages: Uint8Array[],
): Promise<Res> {
  const call = new ClientUpload<Res>(start);
  for (const m of messages) await call.write(m);
  return await call.finish();
}

/** The error `promise` rejects with (it must reject). */
async function failure(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return errorMessage(err);
  }
  throw new Error("expected the call to fail");
}

Deno.test({
  name: "daemon: blob data over 4 MiB per message and directories over 64 MiB are refused",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const home = await Deno.makeTempDir({ prefix: "tvix-limits-" });
  const daemon = await startDaemon({ home, args: MEMORY_BACKENDS });
  const url = `grpc+http://${daemon.address}`;
  const lease = await channelFor(url);
  const blobs = await GrpcBlobService.fromUrl(url);
  const directories = await GrpcDirectoryService.fromUrl(url);
  try {
    const blobClient = clientOn(lease, BlobServiceClient);
    const putBlob = (pieces: Uint8Array[]) =>
      upload<PutBlobResponse>(
        (cb) => blobClient.put(cb),
        pieces.map((data) => BlobChunk.encode({ data }).finish()),
      );
    const piece = (n: number, seed: number) => new Uint8Array(n).map((_, i) => (i * seed) >> 3);

    // A message of exactly 4 MiB (tag, 4-byte length, data) is taken …
    const fits = piece(4 * MiB - 5, 7);
    assertEquals(BlobChunk.encode({ data: fits }).finish().length, 4 * MiB);
    assertEquals((await putBlob([fits])).digest, blake3(fits));
    // … one byte more is refused, after a piece that fitted, and nothing of
    // that upload is stored.
    const first = piece(MiB, 11);
    const tooBig = piece(4 * MiB - 4, 13);
    const message = await failure(putBlob([first, tooBig]));
    assertMatch(message, /RESOURCE_EXHAUSTED: BlobChunk message of 4194305 bytes/);
    assertMatch(message, /4194304-byte limit/);
    assertEquals(await blobs.has(blake3(concatBytes([first, tooBig]))), false);
    assertEquals(await blobs.has(blake3(first)), false);

    // A directory message above 64 MiB: our client will not send it, and
    // the daemon's transport refuses it when sent anyway.
    const huge: Directory = { directories: [], files: [], symlinks: [] };
    const target = Buffer.alloc(4000, "t");
    for (let i = 0; huge.symlinks.length * 4020 < MAX_DIRECTORY_MESSAGE_BYTES + MiB; i++) {
      huge.symlinks.push({
        name: new TextEncoder().encode(`link-${String(i).padStart(8, "0")}`),
        target,
      });
    }
    const encoded = Directory.encode(huge).finish();
    assert(encoded.length > MAX_DIRECTORY_MESSAGE_BYTES, `${encoded.length} bytes`);
    assertMatch(
      await failure(directories.put(huge)),
      new RegExp(`more than the ${MAX_DIRECTORY_MESSAGE_BYTES}-byte message limit`),
    );
    const dirClient = clientOn(lease, DirectoryServiceClient);
    assertMatch(
      await failure(upload<PutDirectoryResponse>((cb) => dirClient.put(cb), [encoded])),
      /RESOURCE_EXHAUSTED/,
    );
    assertEquals(await directories.get(blake3(encoded)), undefined);

    // The daemon serves on.
    const writer = blobs.openWrite();
    await writer.write(first);
    assertEquals(await writer.close(), blake3(first));
    assertEquals(await blobs.has(blake3(first)), true);
  } catch (err) {
    console.error(daemon.log());
    throw err;
  } finally {
    await directories.close();
    await blobs.close();
    lease.release();
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test({
  name: "daemon: one directory Put is bounded in all (--max-directory-closure-size)",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const home = await Deno.makeTempDir({ prefix: "tvix-closure-limit-" });
  const daemon = await startDaemon({
    home,
    args: [...MEMORY_BACKENDS, "--max-directory-closure-size=1MiB"],
  });
  const url = `grpc+http://${daemon.address}`;
  const directories = await GrpcDirectoryService.fromUrl(url);
  try {
    // A chain of directories of 100 kB each: 2 MiB in all, each one small.
    const target = Buffer.alloc(4000, "t");
    const chain: Directory[] = [];
    for (let d = 0; d < 20; d++) {
      const dir: Directory = { directories: [], files: [], symlinks: [] };
      for (let i = 0; i < 25; i++) {
        dir.symlinks.push({
          name: new TextEncoder().encode(`l${d}-${String(i).padStart(2, "0")}`),
          target,
        });
      }
      if (chain.length > 0) {
        const child = chain[chain.length - 1];
        const bytes = encodeDirectory(child);
        dir.directories.push({
          name: new TextEncoder().encode("sub"),
          digest: blake3(bytes),
          size: directorySize(child),
        });
      }
      chain.push(dir);
    }
    const putter = directories.putMultiple();
    const refused = (async () => {
      for (const dir of chain) await putter.put(dir);
      return await putter.close();
    })();
    assertMatch(await failure(refused), /exceed the 1048576-byte limit of one Put/);
    assertEquals(await directories.get(blake3(encodeDirectory(chain[0]))), undefined);
    // Within the limit, the same daemon takes a closure.
    const small = directories.putMultiple();
    await small.put(chain[0]);
    assertEquals(await small.close(), blake3(encodeDirectory(chain[0])));
  } catch (err) {
    console.error(daemon.log());
    throw err;
  } finally {
    await directories.close();
    await daemon.stop();
    await Deno.remove(home, { recursive: true });
  }
});
