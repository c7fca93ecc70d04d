/**
 * `tvix-store copy [JSON-FILE | -]` (docs/compatibility.md#copy): copies a
 * closure from the local `/nix/store` into the store. It reads what Nix
 * prints about a closure:
 *
 * - `nix path-info --json --recursive PATH`: an array of path objects (Nix
 *   up to 2.18) or an object keyed by store path (later Nix);
 * - an `exportReferencesGraph` JSON (structured attrs), whose `closure`
 *   array lists the same fields; the reference takes only this one, from
 *   the file in `NIX_ATTRS_JSON_FILE` when no argument is given.
 *
 * From each path it takes `path`, `narHash` (`sha256:` in nixbase32 or
 * hex, or SRI `sha256-<base64>`), `narSize` and `references`. `-` reads the
 * JSON from stdin.
 *
 * Paths already present are skipped. Every other path is ingested from its
 * absolute path and its NAR hash and size, computed from the local files,
 * must equal the JSON's (the reference does not check): a mismatch aborts
 * the copy before any PathInfo is written. PathInfos are then written
 * references first, so an interrupted copy leaves only complete closures.
 * A summary (paths copied, already present, bytes) goes to stderr.
 *
 * @module
 */
import { Argument, type Command } from "commander";
import {
  addClientServiceOptions,
  addQuietOption,
  causeFor,
  closingAfter,
  openServices,
} from "./common.ts";
import type { ServiceAddrs } from "../store/services.ts";
import type { PathInfo } from "../proto/tvix/store/protos/pathinfo.ts";
import type { IngestedTree } from "../store/import.ts";
import type { StorePath } from "../store/store_path.ts";
import type { PathInfoService } from "../store/pathinfo/service.ts";
import { errorMessage, InvalidRequestError } from "../errors.ts";
import * as nixbase32 from "../store/nixbase32.ts";
import { mapLimit } from "../concurrency.ts";
import { finishProgress, formatBytes, log, Progress, writeStderr } from "../log.ts";
import { exitOnInterrupt } from "./shutdown.ts";

/** Parallel PathInfo lookups (as upstream). */
const LOOKUP_CONCURRENCY = 50;
/** Parallel ingestions (as upstream). */
const INGEST_CONCURRENCY = 10;

/** The inputs `copy` understands, as its errors name them. */
export type CopyInputKind = "nix path-info" | "exportReferencesGraph";

/** One path of the closure as the input lists it (store paths not yet checked). */
export interface ClosureEntryText {
  /** Where in the input, for errors: `[3]`, `closure[3]`, or the store path. */
  where: string;
  path: string;
  narSha256: Uint8Array;
  narSize: bigint;
  references: string[];
}

/** The closure an input describes. */
export interface CopyInput {
  kind: CopyInputKind;
  entries: ClosureEntryText[];
}

/** One path of the closure, parsed. */
export interface ClosureEntry {
  path: StorePath;
  narSha256: Uint8Array;
  narSize: bigint;
  references: StorePath[];
}

/** How to make an input `copy` reads, for the error about one it does not. */
const EXPECTED = "expected the output of `nix path-info --json --recursive PATH` " +
  "or an exportReferencesGraph JSON";

function invalid(kind: CopyInputKind, msg: string): never {
  throw new InvalidRequestError(`invalid ${kind} JSON: ${msg}`);
}

function decodeHex(text: string): Uint8Array {
  if (!/^[0-9a-f]*$/i.test(text) || text.length % 2) throw new Error("not hexadecimal");
  return Uint8Array.from(text.match(/../g) ?? [], (h) => parseInt(h, 16));
}

function decodeBase64(text: string): Uint8Array {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) throw new Error("not base64");
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/**
 * Parses a NAR hash as Nix prints it: `sha256:` followed by nixbase32 (52
 * characters), hex (64) or base64 (44), or SRI `sha256-<base64>`. Returns
 * the 32 bytes; throws a message saying which forms are accepted.
 */
