import { assertEquals } from "./assert.ts";
import { wholeCalls } from "./strace.ts";

Deno.test("wholeCalls joins a call another thread interrupted", () => {
  const output = [
    '10 openat(AT_FDCWD, "/x", O_RDONLY|O_CLOEXEC|O_DIRECTORY <unfinished ...>',
    "11 fsync(3</y>) = 0",
    "10 <... openat resumed>) = 21",
    "10 syncfs(21) = 0",
  ].join("\n");
  assertEquals(wholeCalls(output), [
    '10 openat(AT_FDCWD, "/x", O_RDONLY|O_CLOEXEC|O_DIRECTORY) = 21',
    "11 fsync(3</y>) = 0",
    "10 syncfs(21) = 0",
  ]);
});
