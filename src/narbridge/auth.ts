/**
 * Access tokens of the binary cache: who may upload, and who may read.
 *
 * A token is accepted as `Authorization: Bearer <token>` or as the
 * password of HTTP Basic auth (any user name), which is what Nix sends for
 * a `netrc-file` entry `machine HOST password TOKEN`. Uploads (PUT) need an
 * upload token once any is configured; reads (GET, HEAD) are open unless
 * read tokens are configured, and then take a read or an upload token.
 * Tokens are compared through their SHA-256 with a constant-time compare,
 * so response times do not tell how much of a guess was right.
 *
 * @module
 */
import type { Buffer } from "node:buffer";
import { createHash, timingSafeEqual } from "node:crypto";

/** Tokens that allow uploading and, when set, tokens needed for reading. */
export interface AccessTokens {
  /** Upload (and read) tokens; empty or unset: uploads are open. */
  upload?: readonly string[];
  /** Read-only tokens; unset: reads are open. */
  read?: readonly string[];
}

/** What a request may do, given its credentials. */
export type AccessDecision = "allowed" | "unauthorized";

function digest(token: string): Buffer {
  return createHash("sha256").update(token).digest();
}

/** The token a request presents (Bearer, or the Basic password), if any. */
export function presentedToken(authorization: string | undefined): string | undefined {
  if (!authorization) return undefined;
  const m = /^\s*(\S+)\s+(\S+)\s*$/.exec(authorization);
  if (!m) return undefined;
  const scheme = m[1].toLowerCase();
  if (scheme === "bearer") return m[2];
  if (scheme !== "basic") return undefined;
  let decoded: string;
  try {
    decoded = new TextDecoder("utf-8", { fatal: true }).decode(
      Uint8Array.from(atob(m[2]), (c) => c.charCodeAt(0)),
    );
  } catch {
    return undefined;
  }
  const colon = decoded.indexOf(":");
  return colon < 0 ? undefined : decoded.slice(colon + 1);
}

/** Checks requests against configured tokens. */
export class AccessControl {
  readonly #upload: Buffer[];
  readonly #read: Buffer[] | undefined;

  constructor(tokens: AccessTokens) {
    this.#upload = (tokens.upload ?? []).map(digest);
    this.#read = tokens.read ? [...tokens.read.map(digest), ...this.#upload] : undefined;
  }

  /** Whether any token is configured (otherwise every request is allowed). */
  get enabled(): boolean {
    return this.#upload.length > 0 || this.#read !== undefined;
  }

  /** Decides whether a request with this method and `Authorization` header may go on. */
  check(method: string, authorization: string | undefined): AccessDecision {
    const write = method !== "GET" && method !== "HEAD";
    const needed = write ? (this.#upload.length > 0 ? this.#upload : undefined) : this.#read;
    if (!needed) return "allowed";
    const token = presentedToken(authorization);
    if (token === undefined) return "unauthorized";
    const presented = digest(token);
    // Every token is compared, so the time taken does not tell which matched.
    let ok = false;
    for (const t of needed) ok = timingSafeEqual(t, presented) || ok;
    return ok ? "allowed" : "unauthorized";
  }
}

/**
 * Reads a token file: one token per line; blank lines and lines starting
 * with `#` are skipped. Throws when the file holds no token.
 */
export async function readTokenFile(path: string, flag: string): Promise<string[]> {
  const tokens = (await Deno.readTextFile(path)).split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  if (tokens.length === 0) throw new Error(`${flag} ${path} holds no token`);
  return tokens;
}
