/**
 * `tvix-store info STORE_PATH...`: NAR size and hash, references,
 * referrers, the file bytes of the path and the share of them that other
 * paths in the store hold too (deduplicated) (docs/gc.md#commands).
 *
 * @module
 */
import type { Command } from "commander";
import { addClientServiceOptions, withServices } from "./common.ts";
import type { ServiceAddrs } from "../store/services.ts";
import type { DirectoryService } from "../castore/directory/service.ts";
import type { NodeVariant } from "../castore/node.ts";
import type { PathInfo } from "../store/pathinfo/service.ts";
import { loadSummarize } from "./list.ts";

/** Blob digest key → file size, for every file under `node`. */
async function filesOf(
  node: NodeVariant,
  dirs: DirectoryService,
  digestKey: (digest: Uint8Array) => string,
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  if (node.$case === "file") out.set(digestKey(node.value.digest), Number(node.value.size));
  if (node.$case === "directory") {
    for await (const d of dirs.getRecursive(node.value.digest)) {
      for (const f of d.files) out.set(digestKey(f.digest), Number(f.size));
    }
  }
  return out;
}

async function runInfo(paths: string[], flags: ServiceAddrs, cmd: Command): Promise<void> {
  const [{ digestKey }, gc, { StorePath }, summarize] = await Promise.all([
    import("../castore/digest.ts"),
    import("../store/gc.ts"),
    import("../store/store_path.ts"),
    loadSummarize(),
  ]);
  const { everyPathInfo, storePathOf } = gc;
  const targets = paths.map((p) => StorePath.parseAbsolute(p));
  await withServices(flags, async ({ pathInfo, directory }) => {
    const all: PathInfo[] = [];
    for await (const info of everyPathInfo(pathInfo)) all.push(info);
    for (const target of targets) {
      const key = digestKey(target.digest);
      const info = all.find((i) => digestKey(storePathOf(i).digest) === key);
      if (!info) throw new Error(`${target.absolute()} is not in the store`);
      const s = summarize(info);
      const referrers = all
        .filter((i) => i !== info && i.references.some((r) => digestKey(r) === key))
        .map((i) => storePathOf(i).absolute())
        .sort();
      const own = await filesOf(info.node!.node!, directory, digestKey);
      const elsewhere = new Set<string>();
      for (const other of all) {
        if (other === info || !other.node?.node) continue;
        for (const k of (await filesOf(other.node.node, directory, digestKey)).keys()) {
          elsewhere.add(k);
        }
      }
      let bytes = 0, shared = 0;
      for (const [k, size] of own) {
        bytes += size;
        if (elsewhere.has(k)) shared += size;
      }
      console.log(s.path);
      console.log(`  nar size:    ${s.narSize}`);
      console.log(`  nar hash:    ${s.narHash}`);
      if (s.ca) console.log(`  ca:          ${s.ca}`);
      console.log(`  references:  ${s.references.join(" ") || "(none)"}`);
      console.log(`  referrers:   ${referrers.join(" ") || "(none)"}`);
      console.log(`  file bytes:  ${bytes} in ${own.size} distinct blobs`);
      console.log(
        `  shared:      ${shared} bytes (${bytes ? ((100 * shared) / bytes).toFixed(1) : "0.0"}%)` +
          " also held by other paths",
      );
    }
  }, cmd);
}

/** Adds the `info` subcommand to `program`. */
export function register(program: Command): void {
  const cmd = program
    .command("info")
    .description("show NAR size and hash, references, referrers and deduplication of store paths")
    .argument("<paths...>", "absolute store paths");
  addClientServiceOptions(cmd);
  cmd.action((paths: string[], opts: ServiceAddrs, self: Command) => runInfo(paths, opts, self));
}
