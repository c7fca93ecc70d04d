/**
 * The S3 client's answer to throttling, as a policy: the request limit is
 * halved once per burst of refusals and grows back by one per limit's worth
 * of good answers; the waits double up to a cap and honour Retry-After.
 * (tests/s3/faults_test.ts throttles a real radosgw.)
 */
import { assert, assertEquals } from "../assert.ts";
import { Semaphore } from "../../src/concurrency.ts";
import { isThrottling, ThrottleControl } from "../../src/castore/objectstore/s3_throttle.ts";

Deno.test("throttling: 429, and 503 saying so or saying nothing; other failures are not", () => {
  const none = () => undefined;
  assert(isThrottling(429, none));
  assert(isThrottling(503, () => "SlowDown"));
  assert(isThrottling(503, () => "TooManyRequests"));
  assert(isThrottling(503, none), "a HEAD's 503 has no body to tell");
  assert(!isThrottling(503, () => "ServiceUnavailable"), "a proxy without a backend is down");
  const unread = () => {
    throw new Error("the body of an answer that is no 503 was read");
  };
  for (const status of [200, 404, 409, 500, 502]) {
    assert(!isThrottling(status, unread), String(status));
  }
});

Deno.test("throttling halves the limit once per burst, good answers add one per round", () => {
  const limit = new Semaphore(64);
  const control = new ThrottleControl(limit);
  // 64 requests sent together all come back throttled: one halving.
  const sent = control.epoch;
  const lowered = Array.from({ length: 64 }, () => control.answered(true, sent))
    .filter((x) => x !== undefined);
  assertEquals(lowered, [32]);
  assertEquals(control.throttled, 64);
  // A refusal of a request sent after that halves again.
  assertEquals(control.answered(true, control.epoch), 16);
  assertEquals(control.answered(true, sent), undefined, "an old refusal does not");
  // Sixteen good answers since the last change: one more.
  for (let i = 0; i < 15; i++) control.answered(false, control.epoch);
  assertEquals(limit.permits, 16);
  control.answered(false, control.epoch);
  assertEquals(limit.permits, 17);
  // Back up, but never beyond where it started.
  for (let i = 0; i < 10_000; i++) control.answered(false, control.epoch);
  assertEquals(limit.permits, 64);
  // Down to one, and no lower.
  for (let i = 0; i < 100; i++) control.answered(true, control.epoch);
  assertEquals(limit.permits, 1);
});

Deno.test("throttling waits double from 0.2 s up to 5 s; Retry-After is a lower bound; both jittered", () => {
  const control = new ThrottleControl(new Semaphore(4));
  for (let tries = 1; tries <= 10; tries++) {
    const base = Math.min(5000, 200 * 2 ** (tries - 1));
    for (let i = 0; i < 50; i++) {
      const wait = control.waitMs(tries, null);
      assert(wait >= base * 0.5 && wait <= base * 1.5, `${tries}: ${wait}`);
    }
  }
  const within = (wait: number, ms: number) => wait >= ms && wait <= ms * 1.25;
  assert(within(control.waitMs(1, "3"), 3000));
  assert(within(control.waitMs(1, " 7 "), 7000));
  assert(within(control.waitMs(1, "3600"), 20_000), "a long Retry-After is cut");
  // An HTTP date (or anything else) falls back to the doubling.
  const wait = control.waitMs(1, "Wed, 21 Oct 2026 07:28:00 GMT");
  assert(wait >= 100 && wait <= 300, String(wait));
});
