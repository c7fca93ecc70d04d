/**
 * Leveled logging to stderr, one line per event: time, level, message and
 * `key=value` fields. The level comes from `--log-level` or
 * `TVIX_LOG_LEVEL`.
 *
 * Also the one progress line a command may keep at the bottom of a
 * terminal ({@linkcode Progress}): log lines are written above it.
 *
 * @module
 */

/** Log levels, most verbose first. */
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error"] as const;
/** One of {@linkcode LOG_LEVELS}. */
export type LogLevel = typeof LOG_LEVELS[number];

let threshold = LOG_LEVELS.indexOf("info");

/**
 * Parses a level name (any case) or its number 1–5 (1 = trace). Throws on
 * anything else.
 */
export function parseLogLevel(text: string): LogLevel {
  const lower = text.trim().toLowerCase();
  const byNumber = /^[1-5]$/.test(lower) ? LOG_LEVELS[Number(lower) - 1] : undefined;
  const level = byNumber ?? LOG_LEVELS.find((l) => l === lower);
  if (!level) {
    throw new Error(`invalid log level ${JSON.stringify(text)} (use ${LOG_LEVELS.join(", ")})`);
  }
  return level;
}

/** Sets the least severe level that is printed. */
export function setLogLevel(level: LogLevel): void {
  threshold = LOG_LEVELS.indexOf(level);
}

/** Whether events at `level` are printed. */
export function logEnabled(level: LogLevel): boolean {
  return LOG_LEVELS.indexOf(level) >= threshold;
}

const encoder = new TextEncoder();

/**
 * Writes `text` to stderr. A progress line on the terminal is erased
 * first and drawn again below, so the two never share a line.
 */
export function writeStderr(text: string): void {
  active?.hide();
  Deno.stderr.writeSync(encoder.encode(text));
  active?.redraw();
}

function emit(level: LogLevel, message: string, fields?: Record<string, unknown>): void {
  if (!logEnabled(level)) return;
  let line = `${new Date().toISOString()} ${level.toUpperCase().padStart(5)} ${message}`;
  for (const [k, v] of Object.entries(fields ?? {})) {
    line += ` ${k}=${typeof v === "string" && !/\s/.test(v) ? v : JSON.stringify(String(v))}`;
  }
  writeStderr(line + "\n");
}

/** The logger. */
export const log = {
  trace: (msg: string, fields?: Record<string, unknown>): void => emit("trace", msg, fields),
  debug: (msg: string, fields?: Record<string, unknown>): void => emit("debug", msg, fields),
  info: (msg: string, fields?: Record<string, unknown>): void => emit("info", msg, fields),
  warn: (msg: string, fields?: Record<string, unknown>): void => emit("warn", msg, fields),
  error: (msg: string, fields?: Record<string, unknown>): void => emit("error", msg, fields),
};

const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** `n` bytes for people: `512 B`, `1.5 MiB`. */
export function formatBytes(n: number): string {
  let i = 0;
  while (n >= 1024 && i < BYTE_UNITS.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${BYTE_UNITS[i]}`;
}

/** A duration in seconds as `m:ss` or `h:mm:ss`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const two = (n: number) => String(n).padStart(2, "0");
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}:${two(m)}:${two(s % 60)}` : `${m}:${two(s % 60)}`;
}

/** What a {@linkcode Progress} line shows. */
export interface ProgressOptions {
  /** The verb in front: `importing`, `copying`. */
  label: string;
  /** Bytes to do, if known yet (else see {@linkcode Progress.setTotalBytes}). */
  totalBytes?: number;
  /** Paths to do; with it the line ends in `n/m paths`. */
  totalItems?: number;
  /** Never draw (`--quiet`). */
  quiet?: boolean;
}

/** The progress line being shown, which log lines must not overwrite. */
let active: Progress | undefined;

/** Nothing is drawn for work done within this long: quick commands stay silent. */
const FIRST_DRAW_MS = 300;
/** The line is redrawn this often, so rate and time left stay current between updates. */
const REDRAW_MS = 250;

/**
 * One line on stderr saying how far a command has got: bytes done, of how
 * many, throughput and the time left, and paths done. Drawn only when
 * stderr is a terminal (never into a pipe or a log file), only after a
 * moment, and at most four times a second.
 */
export class Progress {
  readonly #label: string;
  readonly #enabled: boolean;
  readonly #start = performance.now();
  readonly #totalItems?: number;
  #totalBytes?: number;
  #bytes = 0;
  #items = 0;
  #shown = false;
  #timer?: ReturnType<typeof setInterval>;

  constructor(opts: ProgressOptions) {
    this.#label = opts.label;
    this.#totalBytes = opts.totalBytes;
    this.#totalItems = opts.totalItems;
    this.#enabled = !opts.quiet && Deno.stderr.isTerminal();
    if (!this.#enabled) return;
    active = this;
    const timer = setInterval(() => this.redraw(), REDRAW_MS);
    // The line must never keep a finished command alive.
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }

  /** Counts `n` more bytes done. */
  addBytes(n: number): void {
    this.#bytes += n;
  }

  /** Sets the bytes to do, once known (for the percentage and the time left). */
  setTotalBytes(n: number): void {
    this.#totalBytes = n;
  }

  /** Counts one more path done. */
  itemDone(): void {
    this.#items++;
  }

  /** The line as drawn at `now`. */
  text(now = performance.now()): string {
    const secs = (now - this.#start) / 1000;
    const rate = secs > 0 ? this.#bytes / secs : 0;
    let line = `${this.#label} ${formatBytes(this.#bytes)}`;
    const total = this.#totalBytes;
    if (total !== undefined && total > 0) {
      const pct = Math.min(100, Math.floor((100 * this.#bytes) / total));
      line += ` of ${formatBytes(total)} (${pct}%)`;
    }
    line += `, ${formatBytes(rate)}/s`;
    if (total !== undefined && rate > 0 && total > this.#bytes) {
      line += `, ${formatDuration((total - this.#bytes) / rate)} left`;
    }
    if (this.#totalItems !== undefined) line += `, ${this.#items}/${this.#totalItems} paths`;
    return line;
  }

  /** Draws the line now if it is due (called by the timer and after log lines). */
  redraw(): void {
    if (!this.#enabled || active !== this) return;
    const now = performance.now();
    if (now - this.#start < FIRST_DRAW_MS) return;
    let line = this.text(now);
    // A line that wraps could not be erased with one carriage return.
    const columns = terminalColumns();
    if (line.length >= columns) line = line.slice(0, columns - 1);
    Deno.stderr.writeSync(encoder.encode(`\r\x1b[2K${line}`));
    this.#shown = true;
  }

  /** Erases the line until the next redraw (before anything else is written to stderr). */
  hide(): void {
    if (!this.#shown) return;
    Deno.stderr.writeSync(encoder.encode("\r\x1b[2K"));
    this.#shown = false;
  }

  /** Erases the line for good: the work is over (or interrupted). Again is harmless. */
  finish(): void {
    clearInterval(this.#timer);
    this.hide();
    if (active === this) active = undefined;
  }
}

function terminalColumns(): number {
  try {
    return Deno.consoleSize().columns || 80;
  } catch {
    return 80;
  }
}

/** Erases the progress line, if one is shown, for good (before the process exits). */
export function finishProgress(): void {
  active?.finish();
}
