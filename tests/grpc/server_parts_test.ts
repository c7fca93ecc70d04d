/**
 * The daemon's small parts in isolation: error → status mapping, listen
 * address and size parsing, and re-chunking of blob reads.
 */
import { status as Code } from "@grpc/grpc-js";
import { InvalidRequestError, StorageError } from "../../src/errors.ts";
import { ClosureError } from "../../src/castore/directory/closure.ts";
import { internalStatus, RpcError, statusFromError } from "../../src/grpc/status.ts";
import { parseListenAddress } from "../../src/listen_address.ts";
import { READ_MESSAGE_BYTES, rechunk } from "../../src/grpc_server/blob_handler.ts";
import { parseRequestSize } from "../../src/cli/daemon.ts";
import { concatBytes } from "../../src/castore/digest.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";

Deno.test("statusFromError: the castore error kinds and RpcError", () => {
  assertEquals(statusFromError(new InvalidRequestError("bad")), {
    code: Code.INVALID_ARGUMENT,
    details: "bad",
  });
  assertEquals(statusFromError(new StorageError("disk")), {
    code: Code.DATA_LOSS,
    details: "storage error: disk",
  });
  assertEquals(statusFromError(new RpcError(Code.NOT_FOUND, "gone")), {
    code: Code.NOT_FOUND,
    details: "gone",
  });
  assertEquals(statusFromError(new Error("bug")), { code: Code.INTERNAL, details: "bug" });
  assertEquals(statusFromError(new ClosureError("Graph", "x")).code, Code.INVALID_ARGUMENT);
});

Deno.test("internalStatus: display text as the reference prints it", () => {
  assertEquals(internalStatus(new StorageError("gone")), {
    code: Code.INTERNAL,
    details: "internal storage error: gone",
  });
  assertEquals(internalStatus(new InvalidRequestError("no")), {
    code: Code.INTERNAL,
    details: "invalid request: no",
  });
  assertEquals(
    internalStatus(new RpcError(Code.INVALID_ARGUMENT, "x")).code,
    Code.INVALID_ARGUMENT,
  );
});

Deno.test("parseListenAddress: TCP, bracketed IPv6, Unix socket paths, garbage", () => {
  assertEquals(parseListenAddress("[::1]:8000"), { kind: "tcp", host: "[::1]", port: 8000 });
  assertEquals(parseListenAddress("127.0.0.1:0"), { kind: "tcp", host: "127.0.0.1", port: 0 });
  assertEquals(parseListenAddress("localhost:9"), { kind: "tcp", host: "localhost", port: 9 });
  assertEquals(parseListenAddress("/run/tvix.sock"), { kind: "unix", path: "/run/tvix.sock" });
  assertEquals(parseListenAddress("./tvix.sock"), { kind: "unix", path: "./tvix.sock" });
  for (const bad of ["", "8000", "::1:8000", "host:", "host:70000", "[::1]", "a b:1"]) {
    assertThrows(() => parseListenAddress(bad), Error, "invalid listen address");
  }
});

Deno.test("parseRequestSize: plain numbers and binary suffixes", () => {
  assertEquals(parseRequestSize("4194304"), 4 * 1024 * 1024);
  assertEquals(parseRequestSize("16MiB"), 16 * 1024 * 1024);
  assertEquals(parseRequestSize("64m"), 64 * 1024 * 1024);
  assertEquals(parseRequestSize("512K"), 512 * 1024);
  assertEquals(parseRequestSize("1GiB"), 1024 ** 3);
  for (const bad of ["", "0", "-1", "1.5M", "12 parsecs", "MiB"]) {
    assertThrows(() => parseRequestSize(bad), Error, "invalid size");
  }
});

Deno.test("rechunk: messages of at most 1 MiB, small pieces merged, bytes unchanged", async () => {
  const pieces = [
    new Uint8Array(10).fill(1),
    new Uint8Array(0),
    new Uint8Array(3 * READ_MESSAGE_BYTES + 5).fill(2),
    ...Array.from({ length: 40 }, (_, i) => new Uint8Array(4096).fill(i)),
    new Uint8Array(70_000).fill(3),
  ];
  async function* source() {
    yield* pieces;
  }
  const out: Uint8Array[] = [];
  for await (const m of rechunk(source())) out.push(m);
  assert(out.every((m) => m.length > 0 && m.length <= READ_MESSAGE_BYTES), "message sizes");
  assertEquals(concatBytes(out), concatBytes(pieces));
  // Small reads are merged: no message but the last is below 64 KiB.
  const small = out.slice(0, -1).filter((m) => m.length < 64 * 1024);
  assertEquals(small.length, 0, `sizes ${out.map((m) => m.length)}`);
});
