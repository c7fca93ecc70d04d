/**
 * Bytes held in an anonymous temporary file: created in the temporary
 * directory (`TMPDIR`, else `/tmp`) and unlinked at once, so the space
 * goes back when the descriptor is closed, or the process dies. For data
 * that must be read whole before any of it may be used (a blob verified
 * against its digest) and that can be larger than memory should hold.
 *
 * @module
 */
import * as fs from "node:fs";
import { errorMessage, StorageError } from "../../errors.ts";

/** Bytes read back per piece by {@linkcode SpillFile.readFrom}. */
const READ_PIECE = 1 << 20;

/** An append-only temporary file, read back once complete. */
export class SpillFile {
  #fd: number | undefined;
  #size = 0;

  private constructor(fd: number) {
    this.#fd = fd;
  }

  /** Creates the file (already unlinked). */
  static create(): SpillFile {
    let path: string | undefined;
    try {
      path = Deno.makeTempFileSync({ prefix: "tvix-store-spill-" });
      const fd = fs.openSync(path, "r+");
      Deno.removeSync(path);
      return new SpillFile(fd);
    } catch (err) {
      if (path) Deno.remove(path).catch(() => {});
      throw new StorageError(`cannot create a temporary file: ${errorMessage(err)}`);
    }
  }

  /** Bytes appended so far. */
  get size(): number {
    return this.#size;
  }

  /** Appends `data` (synchronously: it goes to the page cache). */
  append(data: Uint8Array): void {
    const fd = this.#live();
    try {
      for (let at = 0; at < data.length;) {
        at += fs.writeSync(fd, data, at, data.length - at, this.#size + at);
      }
    } catch (err) {
      throw new StorageError(`writing a temporary file: ${errorMessage(err)}`);
    }
    this.#size += data.length;
  }

  /** The bytes from `offset` to the end, in fresh buffers of up to 1 MiB. */
  async *readFrom(offset: number): AsyncGenerator<Uint8Array> {
    for (let at = offset; at < this.#size;) {
      const piece = new Uint8Array(Math.min(READ_PIECE, this.#size - at));
      const fd = this.#live();
      const n = await new Promise<number>((resolve, reject) =>
        fs.read(fd, piece, 0, piece.length, at, (err, got) => err ? reject(err) : resolve(got))
      ).catch((err) => {
        throw new StorageError(`reading a temporary file: ${errorMessage(err)}`);
      });
      if (n !== piece.length) throw new StorageError("a temporary file came back short");
      at += n;
      yield piece;
    }
  }

  /** Closes the file, which frees its space; idempotent. */
  close(): void {
    if (this.#fd !== undefined) fs.closeSync(this.#fd);
    this.#fd = undefined;
  }

  #live(): number {
    if (this.#fd === undefined) throw new StorageError("temporary file already closed");
    return this.#fd;
  }
}
