/**
 * What an S3 client does when the server throttles it (`503 SlowDown`,
 * `429`): it keeps fewer requests in flight and waits longer before trying
 * again than it does after other failures.
 *
 * Throttling says "too much, too fast", not "down": S3 answers it when a
 * prefix gets more requests than it scales to at the moment, and radosgw
 * when more requests are in progress than it admits. Failing an import
 * after the usual three quick tries would turn a busy server into lost
 * work, and retrying at the same rate keeps the server busy. So the
 * request limit follows the answers the way TCP's window does: halved on
 * throttling, and one more admitted per limit's worth of answers that were
 * not throttled, up to where it started. Only requests sent after the last
 * halving can halve it again: the refusals of those already in flight then
 * answer a rate that is no longer asked for.
 *
 * @module
 */
import type { Semaphore } from "../../concurrency.ts";

/** Tries of one request while the server throttles it (not counting other failures). */
export const THROTTLED_ATTEMPTS = 10;
/** The first wait after a throttled try; it doubles per throttled try. */
const FIRST_WAIT_MS = 200;
/** No wait between throttled tries is longer (unless `Retry-After` asks for up to {@linkcode MAX_RETRY_AFTER_MS}). */
const MAX_WAIT_MS = 5_000;
/** The longest `Retry-After` honoured; longer ones are cut to this. */
const MAX_RETRY_AFTER_MS = 20_000;

/**
 * Error codes that ask a client to slow down: S3's own, and the ones other
 * S3-compatible servers and proxies answer with.
 */
const THROTTLING_CODES = new Set([
  "SlowDown",
  "SlowDownRead",
  "SlowDownWrite",
  "TooManyRequests",
  "TooManyRequestsException",
  "Throttling",
  "ThrottlingException",
  "RequestThrottled",
  "RequestLimitExceeded",
  "BandwidthLimitExceeded",
]);

/**
 * Whether an answer is a server asking its client to slow down: a 429, or
 * a 503 whose error code says so. A 503 without a body (the answer to a
 * HEAD) cannot say which it is and counts as throttling; a 503 with another
 * code (`ServiceUnavailable` from a proxy without a backend) is a failure.
 * `code` reads the answer's error code; it is called for a 503 only, so a
 * chunk's body is never decoded to look for one.
 */
export function isThrottling(status: number, code: () => string | undefined): boolean {
  if (status === 429) return true;
  if (status !== 503) return false;
  const named = code();
  return named === undefined || THROTTLING_CODES.has(named);
}

/** Adjusts one client's request limit to the answers it gets; see the module doc. */
export class ThrottleControl {
  readonly #limit: Semaphore;
  readonly #ceiling: number;
  /** Good answers since the limit last changed. */
  #sinceChange = 0;
  /** Halvings so far: a request remembers it when it is sent. */
  #epoch = 0;
  #throttledTotal = 0;

  /** Controls `limit`, which never grows beyond the permits it has now. */
  constructor(limit: Semaphore) {
    this.#limit = limit;
    this.#ceiling = limit.permits;
  }

  /** Requests answered with throttling so far. */
  get throttled(): number {
    return this.#throttledTotal;
  }

  /** To be taken when a request is sent, and given to {@linkcode ThrottleControl.answered}. */
  get epoch(): number {
    return this.#epoch;
  }

  /**
   * Records the answer to a request sent at `epoch`: `throttled` or not.
   * Returns the new limit when this answer lowered it, else `undefined`.
   */
  answered(throttled: boolean, epoch: number): number | undefined {
    const permits = this.#limit.permits;
    if (throttled) {
      this.#throttledTotal++;
      if (epoch !== this.#epoch || permits === 1) return undefined;
      this.#limit.permits = Math.floor(permits / 2);
      this.#sinceChange = 0;
      this.#epoch++;
      return this.#limit.permits;
    }
    if (permits < this.#ceiling && ++this.#sinceChange >= permits) {
      this.#limit.permits = permits + 1;
      this.#sinceChange = 0;
    }
    return undefined;
  }

  /**
   * How long to wait before try `throttledTries + 1`: doubling from 0.2 s
   * up to 5 s, with jitter so that the waiting requests do not return
   * together. A `Retry-After` in seconds is a lower bound (cut to 20 s), to
   * which up to a quarter is added, for the same reason.
   */
  waitMs(throttledTries: number, retryAfter: string | null): number {
    const seconds = retryAfter !== null && /^\d+$/.test(retryAfter.trim())
      ? Number(retryAfter.trim())
      : undefined;
    if (seconds !== undefined) {
      return Math.min(seconds * 1000, MAX_RETRY_AFTER_MS) * (1 + Math.random() / 4);
    }
    const base = Math.min(MAX_WAIT_MS, FIRST_WAIT_MS * 2 ** (throttledTries - 1));
    return base * (0.5 + Math.random());
  }
}
