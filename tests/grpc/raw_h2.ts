/**
 * A minimal HTTP/2 client over a plain TCP connection, for tests that need
 * to control flow-control windows exactly (a "slow reader" that grants a
 * stream one message and then nothing more), which neither grpc-js nor
 * node:http2 let a caller do. It speaks just enough HTTP/2 for gRPC calls
 * with a request known up front: literal HPACK headers out, frames counted
 * in, SETTINGS and PING acknowledged.
 *
 * @module
 */
import { concatBytes } from "../../src/castore/digest.ts";

const PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** Frame types used here. */
const DATA = 0, HEADERS = 1, RST_STREAM = 3, SETTINGS = 4, PING = 6, GOAWAY = 7, WINDOW_UPDATE = 8;
const END_STREAM = 0x1, ACK = 0x1, END_HEADERS = 0x4;
/** SETTINGS identifiers. */
const SETTINGS_MAX_CONCURRENT_STREAMS = 0x3, SETTINGS_INITIAL_WINDOW_SIZE = 0x4;
/** The initial window of a connection, which only WINDOW_UPDATE can change. */
const DEFAULT_WINDOW = 65_535;
const MAX_WINDOW = 2 ** 31 - 1;

/** What one stream received so far. */
export interface RawStream {
  /** The stream id. */
  readonly id: number;
  /** DATA payload bytes received. */
  dataBytes: number;
  /** The first gRPC message, once it is complete. */
  first?: Uint8Array;
  /** Every DATA payload received, in order (gRPC framing included). */
  readonly data: Uint8Array[];
  /** True once the server ended the stream (END_STREAM) or reset it. */
  closed: boolean;
  /** The RST_STREAM error code, if the server reset the stream. */
  resetCode?: number;
  /** Resolves when the first gRPC message is complete (or the stream closed). */
  readonly firstMessage: Promise<void>;
}

interface StreamState extends RawStream {
  /** Bytes of the first message received so far (with its 5-byte prefix). */
  pending: Uint8Array[];
  pendingBytes: number;
  /** Length of the first message with its prefix, once the prefix is in. */
  total: number;
  /** Grant every received byte back (a reader that keeps up). */
  full: boolean;
  onFirst: () => void;
  onClose?: () => void;
}

function frame(type: number, flags: number, stream: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(9 + payload.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, (payload.length << 8) | type);
  out[4] = flags;
  view.setUint32(5, stream);
  out.set(payload, 9);
  return out;
}

function u32(value: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value);
  return out;
}

/** HPACK "literal header field without indexing, new name", no Huffman coding. */
function hpackLiteral(name: string, value: string): Uint8Array {
  const enc = new TextEncoder();
  const n = enc.encode(name), v = enc.encode(value);
  if (n.length > 126 || v.length > 126) throw new Error("header too long for this encoder");
  return concatBytes([Uint8Array.of(0, n.length), n, Uint8Array.of(v.length), v]);
}

/** A gRPC message frame: flag byte 0, big-endian length, the message. */
export function grpcFrame(message: Uint8Array): Uint8Array {
  return concatBytes([Uint8Array.of(0), u32(message.length), message]);
}

/**
 * One HTTP/2 connection. Each stream starts with `initialWindow` bytes of
 * window; {@linkcode RawH2Connection.call} can top a stream up to exactly its
 * first gRPC message and then grant nothing more. The connection window is
 * opened wide at once, so a stalled stream never stalls the others.
 */
export class RawH2Connection {
  readonly #conn: Deno.TcpConn;
  readonly #streams = new Map<number, StreamState>();
  #nextId = 1;
  #buffered: Uint8Array = new Uint8Array(0);
  readonly #reading: Promise<void>;
  #writeChain: Promise<void> = Promise.resolve();
  /** The server's SETTINGS, as received (identifier → value). */
  readonly serverSettings = new Map<number, number>();
  /** Resolves once the server's first SETTINGS frame arrived. */
  readonly settingsReceived: Promise<void>;
  #onSettings!: () => void;
  /** The error code of a GOAWAY from the server, if one came. */
  goAwayCode?: number;

