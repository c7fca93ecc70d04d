/**
 * BLAKE3 digests: hashing, comparison and display.
 *
 * Every blob, chunk and directory in castore is addressed by a 32-byte
 * BLAKE3-256 digest (default mode, unkeyed).
 *
 * Hashing runs in the Rust `blake3` crate through a Node-API addon
 * (`@napi-rs/blake-hash`, SIMD: several GB/s) where it loads, and in
 * hash-wasm's WebAssembly (no SIMD, about 0.5 GB/s) elsewhere: another
 * CPU or libc without a prebuilt addon, or a sandbox without FFI.
 * `TVIX_BLAKE3=wasm` forces the fallback. Both give the same digests
 * (tests/castore/blake3_test.ts). The WebAssembly module is only loaded
 * where it is used (about 15 ms of CPU at startup otherwise).
 *
 * @module
 */
import { Buffer } from "node:buffer";
import type { IHasher } from "hash-wasm";
import { InvalidRequestError } from "../errors.ts";

/** Length in bytes of a BLAKE3 digest. */
export const B3_LEN = 32;

/** A 32-byte BLAKE3 digest. */
export type Digest = Uint8Array;

/** Throws `InvalidRequestError` ("invalid digest length") unless `digest` is 32 bytes. */
export function checkDigestLength(digest: Uint8Array): void {
  if (digest.length !== B3_LEN) throw new InvalidRequestError("invalid digest length");
}

/** An incremental BLAKE3 hasher for streamed data. */
export interface Blake3Hasher {
  /** Feeds more bytes. */
  update(data: Uint8Array): void;
  /** Returns the digest of everything fed so far and ends the hasher. */
  digest(): Digest;
}

/** One BLAKE3 implementation. */
export interface Blake3Implementation {
  /** `native` (Rust through Node-API) or `wasm` (hash-wasm). */
  readonly name: "native" | "wasm";
  /** BLAKE3 of `data`, computed synchronously. */
  hash(data: Uint8Array): Digest;
  /** A fresh incremental hasher. */
  hasher(): Promise<Blake3Hasher>;
}

/** Wraps a hasher so that it cannot be used after `digest()`. */
function once(update: (data: Uint8Array) => void, finish: () => Digest): Blake3Hasher {
  let finished = false;
  return {
    update(data) {
      if (finished) throw new Error("BLAKE3 hasher used after digest()");
      update(data);
    },
    digest() {
      if (finished) throw new Error("BLAKE3 hasher used after digest()");
      finished = true;
      return finish();
    },
  };
}

async function wasmImplementation(): Promise<Blake3Implementation> {
  const { createBLAKE3 } = await import("hash-wasm");
  // One shared instance serves all one-shot hashing: init/update/digest run
  // synchronously, so no other caller can interleave with them.
  const oneShot: IHasher = await createBLAKE3();
  // Each hash-wasm hasher is its own WebAssembly instance (~14 KiB of
  // memory and ~60 µs to create), and every blob upload needs one:
  // finished hashers are reset and reused instead of instantiating
  // thousands.
  const idle: IHasher[] = [];
  const MAX_IDLE = 64;
  return {
    name: "wasm",
    hash(data) {
      oneShot.init();
      oneShot.update(data);
      return oneShot.digest("binary");
    },
    async hasher() {
      const h = idle.pop() ?? await createBLAKE3();
      h.init();
      return once((data) => h.update(data), () => {
        const digest = h.digest("binary");
        if (idle.length < MAX_IDLE) idle.push(h);
        return digest;
      });
    },
  };
}

/** The addon's surface that is used here. */
interface NativeModule {
  blake3(data: Uint8Array): Uint8Array;
  Blake3Hasher: new () => { update(data: Uint8Array): void; digestBuffer(): Uint8Array };
}

