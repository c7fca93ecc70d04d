/**
 * Inode allocation shared by every FUSE Worker (docs/compatibility.md#inodes).
 *
 * The kernel may send a request for an inode to any channel, so every
 * Worker must be able to answer for inodes another Worker allocated. The
 * table therefore lives in one `SharedArrayBuffer` handed to all Workers:
 *
 * - **records**: one fixed-size record per inode, indexed by the inode
 *   number (so inode → node is a single array access on the hot path, read
 *   without a lock). Inodes are allocated sequentially from 2 (1 is the
 *   root); a record is fully written before its first word (kind) is
 *   published with `Atomics.store`.
 * - **slots**: an open-addressing hash set of inode numbers keyed by the
 *   node's *content* (content-based deduplication), used only to intern.
 *   Interning takes a spin lock held for one probe (and, rarely, a
 *   rehash), so two Workers interning the same node get the same inode.
 *   The set starts small and doubles in place whenever it would become
 *   more than half full. A set sized for the largest table from the start
 *   scattered the first 10,000 inodes over some 6,000 pages of its 32 MiB,
 *   each touched for the first time; on a paravirtualised guest those
 *   faults made the first `ls -lR` of a 10,100-entry tree about 10 %
 *   slower (7,700 faults in the mount during it, 1,900 with a growing set).
 * - **arena**: symlink targets, bump-allocated.
 *
 * Content keys (an upstream quirk fixed, nothing changes on the wire:
 * docs/compatibility.md#q15-fuse-inode-keys-directory-sizes-and-root-listing): files by blob
 * digest **and** size **and** executable flag, so two files with equal
 * contents but different modes get different inodes; symlinks by target;
 * directories by directory digest (their reported size is the
 * `DirectoryNode.size`, which the digest determines, so it never changes).
 *
 * Deterministic inode derivation (hashing the content into the inode) was
 * considered; it still needs a shared inode → node table to answer GETATTR
 * for an inode another Worker handed out, so it saves nothing and makes
 * collisions possible. Memory is reserved up front but only touched as
 * inodes are allocated (the kernel commits pages lazily, and records,
 * slots in use and the arena each grow from their start). Inodes are never
 * freed, as in the reference.
 *
 * @module
 */
import { B3_LEN } from "../castore/digest.ts";
import type { NodeVariant } from "../castore/node.ts";

/** Kind of an inode. */
export const Kind = { Directory: 1, File: 2, Symlink: 3, Root: 4 } as const;
/** One of {@linkcode Kind}. */
export type Kind = typeof Kind[keyof typeof Kind];

/** The FUSE root inode. */
export const ROOT_INO = 1;

const EXECUTABLE = 0x100;
const KIND_MASK = 0xff;

// Header words. H_SLOTS is the room reserved for slots, H_ACTIVE_SLOTS the
// part in use (a power of two), H_ENTRIES the inodes in it.
const H_MAGIC = 0, H_CAPACITY = 1, H_NEXT = 2, H_SLOTS = 3, H_ARENA_NEXT = 4, H_ARENA_SIZE = 5;
const H_LOCK = 6, H_ACTIVE_SLOTS = 7, H_ENTRIES = 8;
const HEADER_WORDS = 16;
const MAGIC = 0x74766978; // "tvix"

// Record words: [kind|flags, sizeLo, sizeHi, digest (8 words) | arenaOffset, length].
const REC_WORDS = 12;
const R_SIZE_LO = 1, R_SIZE_HI = 2, R_DATA = 3;

/** Thrown when the table has no room left for a new inode. */
export class InodeTableFullError extends Error {
  override name = "InodeTableFullError";
}

/** Sizing of a new table. */
export interface InodeTableOptions {
  /** Most inodes that can ever be allocated (default 4 Mi). */
  maxInodes?: number;
  /** Bytes for symlink targets (default 64 MiB). */
  arenaBytes?: number;
  /** Hash slots in use at first, a power of two (default 4096, 16 KiB); doubles as needed. */
  initialSlots?: number;
}

/** What the filesystem needs to know about an inode. */
export interface InodeInfo {
  kind: Kind;
  executable: boolean;
  /** File: blob size; directory: `DirectoryNode.size`; symlink: target length. */
  size: number;
}

/** A view of the shared inode table; construct one per Worker over the same buffer. */
export class InodeTable {
  readonly buffer: SharedArrayBuffer;
  readonly #words: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #capacity: number;
  readonly #maxSlots: number;
  readonly #recBase: number; // word index of record 0
  readonly #slotBase: number; // word index of slot 0
  readonly #arenaBase: number; // byte offset of the arena
  readonly #arenaSize: number;

