import { assert, assertEquals, assertNotEquals } from "./assert.ts";
import { cString, errno, OPEN_FLAGS, openFlagsFor, openLibc, strerror } from "../src/libc.ts";

const ENOENT = 2, ENOTDIR = 20, ELOOP = 40;

const libc = openLibc(
  {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
  } as const,
);

/** `open(path, flags)`: the descriptor (closed again), or minus the errno. */
function tryOpen(path: string, flags: number): number {
  const fd = libc.open(cString(path), flags);
  if (fd < 0) return -errno();
  libc.close(fd);
  return fd;
}

Deno.test("open flags of this architecture: O_DIRECTORY refuses a file, O_NOFOLLOW a symlink", () => {
  const dir = Deno.makeTempDirSync();
  try {
    Deno.writeTextFileSync(`${dir}/file`, "x");
    Deno.symlinkSync(`${dir}/file`, `${dir}/link`);
    const { O_RDONLY, O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW } = OPEN_FLAGS;
    // The directory flag opens a directory (what the store's flush does)
    // and refuses anything else: with another architecture's value it
    // would mean something else (O_DIRECT on aarch64, which fails here).
    assert(tryOpen(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) >= 0);
    assertEquals(tryOpen(`${dir}/file`, O_RDONLY | O_DIRECTORY), -ENOTDIR);
    assertEquals(tryOpen(`${dir}/link`, O_RDONLY | O_NOFOLLOW), -ELOOP);
    assert(tryOpen(`${dir}/link`, O_RDONLY) >= 0);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("open flags differ between x86_64 and aarch64 where the kernel's do", () => {
  const x86 = openFlagsFor("x86_64"), arm = openFlagsFor("aarch64");
  assertEquals([x86.O_DIRECTORY, x86.O_NOFOLLOW], [0o200000, 0o400000]);
  assertEquals([arm.O_DIRECTORY, arm.O_NOFOLLOW], [0o40000, 0o100000]);
  for (const key of ["O_RDONLY", "O_RDWR", "O_NONBLOCK", "O_CLOEXEC"] as const) {
    assertEquals(arm[key], x86[key], key);
  }
  assertEquals(OPEN_FLAGS, openFlagsFor(Deno.build.arch));
});

Deno.test("errno and strerror describe the call that just failed", () => {
  assertEquals(tryOpen("/nonexistent/tvix-store-libc-test", OPEN_FLAGS.O_RDONLY), -ENOENT);
  assertEquals(strerror(ENOENT), "No such file or directory");
  assertNotEquals(strerror(ELOOP), strerror(ENOENT));
});

Deno.test("cString: text as UTF-8 and bytes as they are, NUL-terminated", () => {
  assertEquals(cString("a/ü"), new Uint8Array([0x61, 0x2f, 0xc3, 0xbc, 0]));
  const bytes = new Uint8Array([0xff, 0x01]);
  assertEquals(cString(bytes), new Uint8Array([0xff, 0x01, 0]));
  assertEquals(cString(""), new Uint8Array([0]));
});