export function parseNarHash(text: unknown): Uint8Array {
  const m = typeof text === "string" ? /^sha256([:-])(.*)$/.exec(text) : null;
  const h = m?.[2] ?? "";
  try {
    if (m?.[1] === ":" && h.length === 52) return nixbase32.decodeFixed(h, 32);
    if (m?.[1] === ":" && h.length === 64) return decodeHex(h);
    if (h.length === 44) {
      const bytes = decodeBase64(h);
      if (bytes.length === 32) return bytes;
    }
  } catch (err) {
    throw new Error(`narHash ${JSON.stringify(text)}: ${errorMessage(err)}`);
  }
  throw new Error(
    `narHash ${JSON.stringify(text)} is not a SHA-256 in a form Nix prints ` +
      `(sha256:<nixbase32 or hex>, or sha256-<base64>)`,
  );
}

/** Reads the fields `copy` needs from one path object of `kind` input. */
function entryOf(kind: CopyInputKind, where: string, e: unknown): ClosureEntryText {
  if (typeof e !== "object" || e === null) invalid(kind, `${where} is not an object`);
  const o = e as Record<string, unknown>;
  if (typeof o.path !== "string") invalid(kind, `${where}.path must be a store path`);
  if (o.valid === false) {
    invalid(kind, `${o.path} is not a valid path of the Nix store that listed it`);
  }
  const size = o.narSize;
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
    invalid(kind, `${where}: narSize must be a non-negative integer`);
  }
  let narSha256: Uint8Array;
  try {
    narSha256 = parseNarHash(o.narHash);
  } catch (err) {
    invalid(kind, `${where}: ${errorMessage(err)}`);
  }
  if (!Array.isArray(o.references) || o.references.some((r) => typeof r !== "string")) {
    invalid(kind, `${where}: references must be an array of store paths`);
  }
  // Nix prints references as absolute paths; a bare basename is taken to be beside the path.
  const storeDir = o.path.slice(0, o.path.lastIndexOf("/") + 1);
  const references = (o.references as string[]).map((r) => r.includes("/") ? r : storeDir + r);
  return { where, path: o.path, narSha256, narSize: BigInt(size), references };
}

/**
 * Reads a closure from JSON `copy` accepts (see the module doc). Throws
 * {@linkcode InvalidRequestError} naming the input kind and the faulty
 * entry, or saying what was expected.
 */
export function parseCopyInput(json: unknown): CopyInput {
  if (Array.isArray(json)) {
    const kind = "nix path-info";
    return { kind, entries: json.map((e, i) => entryOf(kind, `[${i}]`, e)) };
  }
  if (typeof json !== "object" || json === null) {
    throw new InvalidRequestError(`not a closure: ${EXPECTED}`);
  }
  const obj = json as Record<string, unknown>;
  if ("closure" in obj) {
    const kind = "exportReferencesGraph";
    if (!Array.isArray(obj.closure)) invalid(kind, '"closure" is not an array');
    return { kind, entries: obj.closure.map((e, i) => entryOf(kind, `closure[${i}]`, e)) };
  }
  const keys = Object.keys(obj);
  if (keys.length > 0 && keys.every((k) => k.startsWith("/"))) {
    const kind = "nix path-info";
    return {
      kind,
      entries: keys.map((path) => {
        const value = obj[path];
        if (value === null) {
          invalid(kind, `${path} is not a valid path of the Nix store that listed it`);
        }
        return entryOf(kind, path, { ...(value as object), path });
      }),
    };
  }
  throw new InvalidRequestError(`not a closure: ${EXPECTED}`);
}

