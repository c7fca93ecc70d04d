/**
 * Grouping records of pack files into runs read with one `pread` each: a
 * directory's small files were imported together, so their records lie
 * next to each other in one pack (docs/storage.md#reading-small-chunks).
 *
 * @module
 */

/** Where a record's stored bytes are: which pack, from which offset, how long. */
export interface RecordSpan {
  pack: number;
  offset: number;
  length: number;
}

/** One read: `length` bytes of `pack` from `offset`, covering `members`. */
export interface ReadRun<T extends RecordSpan> {
  pack: number;
  offset: number;
  length: number;
  members: T[];
}

/**
 * Sorts `spans` by pack and offset and merges neighbours into runs: a span
 * joins the run before it if the bytes between them (record headers,
 * chunks nobody asked for) are at most `maxGap` and the run stays within
 * `maxRun` bytes. A span longer than `maxRun` is a run of its own.
 */
export function readRuns<T extends RecordSpan>(
  spans: T[],
  maxGap: number,
  maxRun: number,
): ReadRun<T>[] {
  const sorted = [...spans].sort((a, b) => a.pack - b.pack || a.offset - b.offset);
  const runs: ReadRun<T>[] = [];
  let run: ReadRun<T> | undefined;
  for (const s of sorted) {
    const end = s.offset + s.length;
    if (
      run && run.pack === s.pack && s.offset - (run.offset + run.length) <= maxGap &&
      Math.max(end, run.offset + run.length) - run.offset <= maxRun
    ) {
      run.length = Math.max(end, run.offset + run.length) - run.offset;
      run.members.push(s);
      continue;
    }
    run = { pack: s.pack, offset: s.offset, length: s.length, members: [s] };
    runs.push(run);
  }
  return runs;
}
