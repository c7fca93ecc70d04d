/**
 * Directory listings shared by all FUSE Workers in one `SharedArrayBuffer`.
 *
 * The kernel spreads the requests for one directory over all channels (a
 * READDIRPLUS on one, the LOOKUPs and the next READDIRPLUS on others), so
 * without sharing every Worker fetches, verifies and decodes every
 * directory itself: N fetches per directory with N Workers, each a round
 * trip when the store is remote. Here the first Worker to list a directory
 * publishes its children (inode numbers and names) and the others read
 * them from shared memory.
 *
 * Layout: a header, an index with one word per inode (the listing's arena
 * offset + 1, or 0 while unlisted) and a bump-allocated arena of listings
 * `[count, then per child: ino (u32), name length (u16), name bytes]`,
 * 4-byte aligned. A listing is fully written before its index word is
 * published with `Atomics.compareExchange`, and never changes afterwards
 * (inodes and their directories are immutable), so readers need no lock
 * and may keep views of the names. Two Workers listing one directory at
 * once both write it; one wins the index word and the other's copy is
 * wasted arena space. Once the arena is full, Workers keep their listings
 * to themselves. Memory is reserved up front but committed by the kernel
 * only as listings are written.
 *
 * @module
 */

const H_MAGIC = 0, H_CAPACITY = 1, H_ARENA_NEXT = 2, H_ARENA_SIZE = 3;
const HEADER_WORDS = 4;
const MAGIC = 0x6c697374; // "list"

/** A directory's children in name order: `names[i]` is inode `inos[i]`. */
export interface Listing {
  names: readonly Uint8Array[];
  inos: readonly number[];
}

/** Sizing of a new table. */
export interface SharedListingsOptions {
  /** Highest inode number + 1 that can be listed (match the inode table). */
  maxInodes: number;
  /** Bytes for listings (default 256 MiB). */
  arenaBytes?: number;
}

/** Longest name a shared listing holds (its length is stored in 16 bits). */
const MAX_NAME_BYTES = 0xffff;

/** The shared listings; create once, attach in every Worker. */
export class SharedListings {
  readonly buffer: SharedArrayBuffer;
  readonly #words: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  readonly #capacity: number;
  readonly #arenaBase: number;
  readonly #arenaSize: number;

  private constructor(buffer: SharedArrayBuffer) {
    this.buffer = buffer;
    this.#words = new Int32Array(buffer);
    this.#bytes = new Uint8Array(buffer);
    this.#view = new DataView(buffer);
    if (this.#words[H_MAGIC] !== MAGIC) throw new Error("not a shared listings buffer");
    this.#capacity = this.#words[H_CAPACITY];
    this.#arenaBase = (HEADER_WORDS + this.#capacity) * 4;
    this.#arenaSize = this.#words[H_ARENA_SIZE];
  }

  /** Allocates an empty table. */
  static create(opts: SharedListingsOptions): SharedListings {
    const arena = opts.arenaBytes ?? 256 << 20;
    const buffer = new SharedArrayBuffer((HEADER_WORDS + opts.maxInodes) * 4 + arena);
    const w = new Int32Array(buffer);
    w[H_CAPACITY] = opts.maxInodes;
    w[H_ARENA_SIZE] = arena;
    Atomics.store(w, H_MAGIC, MAGIC);
    return new SharedListings(buffer);
  }

  /** Attaches to a table another thread created. */
  static attach(buffer: SharedArrayBuffer): SharedListings {
    return new SharedListings(buffer);
  }

  /** The listing of directory `ino` if some Worker published it. Names are views: do not modify. */
  get(ino: number): Listing | undefined {
    if (!Number.isInteger(ino) || ino < 0 || ino >= this.#capacity) return undefined;
    const at = Atomics.load(this.#words, HEADER_WORDS + ino);
    if (at === 0) return undefined;
    const v = this.#view;
    let pos = this.#arenaBase + at - 1;
    const count = v.getUint32(pos, true);
    pos += 4;
    const names = new Array<Uint8Array>(count);
    const inos = new Array<number>(count);
    for (let i = 0; i < count; i++) {
      inos[i] = v.getUint32(pos, true);
      const len = v.getUint16(pos + 4, true);
      names[i] = this.#bytes.subarray(pos + 6, pos + 6 + len);
      pos += 6 + len;
    }
    return { names, inos };
  }

  /**
   * Publishes the listing of directory `ino`. Returns false if it cannot be
   * shared (arena full, inode out of range, a name longer than its 16-bit
   * length field: castore does not bound names); another Worker having
   * published it first is fine (true).
   */
  publish(ino: number, listing: Listing): boolean {
    if (!Number.isInteger(ino) || ino < 0 || ino >= this.#capacity) return false;
    const w = this.#words;
    if (Atomics.load(w, HEADER_WORDS + ino) !== 0) return true;
    let size = 4;
    for (const name of listing.names) {
      if (name.length > MAX_NAME_BYTES) return false;
      size += 6 + name.length;
    }
    size = (size + 3) & ~3;
    // Checked before reserving, so a full arena's counter stays near its
    // end (at most one listing per Worker past it) instead of growing.
    if (Atomics.load(w, H_ARENA_NEXT) + size > this.#arenaSize) return false;
    const at = Atomics.add(w, H_ARENA_NEXT, size);
    if (at + size > this.#arenaSize) return false;
    const v = this.#view;
    let pos = this.#arenaBase + at;
    v.setUint32(pos, listing.names.length, true);
    pos += 4;
    for (let i = 0; i < listing.names.length; i++) {
      const name = listing.names[i];
      v.setUint32(pos, listing.inos[i], true);
      v.setUint16(pos + 4, name.length, true);
      this.#bytes.set(name, pos + 6);
      pos += 6 + name.length;
    }
    Atomics.compareExchange(w, HEADER_WORDS + ino, 0, at + 1);
    return true;
  }
}
