/**
 * AWS Signature Version 4 for S3 requests, as much of it as a client that
 * sends whole objects with their SHA-256 needs: a canonical request, the
 * string to sign, and the `Authorization` header. Hashing runs in
 * `node:crypto` (OpenSSL): synchronous and far cheaper than a network
 * round trip, so signing never waits on the event loop.
 *
 * The signing key depends only on the secret, the day, the region and the
 * service; it is derived once per day and reused.
 *
 * @module
 */
import { createHash, createHmac } from "node:crypto";

/** An access key pair, with the session token of temporary credentials. */
export interface Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** One request to sign. Paths and query must already be encoded as they will be sent. */
export interface SignInput {
  method: string;
  /** The URI-encoded path, e.g. `/bucket/a%20b`. */
  path: string;
  /** The canonical query string ({@linkcode canonicalQuery}), `""` for none. */
  query: string;
  /** Headers to sign and send, names in lower case; must include `host`. */
  headers: Record<string, string>;
  /** Hex SHA-256 of the body ({@linkcode sha256Hex}), or `UNSIGNED-PAYLOAD`. */
  payloadHash: string;
  region: string;
  /** `s3` unless told otherwise. */
  service?: string;
  /** The signing time (default: now). */
  date?: Date;
}

/** Hex SHA-256 of the empty body. */
export const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/** Hex SHA-256 of `data`. */
export function sha256Hex(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/**
 * URI-encodes a string the way SigV4 wants it: every byte outside
 * `A-Za-z0-9-_.~` as `%XX` (upper case), and `/` too unless `keepSlash`.
 */
export function uriEncode(text: string, keepSlash = false): string {
  // Object keys are mostly hex digits and slashes: nothing to encode.
  if ((keepSlash ? /^[A-Za-z0-9\-_.~/]*$/ : /^[A-Za-z0-9\-_.~]*$/).test(text)) return text;
  let out = "";
  for (const byte of new TextEncoder().encode(text)) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-_.~]/.test(c) || (keepSlash && c === "/")) out += c;
    else out += `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** The canonical query string of `params`: encoded pairs sorted by name, then value. */
export function canonicalQuery(params: Record<string, string>): string {
  return Object.entries(params)
    .map(([k, v]) => [uriEncode(k), uriEncode(v)])
    .sort(([ak, av], [bk, bv]) => ak < bk ? -1 : ak > bk ? 1 : av < bv ? -1 : av > bv ? 1 : 0)
    .map(([k, v]) => `${k}=${v}`)
    .join("&");
}

/** `YYYYMMDDTHHMMSSZ`. */
function amzDate(date: Date): string {
  return date.toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
}

/** Derives and remembers signing keys; one per credential set. */
export class SigV4Signer {
  readonly #credentials: Credentials;
  #keyScope = "";
  #key: Uint8Array | undefined;

  /** A signer for requests made with `credentials`. */
  constructor(credentials: Credentials) {
    this.#credentials = credentials;
  }

  /**
   * The headers to send: `input.headers` plus `x-amz-date`,
   * `x-amz-content-sha256`, `x-amz-security-token` (temporary credentials)
   * and `authorization`, all of them signed.
   */
  sign(input: SignInput): Record<string, string> {
    const service = input.service ?? "s3";
    const stamp = amzDate(input.date ?? new Date());
    const day = stamp.slice(0, 8);
    const headers: Record<string, string> = {
      ...input.headers,
      "x-amz-date": stamp,
      "x-amz-content-sha256": input.payloadHash,
    };
    if (this.#credentials.sessionToken) {
      headers["x-amz-security-token"] = this.#credentials.sessionToken;
    }
    const names = Object.keys(headers).map((n) => n.toLowerCase()).sort();
    const lower: Record<string, string> = {};
    for (const [k, v] of Object.entries(headers)) {
      lower[k.toLowerCase()] = v.trim().replace(/\s+/g, " ");
    }
    const signedHeaders = names.join(";");
    const canonical = [
      input.method,
      input.path,
      input.query,
      names.map((n) => `${n}:${lower[n]}\n`).join(""),
      signedHeaders,
      input.payloadHash,
    ].join("\n");
    const scope = `${day}/${input.region}/${service}/aws4_request`;
    const toSign = [
      "AWS4-HMAC-SHA256",
      stamp,
      scope,
      createHash("sha256").update(canonical).digest("hex"),
    ].join("\n");
    const signature = createHmac("sha256", this.#signingKey(day, input.region, service))
      .update(toSign)
      .digest("hex");
    headers["authorization"] = `AWS4-HMAC-SHA256 Credential=${this.#credentials.accessKeyId}/` +
      `${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`;
    return headers;
  }

  #signingKey(day: string, region: string, service: string): Uint8Array {
    const scope = `${day}/${region}/${service}`;
    if (this.#key && this.#keyScope === scope) return this.#key;
    const hmac = (key: string | Uint8Array, data: string): Uint8Array =>
      createHmac("sha256", key).update(data).digest();
    const key = hmac(
      hmac(hmac(hmac(`AWS4${this.#credentials.secretAccessKey}`, day), region), service),
      "aws4_request",
    );
    this.#keyScope = scope;
    this.#key = key;
    return key;
  }
}