/** A plain Uint8Array over the addon's Buffer (no copy: it owns a 32-byte ArrayBuffer). */
function plain(buf: Uint8Array): Digest {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/**
 * BLAKE3 of 3000 bytes where byte `i` is `i % 251` (more than one block),
 * as `b3sum` prints it.
 */
const PROBE_DIGEST = "5fade288bf27444bee55ba2babb98c3c922c1e84c2e445e7d1f6da24756f5060";

async function nativeImplementation(): Promise<Blake3Implementation> {
  const native = (await import("@napi-rs/blake-hash")) as unknown as NativeModule;
  const impl: Blake3Implementation = {
    name: "native",
    hash: (data) => plain(native.blake3(data)),
    hasher() {
      const h = new native.Blake3Hasher();
      return Promise.resolve(once((data) => h.update(data), () => plain(h.digestBuffer())));
    },
  };
  // A broken build must not go unnoticed: check one known digest, on more
  // than one block of input.
  const probe = Uint8Array.from({ length: 3000 }, (_, i) => i % 251);
  // Spelt out here: `toHex`'s table is not initialised yet while this runs.
  const hex = Array.from(impl.hash(probe), (b) => b.toString(16).padStart(2, "0")).join("");
  if (hex !== PROBE_DIGEST) {
    throw new Error("native BLAKE3 gives a wrong digest");
  }
  return impl;
}

let wasmLoading: Promise<Blake3Implementation> | undefined;

/** The hash-wasm implementation, always available (loaded on the first call). */
export function wasmBlake3(): Promise<Blake3Implementation> {
  wasmLoading ??= wasmImplementation();
  return wasmLoading;
}

function fallbackForced(): boolean {
  try {
    return Deno.env.get("TVIX_BLAKE3") === "wasm";
  } catch {
    return false; // no --allow-env: nobody can have asked for it
  }
}

/**
 * The native implementation, or `undefined` where the addon does not load
 * or `TVIX_BLAKE3=wasm` asks for the fallback.
 */
export const nativeBlake3: Blake3Implementation | undefined = fallbackForced()
  ? undefined
  : await nativeImplementation().catch(() => undefined);

/** The implementation in use: native where it loads, else WebAssembly. */
export const blake3Implementation: Blake3Implementation = nativeBlake3 ?? await wasmBlake3();

/** BLAKE3 of `data`, computed synchronously. */
export const blake3: (data: Uint8Array) => Digest = blake3Implementation.hash;

/** Creates an incremental BLAKE3 hasher. */
export function newBlake3Hasher(): Promise<Blake3Hasher> {
  return blake3Implementation.hasher();
}

/** BLAKE3 of the empty string, which is also the digest of the empty Directory. */
export const EMPTY_DIGEST: Digest = blake3(new Uint8Array(0));

/** Whether two byte strings are equal. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The concatenation of byte strings, always in a fresh array. */
export function concatBytes(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Bytewise comparison: negative, zero or positive like a sort comparator. */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i] - b[i];
  }
  return a.length - b.length;
}

/**
 * Lowercase hex of `bytes`. Natively, through a Buffer view: digests become
 * Map keys many times per blob (`digestKey`), and a string built a byte at
 * a time left 32 intermediate strings per digest to collect, a tenth of
 * everything an import allocated (V8 sampling heap profile).
 */
export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

/** Bytes of a hex string (either case); throws on odd length or bad digits. */
export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new TypeError(`invalid hex string: ${hex}`);
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Standard base64 (RFC 4648 §4, with padding). */
export function toBase64(bytes: Uint8Array): string {
  let bin = "";
  for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
  return btoa(bin);
}

/** Bytes of a standard base64 string; throws on malformed input. */
export function fromBase64(text: string): Uint8Array {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/**
 * The display form of a digest used in messages and xattrs:
 * `b3:` followed by standard padded base64 (47 characters for 32 bytes).
 */
export function b3Display(digest: Uint8Array): string {
  return `b3:${toBase64(digest)}`;
}

/** A digest as a Map/Set key (lowercase hex). */
export function digestKey(digest: Uint8Array): string {
  return toHex(digest);
}
