/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * Helper Worker for inodes_test.ts: interns the nodes it is sent into a
 * shared table, all at once, and answers with the inodes.
 */
import { InodeTable } from "../../src/fuse/inodes.ts";
import type { NodeVariant } from "../../src/castore/node.ts";

interface Job {
  buffer: SharedArrayBuffer;
  nodes: NodeVariant[];
  /** Counts Workers that got their job; interning starts once it reaches `parties`. */
  arrived: Int32Array;
  parties: number;
}

self.onmessage = (e: MessageEvent<Job>) => {
  const { buffer, nodes, arrived, parties } = e.data;
  const table = InodeTable.attach(buffer);
  Atomics.add(arrived, 0, 1);
  while (Atomics.load(arrived, 0) < parties);
  self.postMessage(nodes.map((n) => table.intern(n)));
};
self.postMessage("ready");
