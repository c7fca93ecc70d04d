/**
 * Nix binary cache keys and signatures (ed25519).
 *
 * Nix writes keys as `<name>:<base64>`: a public key holds the 32-byte
 * ed25519 point, a secret key holds 64 bytes (the 32-byte seed followed by
 * the public key, as libsodium stores it). A signature on a narinfo is
 * `<name>:<base64 of 64 bytes>` over the fingerprint
 * (docs/compatibility.md#fingerprint-and-signatures).
 *
 * node:crypto only imports ed25519 keys in DER (or JWK) form, so the raw
 * bytes are wrapped in the fixed PKCS#8 / SPKI prefixes of RFC 8410.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createPrivateKey, createPublicKey, type KeyObject, sign, verify } from "node:crypto";
import { bytesEqual, concatBytes, fromBase64, toBase64 } from "../castore/digest.ts";
import { errorMessage } from "../errors.ts";

/** A key or signature string that is not in Nix's format. */
export class KeyFormatError extends Error {
  override name = "KeyFormatError";
}

/** Bytes of an ed25519 signature. */
export const SIGNATURE_BYTES = 64;

/** A named ed25519 signature, as carried by a narinfo `Sig:` line. */
export interface NamedSignature {
  /** Key name, e.g. `cache.nixos.org-1`. */
  name: string;
  /** The 64 raw signature bytes. */
  data: Uint8Array;
}

// RFC 8410 DER prefixes: PKCS#8 PrivateKeyInfo wrapping a 32-byte seed, and
// SubjectPublicKeyInfo wrapping a 32-byte public key. Both carry the same
// AlgorithmIdentifier (SEQUENCE { OID 1.3.101.112 }).
const ED25519_ALGORITHM = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
const PKCS8_PREFIX = Uint8Array.from(
  [0x30, 0x2e, 0x02, 0x01, 0x00, ...ED25519_ALGORITHM, 0x04, 0x22, 0x04, 0x20],
);
const SPKI_PREFIX = Uint8Array.from([0x30, 0x2a, ...ED25519_ALGORITHM, 0x03, 0x21, 0x00]);

const te = new TextEncoder();

/** Key names as Nix accepts them in `Sig:` lines: non-empty, `[A-Za-z0-9.-]`. */
export function isValidKeyName(name: string): boolean {
  return /^[A-Za-z0-9.\-]+$/.test(name);
}

/** Splits `<name>:<base64>` and decodes the payload, which must be `len` bytes. */
function splitNamed(text: string, len: number, what: string): { name: string; bytes: Uint8Array } {
  const colon = text.indexOf(":");
  if (colon <= 0) throw new KeyFormatError(`invalid ${what}: missing "<name>:" prefix`);
  const name = text.slice(0, colon);
  if (!isValidKeyName(name)) throw new KeyFormatError(`invalid ${what}: bad key name ${name}`);
  const b64 = text.slice(colon + 1);
  // Canonical base64 only: the length check below rejects anything else.
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length !== 4 * Math.ceil(len / 3)) {
    throw new KeyFormatError(`invalid ${what}: payload must be base64 of ${len} bytes`);
  }
  let bytes: Uint8Array;
  try {
    bytes = fromBase64(b64);
  } catch {
    throw new KeyFormatError(`invalid ${what}: bad base64`);
  }
  if (bytes.length !== len) {
    throw new KeyFormatError(`invalid ${what}: payload must be ${len} bytes, got ${bytes.length}`);
  }
  return { name, bytes };
}

/** Parses a narinfo signature `<name>:<base64 of 64 bytes>`. */
export function parseSignature(text: string): NamedSignature {
  const { name, bytes } = splitNamed(text, SIGNATURE_BYTES, "signature");
  return { name, data: bytes };
}

/** Formats a signature as Nix writes it in a `Sig:` line. */
export function formatSignature(sig: NamedSignature): string {
  return `${sig.name}:${toBase64(sig.data)}`;
}

