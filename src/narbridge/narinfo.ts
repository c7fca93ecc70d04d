/**
 * The `.narinfo` text format of Nix binary caches (docs/compatibility.md#narinfo): parsing,
 * rendering, the signed fingerprint, and conversion to and from PathInfo.
 *
 * @module
 */
import { U64_MAX } from "../castore/node.ts";
import * as nixbase32 from "../store/nixbase32.ts";
import { type CaHashAlgo, compareStorePaths, STORE_DIR, StorePath } from "../store/store_path.ts";
import {
  type NARInfo,
  NARInfo_CA_Hash,
  type PathInfo,
} from "../proto/tvix/store/protos/pathinfo.ts";
import {
  formatSignature,
  isValidKeyName,
  type NamedSignature,
  parseSignature,
  SIGNATURE_BYTES,
} from "./signing.ts";
import { errorMessage } from "../errors.ts";

/** A narinfo that cannot be parsed, or a PathInfo that cannot become one. */
export class NarInfoError extends Error {
  override name = "NarInfoError";
}

/** How a store object is content-addressed (the `CA:` field). */
export interface ContentAddress {
  /** `text` (text:sha256), `flat` (fixed:<algo>) or `nar` (fixed:r:<algo>). */
  method: "text" | "flat" | "nar";
  /** Hash algorithm; `text` is always sha256. */
  algo: CaHashAlgo;
  /** Raw digest bytes. */
  digest: Uint8Array;
}

/** Oddities noticed while parsing; they do not make a narinfo invalid. */
export interface NarInfoFlags {
  /** `Compression:` was absent (meaning bzip2). */
  compressionDefault?: boolean;
  /** `NarHash:` was written in hex. */
  narHashHex?: boolean;
  /** `References:` were not in Nix's sorted order. */
  referencesOutOfOrder?: boolean;
  /** Some key was not recognised (and ignored). */
  unknownField?: boolean;
}

/** A parsed narinfo. */
export interface NarInfo {
  /** The store path it describes. */
  storePath: StorePath;
  /** Where the (possibly compressed) NAR is, relative to the cache root. */
  url: string;
  /** As written; `undefined` when absent (which Nix reads as bzip2). */
  compression?: string;
  /** SHA-256 of the file at `url`. */
  fileHash?: Uint8Array;
  /** Size of the file at `url`. */
  fileSize?: bigint;
  /** SHA-256 of the uncompressed NAR (32 bytes). */
  narHash: Uint8Array;
  /** Size of the uncompressed NAR. */
  narSize: bigint;
  /** Referenced store paths, in file order. */
  references: StorePath[];
  /** The derivation, with the `.drv` suffix removed from its name. */
  deriver?: StorePath;
  /** The system it was built for. */
  system?: string;
  /** Signatures over the fingerprint. */
  signatures: NamedSignature[];
  /** Content address. */
  ca?: ContentAddress;
  /** Parse oddities (empty for rendered narinfos). */
  flags: NarInfoFlags;
}

const HASH_LEN: Record<CaHashAlgo, number> = { md5: 16, sha1: 20, sha256: 32, sha512: 64 };

/**
 * Decodes a digest of `algo` written in nixbase32 or (as Nix also accepts)
 * lowercase hex; the length tells which.
 */
function decodeDigest(text: string, algo: CaHashAlgo, what: string): Uint8Array {
  const len = HASH_LEN[algo];
  if (text.length === 2 * len && /^[0-9a-f]+$/.test(text)) {
    return Uint8Array.from(text.match(/../g)!, (h) => parseInt(h, 16));
  }
  if (text.length !== nixbase32.encodedLength(len)) {
    throw new NarInfoError(`invalid ${what}: wrong length for ${algo}`);
  }
  try {
    return nixbase32.decode(text);
  } catch (err) {
    throw new NarInfoError(`invalid ${what}: ${errorMessage(err)}`);
  }
}

function parseU64(text: string, what: string): bigint {
  if (!/^[0-9]{1,20}$/.test(text)) throw new NarInfoError(`invalid ${what}: ${text}`);
  const n = BigInt(text);
  if (n > U64_MAX) throw new NarInfoError(`invalid ${what}: ${text} exceeds u64`);
  return n;
}

function parseBasename(text: string, what: string): StorePath {
  try {
    return StorePath.parseBasename(text);
  } catch (err) {
    throw new NarInfoError(`invalid ${what} ${JSON.stringify(text)}: ${errorMessage(err)}`);
  }
}

