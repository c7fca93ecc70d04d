/**
 * Memory bounds of `ingestPath`: how many large (streamed) file uploads run
 * at once, counted through a real in-memory blob service, not timed.
 */
import { join } from "node:path";
import { assertEquals } from "../assert.ts";
import type { BlobService, BlobWriter } from "../../src/castore/blob/service.ts";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import { DEFAULT_LARGE_CONCURRENCY, ingestPath, SMALL_FILE } from "../../src/castore/import/fs.ts";
import type { NodeVariant } from "../../src/castore/node.ts";

/** A MemoryBlobService that records the most writers open at the same time. */
class CountingBlobService extends MemoryBlobService {
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
      close: () => inner.close().finally(finish),
      abort: () => inner.abort().finally(finish),
    };
  }
}

const LARGE_FILES = 6;

/** A directory of {@linkcode LARGE_FILES} distinct files, each streamed in several pieces. */
async function largeTree(): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "import-fs-test-" });
  for (let i = 0; i < LARGE_FILES; i++) {
    const data = new Uint8Array(SMALL_FILE * 9 + i).fill(i + 1);
    await Deno.writeFile(join(root, `f${i}`), data);
  }
  return root;
}

async function ingestCounting(
  root: string,
  largeConcurrency?: number,
): Promise<{ node: NodeVariant; maxOpen: number; blob: BlobService }> {
  const blob = new CountingBlobService();
  const node = await ingestPath(root, blob, new MemoryDirectoryService(), { largeConcurrency });
  return { node, maxOpen: blob.maxOpen, blob };
}

Deno.test("ingestPath streams at most DEFAULT_LARGE_CONCURRENCY large files at once", async () => {
  const root = await largeTree();
  try {
    const bounded = await ingestCounting(root);
    assertEquals(bounded.maxOpen, DEFAULT_LARGE_CONCURRENCY);
    // The counter does see overlap: without the bound every file is open at once.
    const unbounded = await ingestCounting(root, 32);
    assertEquals(unbounded.maxOpen, LARGE_FILES);
    // The bound changes only the schedule, not the result.
    assertEquals(bounded.node, unbounded.node);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
