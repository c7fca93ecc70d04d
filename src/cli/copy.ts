/**
 * `tvix-store copy NIX_ATTRS_JSON_FILE` (docs/compatibility.md#copy): copies the closure
 * Nix describes in an `exportReferencesGraph` JSON (structured attrs) from
 * the local `/nix/store` into the store.
 *
 * Paths already present are skipped. Every other path is ingested from its
 * absolute path and its NAR hash and size, computed from the local files,
 * must equal the JSON's `narHash`/`narSize` (the reference does not check):
 * a mismatch aborts the copy before any PathInfo is written.
 *
 * @module
 */
import { Argument, type Command } from "commander";
import { addServiceOptions } from "./common.ts";
import { DEFAULT_REMOTE_ADDR, type ServiceAddrs } from "../store/services.ts";
import { ProgressBar } from "./import.ts";
import { mapLimit } from "../concurrency.ts";
import { constructServices } from "../store/services.ts";
import { bytesEqual, fromHex, toHex } from "../castore/digest.ts";
import { errorMessage, InvalidRequestError } from "../errors.ts";
import { renameNode, toNode } from "../castore/node.ts";
import type { PathInfo } from "../proto/tvix/store/protos/pathinfo.ts";
import * as nixbase32 from "../store/nixbase32.ts";
import { type IngestedTree, ingestPathWithNar } from "../store/import.ts";
import { compareStorePaths, StorePath } from "../store/store_path.ts";
import { log } from "../log.ts";

/** Parallel PathInfo lookups (as upstream). */
const LOOKUP_CONCURRENCY = 50;
/** Parallel ingestions (as upstream). */
const INGEST_CONCURRENCY = 10;

/** One element of the JSON's `closure` array, parsed. */
export interface ClosureEntry {
  path: StorePath;
  narSha256: Uint8Array;
  narSize: bigint;
  references: StorePath[];
}

function bad(msg: string): never {
  throw new InvalidRequestError(`invalid exportReferencesGraph JSON: ${msg}`);
}

/** Parses `sha256:<nixbase32>` (or 64 hex digits after `sha256:`) into 32 bytes. */
export function parseNarHash(text: unknown, where: string): Uint8Array {
  if (typeof text !== "string" || !text.startsWith("sha256:")) {
    bad(`${where}: narHash must be "sha256:<hash>"`);
  }
  const h = text.slice("sha256:".length);
  try {
    if (h.length === 52) return nixbase32.decodeFixed(h, 32);
    if (h.length === 64) return fromHex(h);
  } catch (err) {
    bad(`${where}: narHash ${JSON.stringify(text)}: ${errorMessage(err)}`);
  }
  bad(`${where}: narHash ${JSON.stringify(text)} has the wrong length`);
}

function parseStorePath(text: unknown, where: string): StorePath {
  if (typeof text !== "string") bad(`${where} must be a string`);
  try {
    return StorePath.parseAbsolute(text);
  } catch (err) {
    bad(`${where}: ${errorMessage(err)}`);
  }
}

/**
 * Reads the `closure` key of an exportReferencesGraph JSON (other keys are
 * ignored). Throws {@linkcode InvalidRequestError} on anything malformed.
 */
export function parseClosure(json: unknown): ClosureEntry[] {
  if (typeof json !== "object" || json === null) bad("not an object");
  const closure = (json as Record<string, unknown>).closure;
  if (!Array.isArray(closure)) bad('no "closure" array');
  return closure.map((e, i) => {
    if (typeof e !== "object" || e === null) bad(`closure[${i}] is not an object`);
    const o = e as Record<string, unknown>;
    const where = `closure[${i}]`;
    const size = o.narSize;
    if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
      bad(`${where}: narSize must be a non-negative integer`);
    }
    if (!Array.isArray(o.references)) bad(`${where}: references must be an array`);
    return {
      path: parseStorePath(o.path, `${where}.path`),
      narSha256: parseNarHash(o.narHash, where),
      narSize: BigInt(size),
      references: o.references.map((r, j) => parseStorePath(r, `${where}.references[${j}]`)),
    };
  });
}

