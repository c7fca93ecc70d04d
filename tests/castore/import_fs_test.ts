/**
 * Memory bounds of `ingestPath`: how many uploads run at once, counted
 * through a real in-memory blob service, not timed.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import type { BlobService, BlobWriter } from "../../src/castore/blob/service.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import {
  type IngestOptions,
  ingestPath,
  LOCAL_MAX_INFLIGHT,
  REMOTE_MAX_INFLIGHT,
} from "../../src/castore/import/fs.ts";
import type { NodeVariant } from "../../src/castore/node.ts";

/** A MemoryBlobService that records the most writers open at the same time. */
class CountingBlobService extends MemoryBlobService {
  constructor(readonly remote = false) {
    super();
  }
  open = 0;
  maxOpen = 0;
  override openWrite(): BlobWriter {
    const inner = super.openWrite();
    this.open++;
    this.maxOpen = Math.max(this.maxOpen, this.open);
    let done = false;
    const finish = () => {
      if (!done) this.open--;
      done = true;
    };
    return {
      write: (data) => inner.write(data),
      // Slower than the walk, so uploads pile up against the bound.
      close: () => new Promise((r) => setTimeout(r, 2)).then(() => inner.close()).finally(finish),
      abort: () => inner.abort().finally(finish),
    };
  }
}

const FILES = 40;
const FILE_SIZE = 10_000;

/** A directory of {@linkcode FILES} distinct small files. */
async function smallTree(): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "import-fs-test-" });
  for (let i = 0; i < FILES; i++) {
    await Deno.writeFile(join(root, `f${i}`), new Uint8Array(FILE_SIZE).fill(i + 1));
  }
  return root;
}

async function ingestCounting(
  root: string,
  options: IngestOptions,
  remote = false,
): Promise<{ node: NodeVariant; maxOpen: number; blob: BlobService }> {
  const blob = new CountingBlobService(remote);
  const node = await ingestPath(root, blob, new MemoryDirectoryService(), options);
  return { node, maxOpen: blob.maxOpen, blob };
}

Deno.test("ingestPath keeps at most maxInflight uploads and maxInflightBytes in flight", async () => {
  const root = await smallTree();
  try {
    const byCount = await ingestCounting(root, { maxInflight: 4 });
    assertEquals(byCount.maxOpen, 4);
    // Three files' bytes fit the byte bound, a fourth does not.
    const byBytes = await ingestCounting(root, { maxInflightBytes: 3 * FILE_SIZE });
    assertEquals(byBytes.maxOpen, 3);
    // The counter does see overlap: without tight bounds many are open at once.
    const loose = await ingestCounting(root, {});
    assert(loose.maxOpen > 4, `only ${loose.maxOpen} open at once`);
    // The bounds change only the schedule, not the result.
    assertEquals(byCount.node, loose.node);
    assertEquals(byBytes.node, loose.node);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("ingestPath keeps fewer uploads in flight into a local store than into a remote one", async () => {
  assert(FILES > LOCAL_MAX_INFLIGHT && FILES <= REMOTE_MAX_INFLIGHT);
  const root = await smallTree();
  try {
    const local = await ingestCounting(root, {});
    assertEquals(local.maxOpen, LOCAL_MAX_INFLIGHT);
    // A store across the network gets every file of the tree at once.
    const remote = await ingestCounting(root, {}, true);
    assertEquals(remote.maxOpen, FILES);
    assertEquals(remote.node, local.node);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