  private constructor(conn: Deno.TcpConn, readonly initialWindow: number) {
    this.#conn = conn;
    this.settingsReceived = new Promise((r) => (this.#onSettings = r));
    this.#reading = this.#readLoop();
  }

  /** Connects to `host:port` and sends the preface with `initialWindow` for every stream. */
  static async connect(
    hostname: string,
    port: number,
    initialWindow = DEFAULT_WINDOW,
  ): Promise<RawH2Connection> {
    const conn = await Deno.connect({ hostname, port });
    const h2 = new RawH2Connection(conn, initialWindow);
    const settings = concatBytes([
      Uint8Array.of(0, 2), // ENABLE_PUSH
      u32(0),
      Uint8Array.of(0, SETTINGS_INITIAL_WINDOW_SIZE),
      u32(initialWindow),
    ]);
    await h2.#write(concatBytes([
      PREFACE,
      frame(SETTINGS, 0, 0, settings),
      frame(WINDOW_UPDATE, 0, 0, u32(MAX_WINDOW - DEFAULT_WINDOW)),
    ]));
    return h2;
  }

  /** SETTINGS_MAX_CONCURRENT_STREAMS as the server announced it (undefined: unlimited). */
  get maxConcurrentStreams(): number | undefined {
    return this.serverSettings.get(SETTINGS_MAX_CONCURRENT_STREAMS);
  }

  /**
   * Starts a gRPC call of `path` with one request message. With
   * `firstMessageOnly`, the stream's window is raised to just what its first
   * response message needs and never again: a reader that stalls after one
   * message. Otherwise every received byte is granted back.
   */
  async call(
    authority: string,
    path: string,
    request: Uint8Array,
    firstMessageOnly: boolean,
  ): Promise<RawStream> {
    const id = this.#nextId;
    this.#nextId += 2;
    let onFirst!: () => void;
    const firstMessage = new Promise<void>((r) => (onFirst = r));
    const state: StreamState = {
      id,
      dataBytes: 0,
      closed: false,
      firstMessage,
      data: [],
      pending: [],
      pendingBytes: 0,
      total: 0,
      full: !firstMessageOnly,
      onFirst,
    };
    this.#streams.set(id, state);
    const headers = concatBytes([
      hpackLiteral(":method", "POST"),
      hpackLiteral(":scheme", "http"),
      hpackLiteral(":path", path),
      hpackLiteral(":authority", authority),
      hpackLiteral("content-type", "application/grpc"),
      hpackLiteral("te", "trailers"),
    ]);
    await this.#write(concatBytes([
      frame(HEADERS, END_HEADERS, id, headers),
      frame(DATA, END_STREAM, id, grpcFrame(request)),
    ]));
    return state;
  }

  /**
   * Makes a stalled stream read on: grants the window back and from then
   * on every byte received. Resolves when the server has ended the stream.
   */
  async resume(stream: RawStream): Promise<void> {
    const s = this.#streams.get(stream.id);
    if (!s) throw new Error(`unknown stream ${stream.id}`);
    s.full = true;
    const ended = new Promise<void>((resolve) => (s.onClose = resolve));
    await this.#write(frame(WINDOW_UPDATE, 0, s.id, u32(MAX_WINDOW - this.initialWindow)));
    if (!s.closed) await ended;
  }

  /** Cancels a stream (RST_STREAM CANCEL), as a client does that gives up. */
  async cancel(stream: RawStream): Promise<void> {
    const CANCEL = 0x8;
    await this.#write(frame(RST_STREAM, 0, stream.id, u32(CANCEL)));
  }

  /** Closes the connection. */
  async close(): Promise<void> {
    try {
      this.#conn.close();
    } catch { /* already closed */ }
    await this.#reading;
  }

  #write(bytes: Uint8Array): Promise<void> {
    this.#writeChain = this.#writeChain.then(async () => {
      for (let at = 0; at < bytes.length;) at += await this.#conn.write(bytes.subarray(at));
    });
    return this.#writeChain;
  }

  async #readLoop(): Promise<void> {
    const buf = new Uint8Array(256 * 1024);
    try {
      while (true) {
        const n = await this.#conn.read(buf);
        if (n === null) break;
        this.#buffered = concatBytes([this.#buffered, buf.slice(0, n)]);
        this.#parseFrames();
      }
    } catch {
      // Closed by us or reset by the server: the streams just stop.
    }
    for (const s of this.#streams.values()) {
      s.closed = true;
      s.onFirst();
      s.onClose?.();
    }
  }

  #parseFrames(): void {
    let at = 0;
    const b = this.#buffered;
    const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
    while (b.length - at >= 9) {
      const length = view.getUint32(at) >>> 8;
      if (b.length - at < 9 + length) break;
      const type = b[at + 3], flags = b[at + 4];
      const id = view.getUint32(at + 5) & 0x7fffffff;
      const payload = b.subarray(at + 9, at + 9 + length);
      at += 9 + length;
      this.#onFrame(type, flags, id, payload);
    }
    this.#buffered = b.slice(at);
  }

  #onFrame(type: number, flags: number, id: number, payload: Uint8Array): void {
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    switch (type) {
      case SETTINGS:
        if (flags & ACK) return;
        for (let i = 0; i + 6 <= payload.length; i += 6) {
          this.serverSettings.set(view.getUint16(i), view.getUint32(i + 2));
        }
        this.#write(frame(SETTINGS, ACK, 0, new Uint8Array(0))).catch(() => {});
        this.#onSettings();
        return;
      case PING:
        if (!(flags & ACK)) this.#write(frame(PING, ACK, 0, payload)).catch(() => {});
        return;
      case GOAWAY:
        this.goAwayCode = view.getUint32(4);
        return;
      case RST_STREAM: {
        const s = this.#streams.get(id);
        if (s) {
          s.resetCode = view.getUint32(0);
          s.closed = true;
          s.onFirst();
          s.onClose?.();
        }
        return;
      }
      case DATA: {
        const s = this.#streams.get(id);
        if (!s) return;
        s.dataBytes += payload.length;
        this.#onData(s, payload);
        if (flags & END_STREAM) {
          s.closed = true;
          s.onFirst();
          s.onClose?.();
        }
        return;
      }
      case HEADERS: {
        const s = this.#streams.get(id);
        if (s && flags & END_STREAM) {
          s.closed = true;
          s.onFirst();
          s.onClose?.();
        }
        return;
      }
    }
  }

  #onData(s: StreamState, payload: Uint8Array): void {
    s.data.push(payload.slice());
    if (s.full && payload.length > 0) {
      // A reader that keeps up: give back what was consumed.
      this.#write(frame(WINDOW_UPDATE, 0, s.id, u32(payload.length))).catch(() => {});
    }
    if (s.first) return;
    const before = s.pendingBytes;
    s.pending.push(payload.slice());
    s.pendingBytes += payload.length;
    if (s.pendingBytes < 5) return;
    if (before < 5) {
      const head = concatBytes(s.pending).subarray(0, 5);
      s.total = 5 + new DataView(head.buffer, head.byteOffset).getUint32(1);
      // The prefix just completed: a slow reader grants exactly what the
      // message still needs beyond the initial window, once.
      const need = s.total - this.initialWindow;
      if (!s.full && need > 0) {
        this.#write(frame(WINDOW_UPDATE, 0, s.id, u32(need))).catch(() => {});
      }
    }
    const total = s.total;
    if (s.pendingBytes >= total) {
      s.first = concatBytes(s.pending).slice(5, total);
      s.pending = [];
      s.onFirst();
    }
  }
}