  private constructor(buffer: SharedArrayBuffer) {
    this.buffer = buffer;
    this.#words = new Int32Array(buffer);
    this.#bytes = new Uint8Array(buffer);
    if (this.#words[H_MAGIC] !== MAGIC) throw new Error("not an inode table buffer");
    this.#capacity = this.#words[H_CAPACITY];
    this.#maxSlots = this.#words[H_SLOTS];
    this.#recBase = HEADER_WORDS;
    this.#slotBase = this.#recBase + this.#capacity * REC_WORDS;
    this.#arenaBase = (this.#slotBase + this.#maxSlots) * 4;
    this.#arenaSize = this.#words[H_ARENA_SIZE];
  }

  /** Allocates a new, empty table (root inode only). */
  static create(opts: InodeTableOptions = {}): InodeTable {
    const capacity = opts.maxInodes ?? 4 << 20;
    const arena = opts.arenaBytes ?? 64 << 20;
    let slots = 1;
    while (slots < capacity * 2) slots *= 2;
    const bytes = (HEADER_WORDS + capacity * REC_WORDS + slots) * 4 + arena;
    const buffer = new SharedArrayBuffer(bytes);
    const w = new Int32Array(buffer);
    w[H_CAPACITY] = capacity;
    w[H_SLOTS] = slots;
    w[H_NEXT] = ROOT_INO + 1;
    w[H_ARENA_NEXT] = 0;
    w[H_ARENA_SIZE] = arena;
    let active = 1;
    while (active < Math.min(opts.initialSlots ?? 4096, slots)) active *= 2;
    w[H_ACTIVE_SLOTS] = active;
    w[HEADER_WORDS + ROOT_INO * REC_WORDS] = Kind.Root;
    Atomics.store(w, H_MAGIC, MAGIC);
    return new InodeTable(buffer);
  }

  /** Attaches to a table another thread created. */
  static attach(buffer: SharedArrayBuffer): InodeTable {
    return new InodeTable(buffer);
  }

  /** Inode numbers are below this. */
  get capacity(): number {
    return this.#capacity;
  }

  /** Number of inodes allocated so far (including the root). */
  get allocated(): number {
    return Atomics.load(this.#words, H_NEXT) - 1;
  }

  /** The kind word of `ino`, or 0 if it was never allocated. */
  #kindWord(ino: number): number {
    if (!Number.isInteger(ino) || ino < ROOT_INO || ino >= this.#capacity) return 0;
    return Atomics.load(this.#words, this.#recBase + ino * REC_WORDS);
  }

  /** The {@linkcode Kind} of `ino`, or 0 if it was never handed out (no allocation: hot path). */
  kind(ino: number): number {
    return this.#kindWord(ino) & KIND_MASK;
  }

  /** The size of `ino` as {@linkcode InodeInfo.size} (0 if never handed out). */
  size(ino: number): number {
    if (this.#kindWord(ino) === 0) return 0;
    const r = this.#recBase + ino * REC_WORDS;
    return (this.#words[r + R_SIZE_LO] >>> 0) + (this.#words[r + R_SIZE_HI] >>> 0) * 0x100000000;
  }

  /** What `ino` is, or `undefined` if it was never handed out. */
  info(ino: number): InodeInfo | undefined {
    const k = this.#kindWord(ino);
    if (k === 0) return undefined;
    const r = this.#recBase + ino * REC_WORDS;
    const w = this.#words;
    return {
      kind: (k & KIND_MASK) as Kind,
      executable: (k & EXECUTABLE) !== 0,
      size: (w[r + R_SIZE_LO] >>> 0) + (w[r + R_SIZE_HI] >>> 0) * 0x100000000,
    };
  }

  /** The blob digest (file) or directory digest (directory) of `ino`; a view, do not modify. */
  digest(ino: number): Uint8Array | undefined {
    const k = this.#kindWord(ino) & KIND_MASK;
    if (k !== Kind.File && k !== Kind.Directory) return undefined;
    const off = (this.#recBase + ino * REC_WORDS + R_DATA) * 4;
    return this.#bytes.subarray(off, off + B3_LEN);
  }

  /** The target of symlink `ino`; a view, do not modify. */
  symlinkTarget(ino: number): Uint8Array | undefined {
    if ((this.#kindWord(ino) & KIND_MASK) !== Kind.Symlink) return undefined;
    const r = this.#recBase + ino * REC_WORDS;
    const start = this.#arenaBase + this.#words[r + R_DATA];
    return this.#bytes.subarray(start, start + this.#words[r + R_SIZE_LO]);
  }

  /**
   * The inode for `node`'s content, allocating one the first time that
   * content is seen by any Worker. The node's name is irrelevant.
   */
  intern(node: NodeVariant): number {
    let kind: number, size: number, data: Uint8Array, exec = false;
    switch (node.$case) {
      case "directory":
        kind = Kind.Directory;
        size = Number(node.value.size);
        data = node.value.digest;
        break;
      case "file":
        kind = Kind.File;
        size = Number(node.value.size);
        data = node.value.digest;
        exec = node.value.executable;
        break;
      case "symlink":
        kind = Kind.Symlink;
        data = node.value.target;
        size = data.length;
        break;
    }
    const kindWord = kind | (exec ? EXECUTABLE : 0);
    const hash = keyHash(kindWord, size, data);
    const w = this.#words;
    this.#lock();
    try {
      let mask = w[H_ACTIVE_SLOTS] - 1;
      let i = hash & mask;
      for (let ino = w[this.#slotBase + i]; ino !== 0; ino = w[this.#slotBase + i]) {
        if (this.#matches(ino, kindWord, size, data)) return ino;
        i = (i + 1) & mask;
      }
      const entries = w[H_ENTRIES] + 1;
      if (entries * 2 > mask + 1 && mask + 1 < this.#maxSlots) {
        mask = this.#grow() - 1;
        for (i = hash & mask; w[this.#slotBase + i] !== 0; i = (i + 1) & mask);
      }
      const ino = this.#allocate(kindWord, size, data);
      w[this.#slotBase + i] = ino;
      w[H_ENTRIES] = entries;
      return ino;
    } finally {
      this.#unlock();
    }
  }

  /**
   * Takes the intern lock. Holders never wait for anything, so spinning is
   * cheaper than parking (which the main thread may not do anyway).
   */
  #lock(): void {
    while (Atomics.compareExchange(this.#words, H_LOCK, 0, 1) !== 0) {
      while (Atomics.load(this.#words, H_LOCK) !== 0);
    }
  }

  #unlock(): void {
    Atomics.store(this.#words, H_LOCK, 0);
  }

  /**
   * Doubles the slots in use and re-inserts every inode; returns the new
   * count. Only what was in use needs clearing: slots beyond it were never
   * written. Called with the lock held.
   */
  #grow(): number {
    const w = this.#words;
    const old = w[H_ACTIVE_SLOTS];
    const slots = old * 2;
    const mask = slots - 1;
    w.fill(0, this.#slotBase, this.#slotBase + old);
    const next = w[H_NEXT];
    for (let ino = ROOT_INO + 1; ino < next; ino++) {
      const r = this.#recBase + ino * REC_WORDS;
      const kindWord = w[r];
      const size = (w[r + R_SIZE_LO] >>> 0) + (w[r + R_SIZE_HI] >>> 0) * 0x100000000;
      let i = keyHash(kindWord, size, this.#keyData(ino, kindWord)) & mask;
      while (w[this.#slotBase + i] !== 0) i = (i + 1) & mask;
      w[this.#slotBase + i] = ino;
    }
    w[H_ACTIVE_SLOTS] = slots;
    return slots;
  }

  /** The bytes of `ino`'s key: its digest, or its symlink target. */
  #keyData(ino: number, kindWord: number): Uint8Array {
    const r = this.#recBase + ino * REC_WORDS;
    const start = (kindWord & KIND_MASK) === Kind.Symlink
      ? this.#arenaBase + this.#words[r + R_DATA]
      : (r + R_DATA) * 4;
    const length = (kindWord & KIND_MASK) === Kind.Symlink ? this.#words[r + R_SIZE_LO] : B3_LEN;
    return this.#bytes.subarray(start, start + length);
  }

  /** Writes and publishes the record of a new inode. Called with the lock held. */
  #allocate(kindWord: number, size: number, data: Uint8Array): number {
    const w = this.#words;
    const ino = w[H_NEXT];
    if (ino >= this.#capacity) {
      throw new InodeTableFullError(`more than ${this.#capacity - 1} inodes in use`);
    }
    const r = this.#recBase + ino * REC_WORDS;
    w[r + R_SIZE_LO] = size >>> 0;
    w[r + R_SIZE_HI] = Math.floor(size / 0x100000000);
    if ((kindWord & KIND_MASK) === Kind.Symlink) {
      const at = w[H_ARENA_NEXT];
      if (at + data.length > this.#arenaSize) {
        throw new InodeTableFullError("symlink target arena is full");
      }
      this.#bytes.set(data, this.#arenaBase + at);
      w[r + R_DATA] = at;
      w[H_ARENA_NEXT] = at + data.length;
    } else {
      this.#bytes.set(data, (r + R_DATA) * 4);
    }
    Atomics.store(w, H_NEXT, ino + 1);
    Atomics.store(w, r, kindWord); // publish last
    return ino;
  }

  #matches(ino: number, kindWord: number, size: number, data: Uint8Array): boolean {
    const r = this.#recBase + ino * REC_WORDS;
    const w = this.#words;
    if (Atomics.load(w, r) !== kindWord) return false;
    // Both words as the Int32Array holds them: a size of 2^63 or more has
    // its high word read back negative.
    if (
      w[r + R_SIZE_LO] !== (size | 0) || w[r + R_SIZE_HI] !== (Math.floor(size / 0x100000000) | 0)
    ) {
      return false;
    }
    const b = this.#bytes;
    const start = (kindWord & KIND_MASK) === Kind.Symlink
      ? this.#arenaBase + w[r + R_DATA]
      : (r + R_DATA) * 4;
    for (let j = 0; j < data.length; j++) if (b[start + j] !== data[j]) return false;
    return true;
  }
}

/** FNV-1a over the key, mixed with kind and size. */
function keyHash(kindWord: number, size: number, data: Uint8Array): number {
  let h = (0x811c9dc5 ^ kindWord) >>> 0;
  h = Math.imul(h ^ (size >>> 0), 0x01000193);
  // Digests are uniformly random already: a few bytes suffice.
  const n = data.length === B3_LEN ? 8 : data.length;
  for (let j = 0; j < n; j++) h = Math.imul(h ^ data[j], 0x01000193);
  return h >>> 0;
}
