/**
 * prefaultForWrite: the pages of a fresh shared buffer become resident in
 * one call (the process's RSS grows by them before anything is written),
 * what a buffer already holds is left as it is, and a buffer without a
 * whole page inside is left alone.
 */
import { assert, assertEquals } from "../assert.ts";
import { prefaultForWrite } from "../../src/fuse/prefault.ts";

/** MADV_POPULATE_WRITE came with Linux 5.14; before, prefaulting turns itself off. */
const [major, minor] = Deno.osRelease().split(".").map(Number);
const supported = Deno.build.os === "linux" && (major > 5 || (major === 5 && minor >= 14));

/** Resident anonymous memory of this process, in KiB. */
function rssAnonKiB(): number {
  const status = Deno.readTextFileSync("/proc/self/status");
  return Number(/RssAnon:\s+(\d+) kB/.exec(status)![1]);
}

Deno.test({
  name: "prefaultForWrite makes a fresh buffer's pages resident without writing them",
  ignore: !supported,
}, () => {
  const bytes = 64 << 20;
  const fresh = new Uint8Array(new SharedArrayBuffer(bytes));
  const before = rssAnonKiB();
  assert(prefaultForWrite(fresh), "MADV_POPULATE_WRITE is refused on this kernel");
  const grown = rssAnonKiB() - before;
  assert(grown >= (bytes >> 10) * 0.9, `RSS grew by ${grown} KiB only`);
  assertEquals(fresh.every((b) => b === 0), true);
});

Deno.test({
  name: "prefaultForWrite keeps the contents and skips buffers within one page",
  ignore: !supported,
}, () => {
  const buffer = new Uint8Array(new SharedArrayBuffer(1 << 20));
  for (let i = 0; i < buffer.length; i++) buffer[i] = i * 7;
  const slot = buffer.subarray(100, 300_000);
  assert(prefaultForWrite(slot));
  for (let i = 0; i < buffer.length; i++) assertEquals(buffer[i], (i * 7) & 0xff);
  assertEquals(prefaultForWrite(buffer.subarray(10, 4000)), false);
});