/** The PathInfo of a copied path: references sorted in store-path order, no CA. */
export function copiedPathInfo(entry: ClosureEntry, tree: IngestedTree): PathInfo {
  const refs = [...entry.references].sort(compareStorePaths);
  return {
    node: toNode(renameNode(tree.node, new TextEncoder().encode(entry.path.basename()))),
    references: refs.map((r) => r.digest),
    narinfo: {
      narSize: entry.narSize,
      narSha256: entry.narSha256,
      signatures: [],
      referenceNames: refs.map((r) => r.basename()),
      deriver: undefined,
      ca: undefined,
    },
  };
}

function checkNar(entry: ClosureEntry, tree: IngestedTree): void {
  const p = entry.path.absolute();
  if (tree.narSize !== entry.narSize) {
    throw new InvalidRequestError(
      `${p}: NAR size mismatch: the JSON says ${entry.narSize}, the local path has ${tree.narSize}`,
    );
  }
  if (!bytesEqual(tree.narSha256, entry.narSha256)) {
    throw new InvalidRequestError(
      `${p}: NAR hash mismatch: the JSON says sha256:${nixbase32.encode(entry.narSha256)}, ` +
        `the local path has sha256:${nixbase32.encode(tree.narSha256)}`,
    );
  }
}

async function runCopy(file: string | undefined, addrs: ServiceAddrs): Promise<void> {
  const jsonFile = file ?? Deno.env.get("NIX_ATTRS_JSON_FILE");
  if (!jsonFile) {
    throw new InvalidRequestError("missing NIX_ATTRS_JSON_FILE (argument or environment)");
  }
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(jsonFile));
  } catch (err) {
    throw new InvalidRequestError(`cannot read ${jsonFile}: ${errorMessage(err)}`);
  }
  const closure = parseClosure(json);
  // The same path listed twice is copied once.
  const unique = [...new Map(closure.map((e) => [toHex(e.path.digest), e])).values()];
  const services = await constructServices(addrs);
  const bar = new ProgressBar("copying", unique.length);
  try {
    const present = await mapLimit(
      unique,
      LOOKUP_CONCURRENCY,
      async (e) => (await services.pathInfo.get(e.path.digest)) !== undefined,
    );
    const missing = unique.filter((_, i) => !present[i]);
    for (let i = 0; i < unique.length - missing.length; i++) bar.itemDone();
    log.debug("copy", { paths: unique.length, missing: missing.length });

    // Ingest and verify everything before writing any PathInfo.
    const trees = await mapLimit(missing, INGEST_CONCURRENCY, async (e) => {
      const tree = await ingestPathWithNar(
        e.path.absolute(),
        services.blob,
        services.directory,
        {
          progress: { bytes: (n) => bar.addBytes(n) },
        },
      );
      checkNar(e, tree);
      bar.itemDone();
      return tree;
    });
    for (const [i, e] of missing.entries()) {
      await services.pathInfo.put(copiedPathInfo(e, trees[i]));
    }
  } finally {
    bar.clear();
    await services.close();
  }
}

/** Adds the `copy` subcommand to `program`. */
export function register(program: Command): void {
  const cmd = program
    .command("copy")
    .description("copy the closure of an exportReferencesGraph JSON from /nix/store")
    .addArgument(
      new Argument("[nix-attrs-json-file]", "structured-attrs JSON (env: NIX_ATTRS_JSON_FILE)"),
    );
  addServiceOptions(cmd, {
    blobServiceAddr: DEFAULT_REMOTE_ADDR,
    directoryServiceAddr: DEFAULT_REMOTE_ADDR,
    pathInfoServiceAddr: DEFAULT_REMOTE_ADDR,
  });
  cmd.action((file: string | undefined, opts: ServiceAddrs) => runCopy(file, opts));
}
