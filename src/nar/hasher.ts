/**
 * NAR size and SHA-256 without building the NAR: {@linkcode StreamHasher}
 * hashes a NAR fed in pieces of any size (the renderer's `calculateNar`),
 * and {@linkcode NarHasher} is a {@linkcode TreeObserver} for the one-pass
 * import (`castore/import/fs.ts`), so file contents are read once, for both
 * the blobs and the NAR hash (docs/compatibility.md#nar-encoding).
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import type { TreeObserver } from "../castore/import/fs.ts";
import { padLen, str, TOK, u64, ZEROS } from "./wire.ts";
import type { NarSummary } from "./calculation.ts";

/**
 * Byte strings shorter than this are gathered before hashing: a NAR of
 * small files is mostly tokens of 8 to 64 bytes, and one `update` per token
 * would cost more than hashing them.
 */
const GATHER_BELOW = 4096;
const GATHER_BUFFER = 64 * 1024;

/** SHA-256 and length of a byte stream fed in pieces of any size. */
export class StreamHasher {
  readonly #hash: Hash = createHash("sha256");
  #size = 0;
  readonly #gathered = new Uint8Array(GATHER_BUFFER);
  #gatheredLength = 0;

  /** Adds `bytes` (small ones are gathered first). */
  update(bytes: Uint8Array): void {
    this.#size += bytes.length;
    if (bytes.length >= GATHER_BELOW) {
      this.#flush();
      this.#hash.update(bytes);
      return;
    }
    if (this.#gatheredLength + bytes.length > GATHER_BUFFER) this.#flush();
    this.#gathered.set(bytes, this.#gatheredLength);
    this.#gatheredLength += bytes.length;
  }

  #flush(): void {
    if (this.#gatheredLength === 0) return;
    this.#hash.update(this.#gathered.subarray(0, this.#gatheredLength));
    this.#gatheredLength = 0;
  }

  /** Size and SHA-256 of everything added (call once, at the end). */
  summary(): NarSummary {
    this.#flush();
    return { narSize: BigInt(this.#size), narSha256: new Uint8Array(this.#hash.digest()) };
  }
}

/** Hashes the NAR of the tree it observes; {@linkcode NarHasher.summary} once done. */
export class NarHasher implements TreeObserver {
  readonly #hash = new StreamHasher();
  /** Size of the file being read, for its padding. */
  #fileSize = 0;
  #started = false;

  #update(bytes: Uint8Array): void {
    this.#hash.update(bytes);
  }

  /** The root node follows the archive header; every other one an entry's `node (`. */
  #node(): void {
    if (!this.#started) this.#update(TOK.header);
    this.#started = true;
  }

  file(size: number, executable: boolean): void {
    this.#node();
    this.#update(executable ? TOK.executable : TOK.regular);
    this.#update(u64(size));
    this.#fileSize = size;
  }

  contents(piece: Uint8Array): void {
    this.#update(piece);
  }

  endFile(): void {
    this.#update(ZEROS.subarray(0, padLen(this.#fileSize % 8)));
    this.#update(TOK.close);
  }

  symlink(target: Uint8Array): void {
    this.#node();
    this.#update(TOK.symlink);
    this.#update(str(target));
    this.#update(TOK.close);
  }

  beginDirectory(): void {
    this.#node();
    this.#update(TOK.directory);
  }

  beginEntry(name: Uint8Array): void {
    this.#update(TOK.entryOpen);
    this.#update(str(name));
    this.#update(TOK.nodeOpen);
  }

  endEntry(): void {
    this.#update(TOK.close);
  }

  endDirectory(): void {
    this.#update(TOK.close);
  }

  /** Size and SHA-256 of everything observed (call once, at the end). */
  summary(): NarSummary {
    return this.#hash.summary();
  }
}