function isAlgo(s: string): s is CaHashAlgo {
  return s === "md5" || s === "sha1" || s === "sha256" || s === "sha512";
}

/** Parses a textual content address: `text:sha256:…`, `fixed:r:<algo>:…`, `fixed:<algo>:…`. */
export function parseContentAddress(text: string): ContentAddress {
  const parts = text.split(":");
  if (parts.length === 3 && parts[0] === "text" && parts[1] === "sha256") {
    return { method: "text", algo: "sha256", digest: decodeDigest(parts[2], "sha256", "CA") };
  }
  if (parts.length === 4 && parts[0] === "fixed" && parts[1] === "r" && isAlgo(parts[2])) {
    return { method: "nar", algo: parts[2], digest: decodeDigest(parts[3], parts[2], "CA") };
  }
  if (parts.length === 3 && parts[0] === "fixed" && isAlgo(parts[1])) {
    return { method: "flat", algo: parts[1], digest: decodeDigest(parts[2], parts[1], "CA") };
  }
  throw new NarInfoError(`invalid CA: ${JSON.stringify(text)}`);
}

/** The textual form of a content address (digest in nixbase32), as Nix writes it. */
export function formatContentAddress(ca: ContentAddress): string {
  const digest = nixbase32.encode(ca.digest);
  switch (ca.method) {
    case "text":
      return `text:${ca.algo}:${digest}`;
    case "nar":
      return `fixed:r:${ca.algo}:${digest}`;
    case "flat":
      return `fixed:${ca.algo}:${digest}`;
  }
}

/** Parses `sha256:<nixbase32>` (or 64 hex digits); `hex` reports which. */
function parseSha256(value: string, what: string): { digest: Uint8Array; hex: boolean } {
  if (!value.startsWith("sha256:")) throw new NarInfoError(`invalid ${what}: must start sha256:`);
  const text = value.slice("sha256:".length);
  return { digest: decodeDigest(text, "sha256", what), hex: text.length === 64 };
}

/**
 * Parses narinfo text (docs/compatibility.md#narinfo-fields). Throws
 * {@linkcode NarInfoError} for a
 * malformed line or value, a repeated key (other than `Sig`), or a missing
 * required key (StorePath, URL, NarHash, NarSize, References).
 */
export function parseNarInfo(text: string): NarInfo {
  const lines = text.split("\n");
  // A final newline terminates the last line rather than starting an empty one.
  if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();

  const seen = new Set<string>();
  const flags: NarInfoFlags = {};
  const signatures: NamedSignature[] = [];
  let storePath: StorePath | undefined;
  let url: string | undefined;
  let compression: string | undefined;
  let fileHash: Uint8Array | undefined;
  let fileSize: bigint | undefined;
  let narHash: Uint8Array | undefined;
  let narSize: bigint | undefined;
  let references: StorePath[] | undefined;
  let deriver: StorePath | undefined;
  let system: string | undefined;
  let ca: ContentAddress | undefined;

  for (const [i, line] of lines.entries()) {
    const colon = line.indexOf(":");
    if (colon < 0 || line[colon + 1] !== " ") {
      throw new NarInfoError(`invalid line ${i + 1}: ${JSON.stringify(line.slice(0, 80))}`);
    }
    const key = line.slice(0, colon);
    const value = line.slice(colon + 2);
    if (key !== "Sig") {
      if (seen.has(key)) throw new NarInfoError(`duplicate field ${key}`);
      seen.add(key);
    }
    const nonEmpty = () => {
      if (value === "") throw new NarInfoError(`empty ${key}`);
      return value;
    };
    switch (key) {
      case "StorePath":
        if (!value.startsWith(STORE_DIR + "/")) {
          throw new NarInfoError(`invalid StorePath: not in ${STORE_DIR}`);
        }
        storePath = parseBasename(value.slice(STORE_DIR.length + 1), "StorePath");
        break;
      case "URL":
        url = nonEmpty();
        break;
      case "Compression":
        compression = nonEmpty();
        break;
      case "FileHash":
        fileHash = parseSha256(value, "FileHash").digest;
        break;
      case "FileSize":
        fileSize = parseU64(value, "FileSize");
        break;
      case "NarHash": {
        const parsed = parseSha256(value, "NarHash");
        narHash = parsed.digest;
        if (parsed.hex) flags.narHashHex = true;
        break;
      }
      case "NarSize":
        narSize = parseU64(value, "NarSize");
        break;
      case "References":
        references = value === ""
          ? []
          : value.split(" ").map((bn) => parseBasename(bn, "reference"));
        for (let r = 1; r < references.length; r++) {
          if (compareStorePaths(references[r - 1], references[r]) > 0) {
            flags.referencesOutOfOrder = true;
          }
        }
        break;
      case "System":
        system = nonEmpty();
        break;
      case "Deriver":
        if (!value.endsWith(".drv")) throw new NarInfoError("invalid Deriver: must end in .drv");
        deriver = parseBasename(value.slice(0, -".drv".length), "Deriver");
        break;
      case "Sig":
        try {
          signatures.push(parseSignature(value));
        } catch (err) {
          throw new NarInfoError(`invalid Sig: ${errorMessage(err)}`);
        }
        break;
      case "CA":
        ca = parseContentAddress(value);
        break;
      default:
        flags.unknownField = true;
    }
  }

  if (storePath === undefined) throw new NarInfoError("missing StorePath");
  if (url === undefined) throw new NarInfoError("missing URL");
  if (narHash === undefined) throw new NarInfoError("missing NarHash");
  if (narSize === undefined) throw new NarInfoError("missing NarSize");
  if (references === undefined) throw new NarInfoError("missing References");
  if (compression === undefined) flags.compressionDefault = true;
  return {
    storePath,
    url,
    compression,
    fileHash,
    fileSize,
    narHash,
    narSize,
    references,
    deriver,
    system,
    signatures,
    ca,
    flags,
  };
}

