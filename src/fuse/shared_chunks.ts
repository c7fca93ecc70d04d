/**
 * A chunk cache shared by all FUSE Workers in one `SharedArrayBuffer`.
 *
 * The kernel spreads one reader's sequential READs over all channels, so
 * without sharing every Worker would fetch, decompress and verify every
 * chunk itself. Here the first Worker to need a chunk claims a slot, and
 * the others wait for it and borrow the bytes in place. A claimed slot can
 * be read into directly (a chunk is never assembled elsewhere first).
 *
 * Slots are fixed-size (chunks larger than a slot are not shared) and
 * grouped in small sets by digest. Each slot has a version word, odd while
 * a Worker fills it and even when stable, and a pin count: readers pin a
 * stable slot while they use its bytes, and a filler, which bumps the
 * version before it looks at the pins, leaves a pinned slot alone. Nobody
 * waits for anybody, so nothing can deadlock; a lost race is simply a miss
 * (or a chunk that is not shared).
 *
 * @module
 */
import { prefaultForWrite } from "./prefault.ts";

/**
 * Slots per set. With 8, a 1 GiB file of 256 KiB chunks in a cache with
 * room for twice that overflowed about 2 % of its sets, so a second read
 * decompressed and verified those chunks again; with 16 almost none do.
 */
export const SHARED_CACHE_WAYS = 16;
const WAYS = SHARED_CACHE_WAYS;
const META_WORDS = 13; // version, length, lastUse, tag (8 words), pins, bytes populated
const M_VERSION = 0, M_LENGTH = 1, M_USED = 2, M_TAG = 3, M_PINS = 11, M_POPULATED = 12;
const H_CLOCK = 0, H_SLOTS = 1, H_SLOT_BYTES = 2;
const HEADER_WORDS = 4;
/** How long to wait for another Worker's fetch before fetching too (ms). */
const WAIT_MS = 5000;

/** Bytes borrowed from the cache in place; call `release` once they were used (written out). */
export interface Borrowed {
  bytes: Uint8Array;
  release(): void;
}

/**
 * A claimed slot: fill it with the chunk's bytes (`fill` copies them in;
 * or write them into `slot` and `commit`), or abandon it. Nobody else sees
 * the slot's bytes before then, so a chunk may be read into `slot` and
 * verified there before it is published.
 */
export interface SlotClaim {
  /** The slot's memory, exactly the claimed size. */
  readonly slot: Uint8Array;
  fill(bytes: Uint8Array): void;
  /** Publishes the `slot.length` bytes already written into `slot`. */
  commit(): void;
  abandon(): void;
}

/** The shared chunk cache; create once, attach in every Worker. */
export class SharedChunkCache {
  readonly buffer: SharedArrayBuffer;
  readonly #meta: Int32Array;
  readonly #data: Uint8Array;
  readonly #slots: number;
  readonly #slotBytes: number;

  private constructor(buffer: SharedArrayBuffer) {
    this.buffer = buffer;
    const header = new Int32Array(buffer, 0, HEADER_WORDS);
    this.#slots = header[H_SLOTS];
    this.#slotBytes = header[H_SLOT_BYTES];
    this.#meta = new Int32Array(buffer, 0, HEADER_WORDS + this.#slots * META_WORDS);
    this.#data = new Uint8Array(buffer, (HEADER_WORDS + this.#slots * META_WORDS) * 4);
  }

  /**
   * A cache for about `totalBytes` of chunks of typically `typicalBytes`, in
   * slots of `slotBytes` (the largest chunk shared). The slot count is
   * `totalBytes / typicalBytes` rounded down to a power of two, so the
   * buffer's size is up to `slotBytes / typicalBytes` times `totalBytes`;
   * that is address space only: a slot's pages become resident when a chunk
   * is written there, so memory use follows the bytes actually cached.
   */
  static create(
    totalBytes: number,
    slotBytes = 512 << 10,
    typicalBytes = slotBytes,
  ): SharedChunkCache {
    let slots = WAYS;
    while (slots * 2 * typicalBytes <= totalBytes) slots *= 2;
    const buffer = new SharedArrayBuffer(
      (HEADER_WORDS + slots * META_WORDS) * 4 + slots * slotBytes,
    );
    const header = new Int32Array(buffer, 0, HEADER_WORDS);
    header[H_SLOTS] = slots;
    header[H_SLOT_BYTES] = slotBytes;
    return new SharedChunkCache(buffer);
  }

  /** Attaches to a cache another thread created. */
  static attach(buffer: SharedArrayBuffer): SharedChunkCache {
    return new SharedChunkCache(buffer);
  }

  /**
   * The chunk's bytes (a private copy), a promise that settles when another
   * Worker finished fetching it (then look again), or `undefined` on a miss.
   */
  lookup(digest: Uint8Array): Uint8Array | Promise<unknown> | undefined {
    const b = this.borrow(digest);
    if (!b || b instanceof Promise) return b;
    // Pinned while copying, so the bytes cannot change underneath.
    const out = b.bytes.slice();
    b.release();
    return out;
  }