/** An ed25519 public key with its Nix name; verifies signatures carrying that name. */
export class PublicKey {
  readonly #key: KeyObject;

  private constructor(readonly name: string, readonly bytes: Uint8Array) {
    this.#key = createPublicKey({
      key: Buffer.from(concatBytes([SPKI_PREFIX, bytes])),
      format: "der",
      type: "spki",
    });
  }

  /** Parses `<name>:<base64 of 32 bytes>` (one entry of `trusted-public-keys`). */
  static parse(text: string): PublicKey {
    const { name, bytes } = splitNamed(text.trim(), 32, "public key");
    try {
      return new PublicKey(name, bytes);
    } catch (err) {
      throw new KeyFormatError(`invalid public key: ${errorMessage(err)}`);
    }
  }

  /** Builds a key from its name and raw 32 bytes. */
  static fromRaw(name: string, bytes: Uint8Array): PublicKey {
    return new PublicKey(name, bytes);
  }

  /** Whether `sig` is this key's (same name) valid signature over `fingerprint`. */
  verify(fingerprint: string, sig: NamedSignature): boolean {
    if (sig.name !== this.name || sig.data.length !== SIGNATURE_BYTES) return false;
    try {
      return verify(null, te.encode(fingerprint), this.#key, sig.data);
    } catch {
      return false;
    }
  }

  /** `<name>:<base64>`, the form Nix prints and reads. */
  toString(): string {
    return `${this.name}:${toBase64(this.bytes)}`;
  }
}

/** An ed25519 secret key with its Nix name; signs fingerprints. */
export class SecretKey {
  readonly #key: KeyObject;
  /** The matching public key. */
  readonly publicKey: PublicKey;

  private constructor(readonly name: string, seed: Uint8Array, pub: Uint8Array) {
    this.#key = createPrivateKey({
      key: Buffer.from(concatBytes([PKCS8_PREFIX, seed])),
      format: "der",
      type: "pkcs8",
    });
    this.publicKey = PublicKey.fromRaw(name, pub);
  }

  /**
   * Parses a secret key as `nix-store --generate-binary-cache-key` writes
   * it: `<name>:<base64 of seed ‖ public key>` (64 bytes). The embedded
   * public key must match the seed, so a corrupted file is caught here.
   */
  static parse(text: string): SecretKey {
    const { name, bytes } = splitNamed(text.trim(), 64, "secret key");
    let key: SecretKey;
    try {
      key = new SecretKey(name, bytes.subarray(0, 32), bytes.slice(32));
    } catch (err) {
      throw new KeyFormatError(`invalid secret key: ${errorMessage(err)}`);
    }
    const derived = createPublicKey(key.#key).export({ format: "der", type: "spki" });
    if (!bytesEqual(new Uint8Array(derived).subarray(SPKI_PREFIX.length), key.publicKey.bytes)) {
      throw new KeyFormatError("invalid secret key: public half does not match the seed");
    }
    return key;
  }

  /** Reads and parses a secret key file. */
  static async fromFile(path: string): Promise<SecretKey> {
    return SecretKey.parse(await Deno.readTextFile(path));
  }

  /**
   * Signs the fingerprint (docs/compatibility.md#fingerprint-and-signatures)
   * and names the signature after this key.
   */
  sign(fingerprint: string): NamedSignature {
    const data = new Uint8Array(sign(null, te.encode(fingerprint), this.#key));
    return { name: this.name, data };
  }
}

/** Parses a whitespace-separated list of public keys (`trusted-public-keys`). */
export function parsePublicKeys(text: string): PublicKey[] {
  return text.split(/\s+/).filter((s) => s.length > 0).map((s) => PublicKey.parse(s));
}

/** Whether any of `sigs` is a valid signature over `fingerprint` by one of `keys`. */
export function verifyAny(
  fingerprint: string,
  sigs: readonly NamedSignature[],
  keys: readonly PublicKey[],
): boolean {
  return sigs.some((sig) => keys.some((key) => key.verify(fingerprint, sig)));
}
