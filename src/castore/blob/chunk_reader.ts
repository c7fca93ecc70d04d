/**
 * Reading a chunked blob from an offset, with read-ahead: what the
 * chunking backends (object store, pack store) share between their
 * `openRead`s. Only the chunks covering `[offset, end)` are fetched.
 *
 * @module
 */
import { releaseWhole } from "./chunk_codec.ts";
import type { ChunkMeta } from "./service.ts";

/**
 * The bytes of the blob made of `list`, from byte `offset` on. `fetch`
 * reads (and verifies) one chunk; up to `readAhead` of them run ahead of
 * the one being yielded, so fetching overlaps with the consumer's work.
 */
export async function* readChunksFrom(
  list: ChunkMeta[],
  offset: number,
  readAhead: number,
  fetch: (chunk: ChunkMeta) => Promise<Uint8Array>,
): AsyncGenerator<Uint8Array> {
  let next = 0;
  let skip = offset;
  while (next < list.length && Number(list[next].size) <= skip) {
    skip -= Number(list[next].size);
    next++;
  }
  const pending: Promise<Uint8Array>[] = [];
  const fill = () => {
    while (pending.length < readAhead && next < list.length) {
      const fetching = fetch(list[next++]);
      // Rejections surface when awaited below; a reader dropped early must
      // not leave them unhandled.
      fetching.catch(() => {});
      pending.push(fetching);
    }
  };
  try {
    for (fill(); pending.length > 0; fill()) {
      const data = await pending.shift()!;
      // Refill before handing the chunk out, so the next fetches run while
      // the consumer works on this one.
      fill();
      yield skip > 0 ? data.subarray(skip) : data;
      skip = 0;
    }
  } finally {
    // A reader dropped early: what it fetched ahead was never handed out,
    // so it is freed now rather than left to the garbage collector (an
    // abandoned download would otherwise hold its read-ahead until then).
    for (const fetching of pending) fetching.then(releaseWhole, () => {});
  }
}