/** Renders a narinfo in Nix's field order; every line ends with `\n`. */
export function renderNarInfo(ni: NarInfo): string {
  let out = `StorePath: ${ni.storePath.absolute()}\nURL: ${ni.url}\n`;
  if (ni.compression !== undefined) out += `Compression: ${ni.compression}\n`;
  if (ni.fileHash !== undefined) out += `FileHash: sha256:${nixbase32.encode(ni.fileHash)}\n`;
  if (ni.fileSize !== undefined) out += `FileSize: ${ni.fileSize}\n`;
  out += `NarHash: sha256:${nixbase32.encode(ni.narHash)}\nNarSize: ${ni.narSize}\n`;
  // Nix writes "References: " (with the space) when there are none.
  out += `References: ${ni.references.map((r) => r.basename()).join(" ")}\n`;
  if (ni.deriver !== undefined) out += `Deriver: ${ni.deriver.basename()}.drv\n`;
  if (ni.system !== undefined) out += `System: ${ni.system}\n`;
  for (const sig of ni.signatures) out += `Sig: ${formatSignature(sig)}\n`;
  if (ni.ca !== undefined) out += `CA: ${formatContentAddress(ni.ca)}\n`;
  return out;
}

/**
 * The string Nix binary cache signatures sign:
 * `1;<store path>;sha256:<nixbase32 NarHash>;<NarSize>;<refs, comma-separated>`.
 * References are sorted as Nix keeps them (a sorted set), so the result
 * does not depend on the order a narinfo listed them in.
 */
export function fingerprint(
  storePath: StorePath,
  narHash: Uint8Array,
  narSize: bigint,
  references: readonly StorePath[],
): string {
  const refs = [...references].sort(compareStorePaths).map((r) => r.absolute()).join(",");
  return `1;${storePath.absolute()};sha256:${nixbase32.encode(narHash)};${narSize};${refs}`;
}

/** The fingerprint of a parsed narinfo. */
export function narInfoFingerprint(ni: NarInfo): string {
  return fingerprint(ni.storePath, ni.narHash, ni.narSize, ni.references);
}

const CA_TO_ENUM: Record<ContentAddress["method"], Partial<Record<CaHashAlgo, NARInfo_CA_Hash>>> = {
  nar: {
    sha256: NARInfo_CA_Hash.NAR_SHA256,
    sha1: NARInfo_CA_Hash.NAR_SHA1,
    sha512: NARInfo_CA_Hash.NAR_SHA512,
    md5: NARInfo_CA_Hash.NAR_MD5,
  },
  text: { sha256: NARInfo_CA_Hash.TEXT_SHA256 },
  flat: {
    sha1: NARInfo_CA_Hash.FLAT_SHA1,
    md5: NARInfo_CA_Hash.FLAT_MD5,
    sha256: NARInfo_CA_Hash.FLAT_SHA256,
    sha512: NARInfo_CA_Hash.FLAT_SHA512,
  },
};

/** The method and algorithm of a CA enum value, or `undefined` for an unknown one. */
export function caHashKind(
  type: NARInfo_CA_Hash,
): { method: ContentAddress["method"]; algo: CaHashAlgo } | undefined {
  for (const [method, algos] of Object.entries(CA_TO_ENUM)) {
    for (const [algo, value] of Object.entries(algos)) {
      if (value === type) {
        return { method: method as ContentAddress["method"], algo: algo as CaHashAlgo };
      }
    }
  }
  return undefined;
}