/** Reads the input named on the command line: a file, or stdin for `-`. */
async function readInput(file: string): Promise<unknown> {
  const name = file === "-" ? "stdin" : file;
  let text: string;
  try {
    text = file === "-"
      ? await new Response(Deno.stdin.readable).text()
      : await Deno.readTextFile(file);
  } catch (err) {
    throw new InvalidRequestError(`cannot read ${name}: ${causeFor(file, err)}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InvalidRequestError(`${name} is not JSON (${errorMessage(err)}): ${EXPECTED}`);
  }
}

/** Everything `copy` needs beyond parsing, loaded when it runs. */
async function loadCopyModules() {
  const [storePath, imp, node, digest] = await Promise.all([
    import("../store/store_path.ts"),
    import("../store/import.ts"),
    import("../castore/node.ts"),
    import("../castore/digest.ts"),
  ]);
  return { ...storePath, ...imp, ...node, ...digest };
}
type CopyModules = Awaited<ReturnType<typeof loadCopyModules>>;

/** Checks the store paths of `input`; throws naming the faulty entry. */
function parseStorePaths(input: CopyInput, m: CopyModules): ClosureEntry[] {
  const parse = (text: string, where: string) => {
    try {
      return m.StorePath.parseAbsolute(text);
    } catch (err) {
      invalid(input.kind, `${where}: ${errorMessage(err)}`);
    }
  };
  return input.entries.map((e) => ({
    path: parse(e.path, `${e.where}.path`),
    narSha256: e.narSha256,
    narSize: e.narSize,
    references: e.references.map((r, j) => parse(r, `${e.where}.references[${j}]`)),
  }));
}

/** The PathInfo of a copied path: references sorted in store-path order, no CA. */
function copiedPathInfo(entry: ClosureEntry, tree: IngestedTree, m: CopyModules): PathInfo {
  const refs = [...entry.references].sort(m.compareStorePaths);
  return {
    node: m.toNode(m.renameNode(tree.node, new TextEncoder().encode(entry.path.basename()))),
    references: refs.map((r) => r.digest),
    narinfo: {
      narSize: entry.narSize,
      narSha256: entry.narSha256,
      signatures: [],
      referenceNames: refs.map((r) => r.basename()),
      deriver: undefined,
      ca: undefined,
      upload: undefined,
    },
  };
}

function checkNar(entry: ClosureEntry, tree: IngestedTree, m: CopyModules): void {
  const p = entry.path.absolute();
  if (tree.narSize !== entry.narSize) {
    throw new InvalidRequestError(
      `${p}: NAR size mismatch: the JSON says ${entry.narSize}, the local path has ${tree.narSize}`,
    );
  }
  if (!m.bytesEqual(tree.narSha256, entry.narSha256)) {
    throw new InvalidRequestError(
      `${p}: NAR hash mismatch: the JSON says sha256:${nixbase32.encode(entry.narSha256)}, ` +
        `the local path has sha256:${nixbase32.encode(tree.narSha256)}`,
    );
  }
}

/**
 * `entries` ordered so that every path comes after the paths it refers to
 * (among `entries`): written in this order, the store never holds a path
 * whose references are missing, even if the copy stops half-way.
 */
export function referencesFirst(entries: ClosureEntry[]): ClosureEntry[] {
  const byPath = new Map(entries.map((e) => [e.path.absolute(), e]));
  const seen = new Set<string>();
  const out: ClosureEntry[] = [];
  const visit = (e: ClosureEntry) => {
    const key = e.path.absolute();
    if (seen.has(key)) return;
    seen.add(key);
    for (const r of e.references) {
      const dep = byPath.get(r.absolute());
      if (dep) visit(dep);
    }
    out.push(e);
  };
  entries.forEach(visit);
  return out;
}

/**
 * Fails unless every reference of `missing` (the paths to copy) is in the
 * input or already in the store: written anyway, a path would be valid
 * with part of its closure absent, which the input of a `nix path-info
 * --json` without `--recursive` leads to.
 */
async function checkReferencesKnown(
  missing: ClosureEntry[],
  input: ClosureEntry[],
  pathInfo: Pick<PathInfoService, "get">,
  m: CopyModules,
): Promise<void> {
  const given = new Set(input.map((e) => m.toHex(e.path.digest)));
  const outside = new Map<string, { path: StorePath; by: StorePath }>();
  for (const e of missing) {
    for (const r of e.references) {
      const key = m.toHex(r.digest);
      if (!given.has(key) && !outside.has(key)) outside.set(key, { path: r, by: e.path });
    }
  }
  const refs = [...outside.values()];
  const found = await mapLimit(
    refs,
    LOOKUP_CONCURRENCY,
    async (r) => await pathInfo.get(r.path.digest),
  );
  const absent = refs.filter((_, i) => !found[i]);
  if (absent.length === 0) return;
  const first = absent[0];
  throw new InvalidRequestError(
    `${first.by.absolute()} refers to ${first.path.absolute()}, which is neither in the input ` +
      `nor in the store${absent.length > 1 ? ` (and ${absent.length - 1} more like it)` : ""}: ` +
      "give the whole closure (`nix path-info --json --recursive`); nothing was copied",
  );
}

interface CopyFlags extends ServiceAddrs {
  quiet?: boolean;
}

async function runCopy(file: string | undefined, flags: CopyFlags, cmd: Command): Promise<void> {
  let progress: Progress | undefined;
  const stopListening = exitOnInterrupt(() => progress?.finish());
  try {
    await copyClosure(file, flags, cmd, (p) => (progress = p));
  } finally {
    progress?.finish();
    stopListening();
  }
}

async function copyClosure(
  file: string | undefined,
  flags: CopyFlags,
  cmd: Command,
  showing: (progress: Progress) => void,
): Promise<void> {
  const source = file ?? Deno.env.get("NIX_ATTRS_JSON_FILE");
  if (!source) {
    throw new InvalidRequestError(
      "nothing to copy: give a JSON file, or - to read stdin, e.g. " +
        "`nix --extra-experimental-features nix-command path-info --json --recursive PATH " +
        "| tvix-store copy -` (or set NIX_ATTRS_JSON_FILE)",
    );
  }
  const input = parseCopyInput(await readInput(source));
  const m = await loadCopyModules();
  const closure = parseStorePaths(input, m);
  // The same path listed twice is copied once.
  const unique = [...new Map(closure.map((e) => [m.toHex(e.path.digest), e])).values()];
  const services = await openServices(flags, cmd);
  let missing: ClosureEntry[] = [];
  await closingAfter(services, async () => {
    const present = await mapLimit(
      unique,
      LOOKUP_CONCURRENCY,
      async (e) => (await services.pathInfo.get(e.path.digest)) !== undefined,
    );
    missing = unique.filter((_, i) => !present[i]);
    log.debug("copy", { paths: unique.length, missing: missing.length });
    await checkReferencesKnown(missing, unique, services.pathInfo, m);
    const bar = new Progress({
      label: "copying",
      totalBytes: Number(missing.reduce((sum, e) => sum + e.narSize, 0n)),
      totalItems: missing.length,
      quiet: flags.quiet,
    });
    showing(bar);

    // Ingest and verify everything before writing any PathInfo.
    const trees = await mapLimit(missing, INGEST_CONCURRENCY, async (e) => {
      const p = e.path.absolute();
      let tree: IngestedTree;
      try {
        tree = await m.ingestPathWithNar(p, services.blob, services.directory, {
          progress: { bytes: (n) => bar.addBytes(n) },
        });
      } catch (err) {
        throw new Error(`cannot copy ${p}: ${causeFor(p, err)}`);
      }
      checkNar(e, tree, m);
      bar.itemDone();
      return tree;
    });
    const treeOf = new Map(missing.map((e, i) => [e, trees[i]]));
    for (const e of referencesFirst(missing)) {
      await services.pathInfo.put(copiedPathInfo(e, treeOf.get(e)!, m));
    }
  });
  finishProgress();
  if (!flags.quiet) {
    const bytes = Number(missing.reduce((sum, e) => sum + e.narSize, 0n));
    const copied = missing.length === 1 ? "1 path" : `${missing.length} paths`;
    writeStderr(
      `copied ${copied}${missing.length > 0 ? ` (${formatBytes(bytes)})` : ""}, ` +
        `${unique.length - missing.length} already present\n`,
    );
  }
}

/** Adds the `copy` subcommand to `program`. */
export function register(program: Command): void {
  const cmd = program
    .command("copy")
    .description(
      "copy a closure from /nix/store (nix path-info --json -r, or exportReferencesGraph)",
    )
    .addArgument(
      new Argument(
        "[json-file]",
        "output of `nix path-info --json --recursive`, or an exportReferencesGraph JSON; " +
          "- reads stdin (default: $NIX_ATTRS_JSON_FILE)",
      ),
    );
  addQuietOption(cmd);
  addClientServiceOptions(cmd);
  cmd.addHelpText(
    "after",
    "\nExample:\n  nix --extra-experimental-features nix-command path-info --json --recursive \\\n" +
      "    /nix/store/…-hello | tvix-store copy -",
  );
  cmd.action((file: string | undefined, opts: CopyFlags, self: Command) =>
    runCopy(file, opts, self)
  );
}
