/**
 * In-memory services that run a hook at the first blob upload, and the
 * import that replaces a file through it: shared by stat_cache_test.ts and
 * its child process without FFI (replace_child.ts).
 *
 * @module
 */
import { join } from "node:path";
import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import { MemoryPathInfoService } from "../../src/store/pathinfo/memory.ts";
import { importPath } from "../../src/store/import.ts";

/** Memory services whose blob uploads call `hook` once, before the first. */
export function servicesWithHook(hook: () => void) {
  const blob = new MemoryBlobService();
  const open = blob.openWrite.bind(blob);
  let called = false;
  blob.openWrite = () => {
    if (!called) {
      called = true;
      hook();
    }
    return open();
  };
  return { blob, directory: new MemoryDirectoryService(), pathInfo: new MemoryPathInfoService() };
}

/**
 * Imports `tmp/D` (files `a` and `x`) while `x` is replaced, at the first
 * upload, by a symlink to a file outside or by a FIFO. Returns the
 * import's error as "name: message"; throws if it succeeded or stored a
 * path.
 */
export async function replaceDuringImport(tmp: string, kind: string): Promise<string> {
  const D = join(tmp, "D");
  await Deno.mkdir(D);
  await Deno.writeTextFile(join(D, "a"), "1");
  await Deno.writeTextFile(join(D, "x"), "ordinary");
  await Deno.writeTextFile(join(tmp, "secret"), "SECRET\n");
  const replacing = servicesWithHook(() => {
    Deno.removeSync(join(D, "x"));
    if (kind === "symlink") Deno.symlinkSync(join(tmp, "secret"), join(D, "x"));
    else {
      const mk = new Deno.Command("mkfifo", { args: [join(D, "x")] }).outputSync();
      if (!mk.success) throw new Error("mkfifo failed");
    }
  });
  let message: string | undefined;
  try {
    await importPath(D, replacing);
  } catch (err) {
    message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  }
  if (message === undefined) throw new Error("the import succeeded");
  for await (const _ of replacing.pathInfo.list()) throw new Error("a path was stored");
  return message;
}