const textDecoder = new TextDecoder();

/**
 * The raw digest of a PathInfo CA entry. Besides raw bytes this accepts
 * the textual `<algo>-<nixbase32>` form the reference `import` wrote
 * (59 bytes for sha256; docs/compatibility.md#q1-import-stores-the-ca-digest-as-text).
 */
function caDigest(algo: CaHashAlgo, digest: Uint8Array): Uint8Array {
  if (digest.length === HASH_LEN[algo]) return digest;
  const text = textDecoder.decode(digest);
  if (text.startsWith(`${algo}-`)) return decodeDigest(text.slice(algo.length + 1), algo, "CA");
  throw new NarInfoError(`invalid CA digest: ${digest.length} bytes for ${algo}`);
}

/**
 * A PathInfo (without root node) holding a narinfo's metadata
 * (docs/compatibility.md#conversion-to-and-from-pathinfo):
 * references as raw digests in file order, signatures, deriver without
 * `.drv`, CA as enum + raw digest. The caller fills `node`.
 */
export function narInfoToPathInfo(ni: NarInfo): PathInfo {
  let ca: NARInfo["ca"];
  if (ni.ca) {
    const type = CA_TO_ENUM[ni.ca.method][ni.ca.algo];
    if (type === undefined) throw new NarInfoError(`unsupported CA ${ni.ca.method}:${ni.ca.algo}`);
    ca = { type, digest: ni.ca.digest.slice() };
  }
  return {
    node: undefined,
    references: ni.references.map((r) => r.digest.slice()),
    narinfo: {
      narSize: ni.narSize,
      narSha256: ni.narHash.slice(),
      signatures: ni.signatures.map((s) => ({ name: s.name, data: s.data.slice() })),
      referenceNames: ni.references.map((r) => r.basename()),
      deriver: ni.deriver
        ? { name: ni.deriver.name, digest: ni.deriver.digest.slice() }
        : undefined,
      ca,
      upload: undefined,
    },
  };
}

/** The store path a PathInfo's root node is named after. */
export function pathInfoStorePath(info: PathInfo): StorePath {
  const variant = info.node?.node;
  if (!variant) throw new NarInfoError("PathInfo has no root node");
  try {
    return StorePath.parseBasenameBytes(variant.value.name);
  } catch (err) {
    throw new NarInfoError(`invalid root node name: ${errorMessage(err)}`);
  }
}

/**
 * The narinfo describing a PathInfo (which must carry NAR metadata):
 * `Compression: none`, no FileHash/FileSize/System, `url` as given (the
 * caller decides where the NAR is served). TEXT_SHA256 content addresses
 * convert too (docs/compatibility.md#q13-text-content-addresses-cannot-be-converted-back).
 */
export function pathInfoToNarInfo(info: PathInfo, url = ""): NarInfo {
  const storePath = pathInfoStorePath(info);
  const meta = info.narinfo;
  if (!meta) throw new NarInfoError(`${storePath.absolute()} has no NAR metadata`);
  const references = meta.referenceNames.map((bn) => parseBasename(bn, "reference"));
  let deriver: StorePath | undefined;
  if (meta.deriver) {
    try {
      deriver = StorePath.fromParts(meta.deriver.digest, meta.deriver.name);
    } catch (err) {
      throw new NarInfoError(`invalid deriver: ${errorMessage(err)}`);
    }
  }
  let ca: ContentAddress | undefined;
  if (meta.ca) {
    const kind = caHashKind(meta.ca.type);
    if (!kind) throw new NarInfoError(`unknown CA hash type ${meta.ca.type}`);
    ca = { ...kind, digest: caDigest(kind.algo, meta.ca.digest) };
  }
  return {
    storePath,
    url,
    compression: "none",
    narHash: meta.narSha256,
    narSize: meta.narSize,
    references,
    deriver,
    // PathInfos are not validated for their signatures (as upstream), so one
    // written over gRPC may carry any name: a name with a newline would
    // add lines of its own choosing to the narinfo. Only signatures that
    // could verify (a key name Nix accepts, 64 bytes) are passed on.
    signatures: meta.signatures
      .filter((s) => isValidKeyName(s.name) && s.data.length === SIGNATURE_BYTES)
      .map((s) => ({ name: s.name, data: s.data })),
    ca,
    flags: {},
  };
}
