/**
 * SQLite on a full disk (a small tmpfs, root only): the error names the
 * real cause, not a failed ROLLBACK; nothing partial is stored; once space
 * is back the same service stores again and everything stored before is
 * still there.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { SqliteDirectoryService } from "../../src/castore/directory/sqlite.ts";
import type { Directory } from "../../src/castore/directory.ts";
import { directoryDigest } from "../../src/castore/directory.ts";
import { errorMessage, StorageError } from "../../src/errors.ts";
import { EMPTY_DIGEST } from "../../src/castore/digest.ts";

const isRoot = Deno.uid() === 0;

/** A directory of `n` empty files with long unique names (~100 bytes each). */
function bigDirectory(seed: number, n = 400): Directory {
  const te = new TextEncoder();
  const files = Array.from({ length: n }, (_, i) => ({
    name: te.encode(
      `${String(seed).padStart(8, "0")}-${String(i).padStart(6, "0")}-${"x".repeat(80)}`,
    ),
    digest: EMPTY_DIGEST,
    size: 0n,
    executable: false,
  }));
  return { directories: [], files, symlinks: [] };
}

async function run(cmd: string, ...args: string[]) {
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  if (out.code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

Deno.test({
  name: "sqlite on a full disk: the error says so, and the store works again after",
  ignore: !isRoot,
  async fn() {
    const mnt = await Deno.makeTempDir({ prefix: "tvix-full-" });
    await run("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt);
    const svc = new SqliteDirectoryService(join(mnt, "store.sqlite"));
    try {
      const stored: Directory[] = [];
      let failure: unknown;
      for (let i = 0; i < 200 && failure === undefined; i++) {
        const d = bigDirectory(i);
        try {
          // A closure upload: written in one transaction at close().
          const putter = svc.putMultiple();
          await putter.put(d);
          await putter.close();
          stored.push(d);
        } catch (err) {
          failure = err;
        }
      }
      assert(failure !== undefined, "2 MiB never filled up");
      const message = errorMessage(failure);
      assert(failure instanceof StorageError, message);
      assert(/full/i.test(message), `the cause is not named: ${message}`);
      assert(!/rollback/i.test(message), `a failed ROLLBACK hides the cause: ${message}`);
      assert(stored.length > 0, "nothing fit at all");

      // Space comes back (the tmpfs grows): stores again, the old data intact.
      await run("mount", "-o", "remount,size=64m", mnt);
      const more = bigDirectory(1000);
      await svc.put(more);
      for (const d of [...stored, more]) {
        assertEquals(await svc.get(directoryDigest(d)), d);
      }
    } finally {
      await svc.close();
      await run("umount", mnt);
      await Deno.remove(mnt);
    }
  },
});