  /**
   * Like {@linkcode lookup} but without copying: the bytes are a view into
   * the shared buffer, pinned (no Worker reuses the slot) until `release`.
   * Lets a READ reply be written straight from the cache.
   */
  borrow(digest: Uint8Array): Borrowed | Promise<unknown> | undefined {
    const tag = tagOf(digest);
    const m = this.#meta;
    for (let w = 0; w < WAYS; w++) {
      const base = this.#base(tag[0], w);
      const v1 = Atomics.load(m, base + M_VERSION);
      if (!this.#tagMatches(base, tag)) continue;
      if (v1 & 1) return this.#waitChange(base + M_VERSION, v1);
      // Pin, then check nothing started refilling the slot: a claimer bumps
      // the version first and checks the pins second, so one of us backs off.
      Atomics.add(m, base + M_PINS, 1);
      if (Atomics.load(m, base + M_VERSION) !== v1 || !this.#tagMatches(base, tag)) {
        Atomics.sub(m, base + M_PINS, 1);
        continue;
      }
      const start = this.#slotStart(base);
      m[base + M_USED] = Atomics.add(m, H_CLOCK, 1);
      let released = false;
      return {
        bytes: this.#data.subarray(start, start + m[base + M_LENGTH]),
        release: () => {
          if (released) return;
          released = true;
          Atomics.sub(m, base + M_PINS, 1);
        },
      };
    }
    return undefined;
  }

  /** Whether `digest` is cached or being filled (a cheap check, no copy). */
  has(digest: Uint8Array): boolean {
    const tag = tagOf(digest);
    for (let w = 0; w < WAYS; w++) {
      if (this.#tagMatches(this.#base(tag[0], w), tag)) return true;
    }
    return false;
  }

  /** Claims a slot for `digest` (least recently used of its set), or `undefined` if it cannot be shared. */
  claim(digest: Uint8Array, size: number): SlotClaim | undefined {
    if (size > this.#slotBytes) return undefined;
    const tag = tagOf(digest);
    const m = this.#meta;
    let victim = -1, oldest = Infinity;
    for (let w = 0; w < WAYS; w++) {
      const base = this.#base(tag[0], w);
      const v = Atomics.load(m, base + M_VERSION);
      if (v & 1) continue; // being filled
      if (Atomics.load(m, base + M_PINS) > 0) continue; // being sent
      const used = m[base + M_LENGTH] === 0 ? -1 : m[base + M_USED];
      if (used < oldest) {
        oldest = used;
        victim = base;
      }
    }
    if (victim < 0) return undefined;
    const v = Atomics.load(m, victim + M_VERSION);
    if ((v & 1) || Atomics.compareExchange(m, victim + M_VERSION, v, v + 1) !== v) return undefined;
    if (Atomics.load(m, victim + M_PINS) > 0) {
      // Borrowed meanwhile: leave the contents alone (a new even version, same bytes).
      Atomics.store(m, victim + M_VERSION, v + 2);
      Atomics.notify(m, victim + M_VERSION);
      return undefined;
    }
    for (let i = 0; i < 8; i++) Atomics.store(m, victim + M_TAG + i, tag[i]);
    m[victim + M_LENGTH] = 0;
    const publish = () => {
      Atomics.store(m, victim + M_VERSION, v + 2);
      Atomics.notify(m, victim + M_VERSION);
    };
    const abandon = () => {
      for (let i = 0; i < 8; i++) Atomics.store(m, victim + M_TAG + i, 0);
      publish();
    };
    const start = this.#slotStart(victim);
    const slot = this.#data.subarray(start, start + size);
    // Memory beyond what the slot ever held may never have been touched:
    // one call instead of a fault per page. Only a claimer writes the word.
    const populated = m[victim + M_POPULATED];
    if (size > populated && prefaultForWrite(slot.subarray(populated))) {
      m[victim + M_POPULATED] = size;
    }
    const commit = (length: number) => {
      m[victim + M_LENGTH] = length;
      m[victim + M_USED] = Atomics.add(m, H_CLOCK, 1);
      publish();
    };
    return {
      slot,
      fill: (bytes) => {
        // Longer than claimed would spill into the next slot: not shared then.
        if (bytes.length > slot.length) return abandon();
        slot.set(bytes);
        commit(bytes.length);
      },
      commit: () => commit(slot.length),
      abandon,
    };
  }

  /**
   * Resolves once the word at `index` no longer holds `value` (or after
   * WAIT_MS). `Atomics.waitAsync` wakes on the filler's `notify` at once;
   * a timer keeps the event loop alive meanwhile.
   */
  async #waitChange(index: number, value: number): Promise<void> {
    if (typeof Atomics.waitAsync === "function") {
      const r = Atomics.waitAsync(this.#meta, index, value, WAIT_MS);
      if (!r.async) return;
      // Deno does not count a pending waitAsync as work: a timer keeps the loop alive.
      const keepAlive = setTimeout(() => {}, WAIT_MS);
      await r.value;
      clearTimeout(keepAlive);
      return;
    }
    const until = performance.now() + WAIT_MS;
    while (Atomics.load(this.#meta, index) === value && performance.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  #base(h: number, way: number): number {
    const set = ((h >>> 0) % (this.#slots / WAYS)) * WAYS;
    return HEADER_WORDS + (set + way) * META_WORDS;
  }

  #slotStart(base: number): number {
    return ((base - HEADER_WORDS) / META_WORDS) * this.#slotBytes;
  }

  #tagMatches(base: number, tag: Int32Array): boolean {
    const m = this.#meta;
    for (let i = 0; i < 8; i++) if (Atomics.load(m, base + M_TAG + i) !== tag[i]) return false;
    return true;
  }
}

/**
 * One scratch tag per thread: every use of a tag ends before the method
 * that computed it returns (nothing awaits in between), and a READ looks up
 * several chunks, so a fresh buffer per lookup was garbage at ~10 KB/s per
 * MB/s read.
 */
const TAG = new Int32Array(8);
const TAG_BYTES = new Uint8Array(TAG.buffer);

/** The digest's first 32 bytes as 8 words, in the shared {@linkcode TAG} scratch. */
function tagOf(digest: Uint8Array): Int32Array {
  TAG_BYTES.fill(0);
  TAG_BYTES.set(digest.length > 32 ? digest.subarray(0, 32) : digest);
  return TAG;
}
