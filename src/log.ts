/**
 * Leveled logging to stderr, one line per event: time, level, message and
 * `key=value` fields. The level comes from `--log-level` or
 * `TVIX_LOG_LEVEL`.
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

function emit(level: LogLevel, message: string, fields?: Record<string, unknown>): void {
  if (!logEnabled(level)) return;
  let line = `${new Date().toISOString()} ${level.toUpperCase().padStart(5)} ${message}`;
  for (const [k, v] of Object.entries(fields ?? {})) {
    line += ` ${k}=${typeof v === "string" && !/\s/.test(v) ? v : JSON.stringify(String(v))}`;
  }
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
}

/** The logger. */
export const log = {
  trace: (msg: string, fields?: Record<string, unknown>): void => emit("trace", msg, fields),
  debug: (msg: string, fields?: Record<string, unknown>): void => emit("debug", msg, fields),
  info: (msg: string, fields?: Record<string, unknown>): void => emit("info", msg, fields),
  warn: (msg: string, fields?: Record<string, unknown>): void => emit("warn", msg, fields),
  error: (msg: string, fields?: Record<string, unknown>): void => emit("error", msg, fields),
};
