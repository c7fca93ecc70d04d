/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * Helper Worker for inodes_test.ts: interns the nodes it is sent into a
 * shared table and answers with the inodes.
 */
import { InodeTable } from "../../src/fuse/inodes.ts";
import type { NodeVariant } from "../../src/castore/node.ts";

self.onmessage = (e: MessageEvent<{ buffer: SharedArrayBuffer; nodes: NodeVariant[] }>) => {
  const table = InodeTable.attach(e.data.buffer);
  self.postMessage(e.data.nodes.map((n) => table.intern(n)));
};
self.postMessage("ready");
